"""What a pull request wants, as a pure function of what runbot knows about it.

`decide_pull` reads facts (the PR, its `.runbot.yml`, its live environment, the repository's
count of environments, the head commit's checks) and returns a typed `Decision`. It does no
I/O: the intent processor gathers the facts, calls it, and applies the result. Wording is for
people only; code branches on the kinds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.cost.budget import REACHED_MESSAGE
from app.github.config import RepoConfig
from app.github.config_errors import ConfigError
from app.github.installations import CUTOFF_REASONS, Cutoff
from app.lifecycle.states import HoldKind
from app.policy.checks import Violation

__all__ = [
    "CONFIG_REMOVED",
    "CUTOFF_HOLDS",
    "Create",
    "Decision",
    "Destroy",
    "Hold",
    "HoldKind",
    "Keep",
    "Live",
    "NeedCI",
    "PullState",
    "Update",
    "decide_pull",
]

#: Why an environment goes away when `.runbot.yml` disappears from the default branch.
CONFIG_REMOVED = ".runbot.yml removed"


@dataclass(frozen=True)
class PullState:
    """The stored facts of a PR that the decision reads."""

    state: str
    head_sha: str
    head_ref: str = ""
    draft: bool = False
    fork: bool = False
    labels: Sequence[str] = ()
    approved_sha: str | None = None


@dataclass(frozen=True)
class Live:
    """The PR's live environment: the commit it is asked to run, and whether it is mid-change."""

    head_sha: str
    head_ref: str
    deployed_sha: str | None = None
    busy: bool = False


@dataclass(frozen=True)
class Create:
    """Create an environment at ``sha`` (the head, or a fork's approved commit); ``waiting``:
    a newer commit that is held back meanwhile, and why."""

    sha: str
    waiting: Hold | None = None


@dataclass(frozen=True)
class Update:
    """Move the live environment to ``sha``; ``settle`` while it still applies a change (a
    burst of pushes: the next apply waits for the pushes to go quiet)."""

    sha: str
    settle: bool = False
    waiting: Hold | None = None


@dataclass(frozen=True)
class Hold:
    """Do not deploy the head, because of ``kind``; ``teardown``: and destroy what runs."""

    kind: HoldKind
    message: str
    teardown: bool = False


@dataclass(frozen=True)
class Keep:
    """Nothing to change: up to date, or stopped on purpose at this very commit."""


@dataclass(frozen=True)
class Destroy:
    """runbot is no longer configured for this PR: tear down what runs, show nothing."""

    reason: str = CONFIG_REMOVED


@dataclass(frozen=True)
class NeedCI:
    """Every other rule lets the PR through and it waits for CI: look the checks up, decide
    again. Keeping the lookup out of the common path saves a GitHub request per event."""


Decision = Create | Update | Keep | Destroy | Hold

#: The hold of a PR whose repository runbot was cut off from, by why.
CUTOFF_HOLDS = {
    Cutoff.UNINSTALLED: HoldKind.UNINSTALLED,
    Cutoff.REMOVED: HoldKind.UNINSTALLED,
    Cutoff.SUSPENDED: HoldKind.SUSPENDED,
}


def _ci_hold(pull: PullState, live: Live | None, ci: str) -> Hold | None:
    if ci == "success":
        return None
    short = pull.head_sha[:7]
    where = f"; staying at {live.deployed_sha[:7]}" if live and live.deployed_sha else ""
    if ci == "failure":
        return Hold(HoldKind.CI_FAILED, f"checks failed on {short}{where} (`wait_for_ci: true`)")
    return Hold(
        HoldKind.WAITING_FOR_CI, f"waiting for checks on {short}{where} (`wait_for_ci: true`)"
    )


def _policy_hold(
    pull: PullState, config: RepoConfig, live: Live | None, in_use: int
) -> Hold | None:
    """The repository's rules for this PR, in the order people fix them."""
    if pull.fork and config.forks == "off":
        return Hold(
            HoldKind.FORK_OFF,
            "PRs from forks are not deployed here (`forks: off` in .runbot.yml)",
            teardown=True,
        )
    if pull.fork and config.forks == "approve" and not pull.approved_sha and not live:
        return Hold(
            HoldKind.FORK_AWAITING_APPROVAL,
            "PRs from forks wait for a maintainer with write access to comment"
            f" `/runbot deploy` (or `/runbot deploy {pull.head_sha[:7]}`)",
        )
    if pull.draft and not config.drafts:
        return Hold(
            HoldKind.DRAFT,
            "draft PRs are not deployed (`drafts: false`); mark it ready for review",
            teardown=True,
        )
    missing = [label for label in config.labels.require if label not in pull.labels]
    if missing and not (pull.approved_sha and pull.approved_sha == pull.head_sha):
        return Hold(
            HoldKind.LABELS,
            "waiting for the label(s) " + ", ".join(f"`{label}`" for label in missing),
            teardown=True,
        )
    if live is None and in_use >= config.max_environments:
        return Hold(
            HoldKind.QUEUED,
            f"queued: this repository is at its limit of {config.max_environments}"
            " environments (`max_environments`); it starts when one is destroyed",
        )
    return None


def policy_message(refused: Sequence[Violation]) -> str:
    """One sentence per rule, each naming what would allow it."""
    return "runbot's policy refuses this configuration: " + "; ".join(
        violation.message for violation in refused
    )


def decide_pull(
    pull: PullState,
    config: RepoConfig | ConfigError | None,
    live: Live | None,
    *,
    in_use: int = 0,
    stopped: bool = False,
    resume: bool = False,
    ci: str | None = None,
    refused: Sequence[Violation] = (),
    cutoff: Cutoff | None = None,
    budget_reached: bool = False,
) -> Decision | NeedCI:
    """The PR's desired state.

    ``in_use`` counts the repository's environments that hold a place under
    ``max_environments``; ``stopped``: its newest environment was torn down on purpose (TTL,
    `/runbot destroy`) at the commit still at the head, so it stays down until a new commit or
    ``resume`` (`/runbot deploy` or `redeploy`). ``ci`` is the head commit's combined checks
    state ("success", "failure" or pending), looked up only when the result is `NeedCI`.
    ``refused``: the rules of the operator policy (or of the stack or silo) that the config
    breaks; any of them holds the PR and tears down what runs.
    ``cutoff``: the App was uninstalled or suspended, or the repository removed from it; then
    nothing runs, whatever else says so.
    ``budget_reached``: the repository's or silo's monthly budget is spent; a PR without an
    environment waits (one that has one keeps it: idle ones are put to sleep by a tick).
    """
    if pull.state != "open":
        return Hold(HoldKind.CLOSED, "closed", teardown=True)
    if cutoff is not None:
        return Hold(CUTOFF_HOLDS[cutoff], CUTOFF_REASONS[cutoff], teardown=True)
    if isinstance(config, ConfigError):
        return Hold(HoldKind.CONFIG_ERROR, config.markdown())
    if config is None:
        return Destroy()
    if refused:
        return Hold(HoldKind.POLICY, policy_message(refused), teardown=True)
    if live is None and not resume and stopped:
        return Keep()
    if live is None and budget_reached:
        return Hold(HoldKind.BUDGET, REACHED_MESSAGE)
    hold = _policy_hold(pull, config, live, in_use)
    if hold is not None:
        return hold
    target, waiting = _fork_gate(pull, config, live)
    if target is None:
        return waiting or Keep()
    if config.wait_for_ci and target == pull.head_sha:
        if ci is None:
            return NeedCI()
        hold = _ci_hold(pull, live, ci)
        if hold is not None:
            return hold
    if live is None:
        return Create(target, waiting)
    if live.head_sha != target or live.head_ref != pull.head_ref:
        return Update(target, settle=live.busy, waiting=waiting)
    return waiting or Keep()


def _fork_gate(
    pull: PullState, config: RepoConfig, live: Live | None
) -> tuple[str | None, Hold | None]:
    """The commit to run (None: none), and the hold of a newer one waiting for approval.

    Code from a fork runs only at the commit a maintainer approved with `/runbot deploy`: a
    later push keeps the approved commit running and waits for a new approval. (A fork with
    neither an approval nor an environment is held by `_policy_hold`, in its turn.)
    """
    if not (pull.fork and config.forks == "approve"):
        return pull.head_sha, None
    head = pull.head_sha[:7]
    if not pull.approved_sha:
        assert live is not None
        # Running without an approval (it was withdrawn): nothing new is deployed.
        return None, Hold(
            HoldKind.FORK_AWAITING_APPROVAL,
            f"commit {head} waits for a maintainer's `/runbot deploy`; the environment stays"
            f" at {live.head_sha[:7]}",
        )
    if pull.approved_sha == pull.head_sha:
        return pull.head_sha, None
    return pull.approved_sha, Hold(
        HoldKind.FORK_AWAITING_APPROVAL,
        f"commit {head} waits for a maintainer's `/runbot deploy {head}`; the environment stays"
        f" at the approved {pull.approved_sha[:7]}",
    )
