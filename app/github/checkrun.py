"""What the `runbot` check run on a PR's head commit shows, from the status view (pure).

The check run mirrors the environment: `queued` while runbot waits (for CI, a slot), or
`in_progress` while it creates or updates; then `success` with the URL in its summary,
`failure` with the reason, or `neutral` when the commit was superseded, the PR closed or the
environment went away on purpose. Nothing stays pending: every way out is a completed run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum

from app.db.models import Environment, PullRequest
from app.github.comment import StatusView
from app.github.markdown import escape_markdown_inline
from app.github.origin import pool_origin_line
from app.lifecycle.states import HoldKind

__all__ = ["CheckRunWant", "CheckStatus", "desired_check_run", "superseded"]

_SUMMARY_CHARS = 2000


class CheckStatus(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"


@dataclass(frozen=True)
class CheckRunWant:
    """One state of the check run; `conclusion` is set exactly when it is completed."""

    sha: str
    status: CheckStatus
    title: str
    summary: str
    conclusion: str | None = None  # success | failure | neutral
    details_url: str | None = None

    @property
    def done(self) -> bool:
        return self.status is CheckStatus.COMPLETED

    @property
    def digest(self) -> str:
        shown = "\0".join((self.sha, self.status, self.conclusion or "", self.title, self.summary))
        return hashlib.sha256(shown.encode()).hexdigest()


def _reason(view: StatusView) -> str:
    text = " ".join((view.reason or "").split())
    return escape_markdown_inline(text[:_SUMMARY_CHARS]) if text else ""


def superseded(pull: PullRequest, by: str) -> CheckRunWant:
    """The completion of the check run left on an older commit."""
    return CheckRunWant(
        sha=pull.check_run_sha or "",
        status=CheckStatus.COMPLETED,
        conclusion="neutral",
        title="Superseded",
        summary=f"A newer commit ({by[:12]}) is the PR's head; its own `runbot` check follows it.",
    )


def desired_check_run(
    pull: PullRequest, env: Environment | None, view: StatusView | None
) -> CheckRunWant | None:
    """What the check run on the PR's head should show now; None: there is none to keep.

    A closed PR, or one runbot no longer shows (no config), completes an open check run as
    `neutral` and never starts one.
    """
    sha = pull.head_sha
    if not sha:
        return None
    details = view.log_url if view is not None else None
    if pull.state != "open" or view is None:
        if pull.check_run_id is None or pull.check_run_done or pull.check_run_sha != sha:
            return None
        why = "The pull request was closed." if pull.state != "open" else "runbot is off here."
        return CheckRunWant(
            sha, CheckStatus.COMPLETED, "Closed", why, conclusion="neutral", details_url=details
        )
    reason = _reason(view)
    origin = pool_origin_line(view.pool_origin, view.silo) or ""
    pending = env is not None and env.generation != env.observed_generation
    state = view.state
    if state == "ready" and (pending or (view.deployed_sha and view.deployed_sha != sha)):
        # Still at an older commit: waiting to update, or held there (checks failed...).
        state = "queued" if pending else "held"
    if state == "held" and pull.hold_kind == HoldKind.WAITING_FOR_CI:
        state = "waiting_ci"
    if state in ("failed", "sleeping", "destroyed") and pending:
        state = "queued"

    def run(
        status: CheckStatus, title: str, text: str, conclusion: str | None = None
    ) -> CheckRunWant:
        summary = "\n\n".join(part for part in (text, origin, reason) if part)
        return CheckRunWant(sha, status, title, summary, conclusion, details)

    if state == "waiting_ci":
        return run(CheckStatus.QUEUED, "Waiting for checks", "runbot deploys once CI passes.")
    if state == "queued":
        return run(CheckStatus.QUEUED, "Queued", "The environment is waiting for its turn.")
    if state in ("creating", "updating"):
        return run(CheckStatus.IN_PROGRESS, state.capitalize(), f"The environment is {state}.")
    if state == "destroying":
        return run(CheckStatus.IN_PROGRESS, "Destroying", "The environment is being destroyed.")
    if state == "ready":
        url = view.url or ""
        text = f"The environment is ready: {url}" if url else "The environment is ready."
        summary = f"{text}\n\n{origin}" if origin else text
        return CheckRunWant(sha, CheckStatus.COMPLETED, "Ready", summary, "success", details)
    if state == "failed":
        return run(CheckStatus.COMPLETED, "Failed", "The environment failed.", "failure")
    if state == "sleeping":
        return run(CheckStatus.COMPLETED, "Asleep", "Wake it with `/runbot wake`.", "neutral")
    if state == "destroyed":
        return run(CheckStatus.COMPLETED, "Destroyed", "The environment is gone.", "neutral")
    # not deployed, or held at an older commit: nothing runs for this commit.
    return run(CheckStatus.COMPLETED, "Not deployed", "runbot holds this commit.", "neutral")
