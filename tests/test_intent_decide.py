"""The PR decision on its own: no database, no GitHub, only facts in and a typed decision out.

Every combination of fork, draft, labels, limit, CI, closed, stopped-on-purpose, live
environment is crossed, and the expected decision comes from the precedence table below, which
says in one place which rule wins. Hand-written cases pin the sentences people see.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import pytest

from app.github.config import RepoConfig, parse_repo_config
from app.github.config_errors import ConfigError
from app.intent.decide import (
    CONFIG_REMOVED,
    Create,
    Decision,
    Destroy,
    Hold,
    HoldKind,
    Keep,
    Live,
    NeedCI,
    PullState,
    Update,
    decide_pull,
)

HEAD = "a" * 40
OLD = "b" * 40


@dataclass(frozen=True)
class Case:
    closed: bool
    # "no" | "off" | "approve" (not approved) | "approved" (at the head) | "approved-old"
    # (a maintainer approved an older commit; the fork pushed since)
    fork: str
    draft: bool
    labels: str  # "none" (none required) | "missing" | "approved" (missing, approved at head)
    full: bool  # the repository is at `max_environments`
    ci: str  # "off" (not waited for) | "success" | "pending" | "failure"
    stopped: bool  # torn down on purpose at this head
    live: str  # "none" | "same" (at the head) | "behind" (at an older commit, busy)


@cache
def config_for(forks: str, labels: bool, wait_for_ci: bool) -> RepoConfig:
    text = f"stack: local\nforks: {forks}\nmax_environments: 3\nwait_for_ci: {wait_for_ci!s}\n"
    if labels:
        text += "labels: {require: [preview]}\n"
    return parse_repo_config(text)


def facts(case: Case) -> tuple[PullState, RepoConfig, Live | None, int]:
    approved = HEAD if case.fork == "approved" or case.labels == "approved" else None
    if approved is None and case.fork == "approved-old":
        approved = OLD
    pull = PullState(
        state="closed" if case.closed else "open",
        head_sha=HEAD,
        head_ref="topic",
        draft=case.draft,
        fork=case.fork != "no",
        labels=() if case.labels != "none" else ("other",),
        approved_sha=approved,
    )
    forks = "off" if case.fork == "off" else "approve"
    config = config_for(forks, case.labels != "none", case.ci != "off")
    live = {
        "none": None,
        "same": Live(head_sha=HEAD, head_ref="topic", deployed_sha=HEAD),
        "behind": Live(head_sha=OLD, head_ref="topic", deployed_sha=OLD, busy=True),
    }[case.live]
    return pull, config, live, 3 if case.full else 1


WAITING = Hold(
    HoldKind.FORK_AWAITING_APPROVAL,
    f"commit {HEAD[:7]} waits for a maintainer's `/runbot deploy {HEAD[:7]}`; the environment"
    f" stays at the approved {OLD[:7]}",
)


def old_approval(case: Case) -> bool:
    return case.fork == "approved-old" and case.labels != "approved"


# Which rule wins, first match first: (name, applies to the case, the decision it makes).
PRECEDENCE: list[tuple[str, Callable[[Case], bool], Callable[[Case], object]]] = [
    ("closed", lambda c: c.closed, lambda c: (HoldKind.CLOSED, True)),
    (
        "stopped",
        lambda c: c.stopped and c.live == "none",
        lambda c: Keep(),
    ),
    ("fork off", lambda c: c.fork == "off", lambda c: (HoldKind.FORK_OFF, True)),
    (
        "fork awaiting approval",
        lambda c: c.fork == "approve" and c.live == "none" and c.labels != "approved",
        lambda c: (HoldKind.FORK_AWAITING_APPROVAL, False),
    ),
    ("draft", lambda c: c.draft, lambda c: (HoldKind.DRAFT, True)),
    # One `/runbot deploy` approves the head for both: a fork's code and a missing label.
    (
        "labels",
        lambda c: c.labels == "missing" and c.fork != "approved",
        lambda c: (HoldKind.LABELS, True),
    ),
    ("queued", lambda c: c.full and c.live == "none", lambda c: (HoldKind.QUEUED, False)),
    # A fork's environment runs only approved code: withdrawn, nothing new is deployed.
    (
        "fork running unapproved",
        lambda c: c.fork == "approve" and c.labels != "approved",
        lambda c: (HoldKind.FORK_AWAITING_APPROVAL, False),
    ),
    # Approved at an older commit: that commit runs (whatever CI says of the head), and the
    # head waits for its own approval.
    (
        "approved older: create it",
        lambda c: old_approval(c) and c.live == "none",
        lambda c: Create(OLD, WAITING),
    ),
    (
        "approved older: back to it",
        lambda c: old_approval(c) and c.live == "same",
        lambda c: Update(OLD, waiting=WAITING),
    ),
    (
        "approved older: it runs",
        lambda c: old_approval(c),
        lambda c: WAITING,
    ),
    ("ci failed", lambda c: c.ci == "failure", lambda c: (HoldKind.CI_FAILED, False)),
    ("ci pending", lambda c: c.ci == "pending", lambda c: (HoldKind.WAITING_FOR_CI, False)),
    ("create", lambda c: c.live == "none", lambda c: Create(HEAD)),
    ("update", lambda c: c.live == "behind", lambda c: Update(HEAD, settle=True)),
    ("up to date", lambda c: True, lambda c: Keep()),
]


def expected(case: Case) -> object:
    for _, applies, outcome in PRECEDENCE:
        if applies(case):
            return outcome(case)
    raise AssertionError("the last rule always applies")


def decide(case: Case) -> Decision:
    pull, config, live, in_use = facts(case)
    ci = None if case.ci == "off" else case.ci
    decided = decide_pull(pull, config, live, in_use=in_use, stopped=case.stopped)
    if isinstance(decided, NeedCI):
        assert ci is not None, "NeedCI only where the config waits for CI"
        decided = decide_pull(pull, config, live, in_use=in_use, stopped=case.stopped, ci=ci)
    assert not isinstance(decided, NeedCI), "a decision given the CI state is final"
    return decided


CASES = [
    Case(*values)
    for values in itertools.product(
        [False, True],
        ["no", "off", "approve", "approved", "approved-old"],
        [False, True],
        ["none", "missing", "approved"],
        [False, True],
        ["off", "success", "pending", "failure"],
        [False, True],
        ["none", "same", "behind"],
    )
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: "-".join(map(str, vars(case).values())))
def test_every_combination_follows_the_precedence_table(case: Case) -> None:
    decided = decide(case)
    want = expected(case)
    if isinstance(want, tuple):
        kind, teardown = want
        assert isinstance(decided, Hold), decided
        assert (decided.kind, decided.teardown) == (kind, teardown)
        assert decided.message  # always something to tell people
    else:
        assert decided == want


def test_the_table_reaches_every_kind_of_decision() -> None:
    """The crossing is worth something only if every rule of the table wins somewhere."""
    winners = set()
    for case in CASES:
        for name, applies, _ in PRECEDENCE:
            if applies(case):
                winners.add(name)
                break
    assert winners == {name for name, _, _ in PRECEDENCE}


def test_ci_is_asked_for_only_when_it_decides() -> None:
    pull, config, live, _ = facts(Case(False, "no", False, "none", False, "pending", False, "none"))
    assert decide_pull(pull, config, live) == NeedCI()
    draft = PullState(state="open", head_sha=HEAD, draft=True)
    assert isinstance(decide_pull(draft, config, live), Hold)  # held before CI matters


def test_the_sentences_people_read() -> None:
    config = config_for("off", True, True)
    fork = PullState(state="open", head_sha=HEAD, fork=True)
    assert decide_pull(fork, config, None) == Hold(
        HoldKind.FORK_OFF,
        "PRs from forks are not deployed here (`forks: off` in .runbot.yml)",
        teardown=True,
    )
    missing = PullState(state="open", head_sha=HEAD)
    held = decide_pull(missing, config, None)
    assert isinstance(held, Hold) and held.message == "waiting for the label(s) `preview`"
    labelled = PullState(state="open", head_sha=HEAD, labels=("preview",))
    behind = Live(head_sha=OLD, head_ref="", deployed_sha=OLD)
    assert decide_pull(labelled, config, behind, ci="failure") == Hold(
        HoldKind.CI_FAILED,
        f"checks failed on {HEAD[:7]}; staying at {OLD[:7]} (`wait_for_ci: true`)",
    )
    assert decide_pull(labelled, config, None, ci="pending") == Hold(
        HoldKind.WAITING_FOR_CI, f"waiting for checks on {HEAD[:7]} (`wait_for_ci: true`)"
    )
    full = decide_pull(labelled, config_for("off", False, False), None, in_use=3)
    assert full == Hold(
        HoldKind.QUEUED,
        "queued: this repository is at its limit of 3 environments (`max_environments`); it"
        " starts when one is destroyed",
    )


def test_no_config_destroys_and_a_broken_one_holds_without_teardown() -> None:
    pull = PullState(state="open", head_sha=HEAD)
    live = Live(head_sha=HEAD, head_ref="")
    assert decide_pull(pull, None, live) == Destroy(CONFIG_REMOVED)
    try:
        parse_repo_config("stack: [")
    except ConfigError as exc:
        broken = exc
    held = decide_pull(pull, broken, live)
    assert isinstance(held, Hold) and held.kind == HoldKind.CONFIG_ERROR
    assert not held.teardown and held.message == broken.markdown()


def test_resume_lifts_a_deliberate_stop() -> None:
    pull = PullState(state="open", head_sha=HEAD)
    config = config_for("off", False, False)
    assert decide_pull(pull, config, None, stopped=True) == Keep()
    assert decide_pull(pull, config, None, stopped=True, resume=True) == Create(HEAD)


def test_a_new_branch_name_at_the_same_commit_is_an_update() -> None:
    pull = PullState(state="open", head_sha=HEAD, head_ref="renamed")
    live = Live(head_sha=HEAD, head_ref="topic")
    assert decide_pull(pull, config_for("off", False, False), live) == Update(HEAD, settle=False)
