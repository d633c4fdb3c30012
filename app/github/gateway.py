"""The one door between runbot and GitHub: the ``Gateway`` contract every caller uses.

Everything else talks to the ``Gateway`` protocol, never to githubkit, so that
rate limits, outages, write pacing and GitHub's habit of adding response fields
are handled in one place, and so local mode can swap in the outbox. The GitHub
App implements it in ``app.github.appgateway`` (its endpoints) over
``app.github.transport`` (pacing, retries, tokens); local mode in ``app.github.outbox``.

Failure contract for callers (the notifier and the webhook workers):

* ``RetryLater(retry_after)``: GitHub is rate limiting us or is down. Re-queue
  the sync for ``retry_after`` seconds; never block a worker on it.
* ``NotFoundOnGitHub``: the thing is gone (comment deleted, App uninstalled).
* ``GitHubError``: anything else GitHub refused; the message is one sentence a
  person can act on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeGuard, get_args, runtime_checkable

from app.access.roles import Role
from app.github.payloads import PullFacts

__all__ = [
    "CHECK_NAME",
    "DEPLOYMENT_STATES",
    "MAX_COMMENT_CHARS",
    "MAX_TREE_BYTES",
    "MAX_TREE_FILES",
    "REACTIONS",
    "CheckRunFields",
    "DeploymentState",
    "Gateway",
    "GitHubError",
    "NotFoundOnGitHub",
    "Reaction",
    "RetryLater",
    "check_run_body",
    "check_tree_limits",
    "fit_comment",
    "fit_status_description",
    "is_deployment_state",
    "is_reaction",
]

logger = logging.getLogger(__name__)

#: Repository-stored stacks are fetched file by file; cap them so a mistaken path
#: (a monorepo root) fails fast instead of downloading the world.
MAX_TREE_FILES = 200
MAX_TREE_BYTES = 1_000_000
#: The name of runbot's check run on a PR's head commit.
CHECK_NAME = "runbot"
#: GitHub rejects issue comments longer than 65,536 characters.
MAX_COMMENT_CHARS = 65_536
#: GitHub rejects deployment status descriptions longer than 140 characters.
MAX_STATUS_DESCRIPTION = 140

Reaction = Literal["+1", "-1", "laugh", "confused", "heart", "hooray", "rocket", "eyes"]
DeploymentState = Literal[
    "error", "failure", "inactive", "in_progress", "queued", "pending", "success"
]
REACTIONS: frozenset[str] = frozenset(get_args(Reaction))
DEPLOYMENT_STATES: frozenset[str] = frozenset(get_args(DeploymentState))


def is_reaction(value: str) -> TypeGuard[Reaction]:
    return value in REACTIONS


def is_deployment_state(value: str) -> TypeGuard[DeploymentState]:
    return value in DEPLOYMENT_STATES


class GitHubError(Exception):
    """GitHub refused or failed a request; the message is one plain sentence."""


class RetryLater(GitHubError):
    """Rate limited or GitHub is down: re-queue the work for ``retry_after`` seconds."""

    def __init__(self, retry_after: float, message: str | None = None) -> None:
        self.retry_after = float(retry_after)
        super().__init__(
            message or f"GitHub asked runbot to wait {self.retry_after:.0f} s before retrying."
        )


class NotFoundOnGitHub(GitHubError):
    """The repository, comment, file or installation does not exist (any more)."""


class ForbiddenOnGitHub(GitHubError):
    """GitHub answered 403 (not a rate limit): the App lacks a permission, for example an
    installation that has not yet accepted `checks: write`."""


@dataclass(frozen=True)
class CheckRunFields:
    """What a check run shows; ``conclusion`` only with ``status="completed"``."""

    status: str  # queued | in_progress | completed
    title: str
    summary: str
    conclusion: str | None = None
    details_url: str | None = None


@runtime_checkable
class Gateway(Protocol):
    """All GitHub I/O of the bot. ``installation_id=None`` means: look it up for ``repo``."""

    local: bool

    async def read_file(
        self, installation_id: int | None, repo: str, path: str, ref: str
    ) -> str | None: ...

    async def branch_sha(self, installation_id: int | None, repo: str, branch: str) -> str | None:
        """The commit ``branch`` points at now (None: no such branch)."""
        ...

    async def list_tree(
        self, installation_id: int | None, repo: str, path: str, ref: str
    ) -> dict[str, str]: ...

    async def download_tarball(
        self, installation_id: int | None, repo: str, sha: str, write: Callable[[bytes], None]
    ) -> None:
        """Stream the commit's gzipped tarball into `write` (which may raise to stop it).

        By commit from the base repository, so a fork PR's head is found too."""
        ...

    async def find_comment(
        self, installation_id: int | None, repo: str, number: int, marker: str
    ) -> int | None: ...

    async def create_comment(
        self, installation_id: int | None, repo: str, number: int, body: str
    ) -> int: ...

    async def update_comment(
        self, installation_id: int | None, repo: str, comment_id: int, body: str
    ) -> None: ...

    async def add_reaction(
        self, installation_id: int | None, repo: str, comment_id: int, content: str
    ) -> None: ...

    async def create_deployment(
        self, installation_id: int | None, repo: str, ref: str, environment: str, description: str
    ) -> int: ...

    async def create_deployment_status(
        self,
        installation_id: int | None,
        repo: str,
        deployment_id: int,
        state: str,
        environment_url: str | None,
        log_url: str | None,
        description: str,
    ) -> None: ...

    async def list_deployments(
        self, installation_id: int | None, repo: str, environment: str
    ) -> list[int]:
        """The ids of the App's own deployments to ``environment``."""
        ...

    async def delete_deployment(
        self, installation_id: int | None, repo: str, deployment_id: int
    ) -> None:
        """Delete it, marking it inactive first if GitHub says it is still active."""
        ...

    async def delete_environment(
        self, installation_id: int | None, repo: str, environment: str
    ) -> None: ...

    async def create_check_run(
        self, installation_id: int | None, repo: str, sha: str, fields: CheckRunFields
    ) -> int: ...

    async def update_check_run(
        self, installation_id: int | None, repo: str, check_run_id: int, fields: CheckRunFields
    ) -> None: ...

    async def find_check_run(self, installation_id: int | None, repo: str, sha: str) -> int | None:
        """The App's newest `runbot` check run on ``sha`` that is not completed: the one a
        create cut off before its id was recorded left behind."""
        ...

    async def permission(self, installation_id: int | None, repo: str, username: str) -> Role: ...

    async def list_open_pulls(self, installation_id: int | None, repo: str) -> list[PullFacts]: ...

    async def get_pull(
        self, installation_id: int | None, repo: str, number: int
    ) -> PullFacts | None: ...

    async def installation_repos(self, installation_id: int) -> list[str]: ...

    async def ci_state(self, installation_id: int | None, repo: str, sha: str) -> str: ...

    async def get_app(self) -> dict[str, Any]: ...

    async def installation_token(self, installation_id: int) -> str: ...

    async def aclose(self) -> None: ...


# ---------------------------------------------------------------------------- helpers


def fit_comment(body: str) -> str:
    """Trim a comment to GitHub's limit rather than lose the whole status update to a 422."""
    if len(body) <= MAX_COMMENT_CHARS:
        return body
    note = "\n\n… (truncated: the full text is in runbot's run log)"
    logger.warning("comment of %d characters truncated to GitHub's limit", len(body))
    return body[: MAX_COMMENT_CHARS - len(note)] + note


def check_run_body(fields: CheckRunFields) -> dict[str, Any]:
    """The Checks API body of a check run's state (title and summary within GitHub's limits)."""
    body: dict[str, Any] = {
        "status": fields.status,
        "output": {"title": fields.title[:255], "summary": fields.summary[:65_535]},
    }
    if fields.conclusion is not None:
        body["conclusion"] = fields.conclusion
    if fields.details_url is not None:
        body["details_url"] = fields.details_url
    return body


def fit_status_description(description: str) -> str:
    """Trim a deployment status description to the 140 characters GitHub accepts."""
    if len(description) <= MAX_STATUS_DESCRIPTION:
        return description
    return description[: MAX_STATUS_DESCRIPTION - 1] + "…"


def check_tree_limits(repo: str, path: str, files: int, size: int) -> None:
    """Refuse stack directories too big to be a stack (shared by the outbox for parity)."""
    where = f"{repo}:{path or '/'}"
    if files > MAX_TREE_FILES:
        raise GitHubError(
            f"{where} has more than {MAX_TREE_FILES} files; a stack directory must be smaller"
            " (is the stack path pointing at the repository root?)."
        )
    if size > MAX_TREE_BYTES:
        raise GitHubError(
            f"{where} holds more than {MAX_TREE_BYTES // 1_000_000} MB of files;"
            " a stack directory must be smaller."
        )
