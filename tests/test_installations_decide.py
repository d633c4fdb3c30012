"""Uninstall is a kill switch (issue 15, finding 6), the pure part: what an installation event
or GitHub's list does to the installation's record, which repositories it cuts runbot off,
what the PR decision then says, and what becomes of the GitHub writes still owed.
"""

from __future__ import annotations

import itertools

import pytest

from app.github.config import parse_repo_config
from app.github.installations import (
    CUTOFF_REASONS,
    Cutoff,
    InstallationRecord,
    InstallState,
    WriteGate,
    cutoff,
    record_after,
    record_listed,
    write_gate,
)
from app.github.payloads import InstallationEvent
from app.intent.decide import Hold, HoldKind, Live, PullState, decide_pull

A, B = "octo-org/a", "octo-org/b"
HEAD = "a" * 40
ACTIVE = InstallationRecord(InstallState.ACTIVE, "octo-org", (A, B))


def event(
    action: str,
    *,
    repositories: tuple[str, ...] | None = None,
    added: tuple[str, ...] = (),
    removed: tuple[str, ...] = (),
) -> InstallationEvent:
    kind = "installation" if action not in ("added", "removed") else "installation_repositories"
    return InstallationEvent(kind, action, 7, "octo-org", repositories, added, removed)


def test_finding_6_uninstall_cuts_off_every_repository_of_the_installation() -> None:
    change = record_after(ACTIVE, event("deleted", repositories=(A, B)))
    assert change.cut is Cutoff.UNINSTALLED and change.repositories is None
    assert change.record.state is InstallState.DELETED
    assert [cutoff(change.record, repo) for repo in (A, B, "other/x")] == [Cutoff.UNINSTALLED] * 3


def test_finding_6_a_removed_repository_alone_is_cut_off() -> None:
    change = record_after(ACTIVE, event("removed", removed=(A,)))
    assert change.cut is Cutoff.REMOVED and change.repositories == (A,)
    assert change.record.repositories == (B,) and change.record.removed == (A,)
    assert cutoff(change.record, A) is Cutoff.REMOVED
    assert cutoff(change.record, A.upper()) is Cutoff.REMOVED  # names are case-insensitive
    assert cutoff(change.record, B) is None


def test_finding_6_suspend_cuts_off_and_unsuspend_gives_back() -> None:
    suspended = record_after(ACTIVE, event("suspend"))
    assert suspended.cut is Cutoff.SUSPENDED and suspended.repositories is None
    assert suspended.record.repositories == (A, B)  # the payload carries no list: kept
    assert cutoff(suspended.record, A) is Cutoff.SUSPENDED
    back = record_after(suspended.record, event("unsuspend"))
    assert back.cut is None and back.resumed and back.repositories is None
    assert back.record.state is InstallState.ACTIVE and cutoff(back.record, A) is None


def test_finding_6_a_removed_repository_stays_cut_off_through_suspend_and_unsuspend() -> None:
    removed = record_after(ACTIVE, event("removed", removed=(A,))).record
    suspended = record_after(removed, event("suspend")).record
    assert cutoff(suspended, A) is Cutoff.REMOVED  # its writes are dropped, not parked
    back = record_after(suspended, event("unsuspend")).record
    assert cutoff(back, A) is Cutoff.REMOVED and cutoff(back, B) is None


def test_finding_6_adding_a_repository_back_resumes_it() -> None:
    removed = record_after(ACTIVE, event("removed", removed=(A,))).record
    change = record_after(removed, event("added", added=(A,)))
    assert change.resumed and change.repositories == (A,) and change.cut is None
    assert cutoff(change.record, A) is None and set(change.record.repositories) == {A, B}


def test_finding_6_a_reinstall_is_a_new_installation_that_serves_its_repositories() -> None:
    change = record_after(None, event("created", repositories=(A,)))
    assert change.resumed and change.repositories == (A,)
    assert change.record.state is InstallState.ACTIVE and cutoff(change.record, A) is None


def test_new_permissions_on_an_active_installation_change_nothing() -> None:
    change = record_after(ACTIVE, event("new_permissions_accepted", repositories=(A, B)))
    assert change.cut is None and not change.resumed


def test_finding_6_resync_heals_a_missed_removal_and_a_missed_addition() -> None:
    missed_removal = record_listed(ACTIVE, (B,))
    assert missed_removal.cut is Cutoff.REMOVED and missed_removal.repositories == (A,)
    assert cutoff(missed_removal.record, A) is Cutoff.REMOVED
    missed_addition = record_listed(missed_removal.record, (A, B))
    assert missed_addition.resumed and missed_addition.repositories == (A,)
    assert cutoff(missed_addition.record, A) is None
    same = record_listed(ACTIVE, (A, B))
    assert same.cut is None and not same.resumed


def test_an_installation_runbot_never_heard_of_is_not_cut_off() -> None:
    assert cutoff(None, A) is None


@pytest.mark.parametrize(
    ("cut", "gate"),
    [
        (None, WriteGate.SEND),
        (Cutoff.SUSPENDED, WriteGate.WAIT),
        (Cutoff.UNINSTALLED, WriteGate.DROP),
        (Cutoff.REMOVED, WriteGate.DROP),
    ],
)
def test_finding_6_writes_wait_for_unsuspend_and_are_dropped_for_good(
    cut: Cutoff | None, gate: WriteGate
) -> None:
    assert write_gate(cut) is gate


CONFIG = parse_repo_config("stack: local\nforks: approve\nwait_for_ci: true\n")


@pytest.mark.parametrize(
    ("cut", "live", "fork", "resume"),
    list(itertools.product(list(Cutoff), [None, Live(HEAD, "b")], [False, True], [False, True])),
)
def test_finding_6_a_cut_off_pr_is_held_and_torn_down_whatever_else(
    cut: Cutoff, live: Live | None, fork: bool, resume: bool
) -> None:
    """No rule (a fork's approval, a `/runbot redeploy`, CI) brings a cut-off PR back."""
    pull = PullState("open", HEAD, "b", fork=fork, approved_sha=HEAD if fork else None)
    decided = decide_pull(pull, CONFIG, live, resume=resume, ci="success", cutoff=cut)
    expected = HoldKind.SUSPENDED if cut is Cutoff.SUSPENDED else HoldKind.UNINSTALLED
    assert decided == Hold(expected, CUTOFF_REASONS[cut], teardown=True)


def test_a_closed_pr_stays_closed_when_cut_off() -> None:
    decided = decide_pull(PullState("closed", HEAD), CONFIG, None, cutoff=Cutoff.UNINSTALLED)
    assert isinstance(decided, Hold) and decided.kind is HoldKind.CLOSED
