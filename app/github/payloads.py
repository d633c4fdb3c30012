"""GitHub's JSON → typed values: the one place that is lenient about what GitHub sends.

GitHub adds fields, nulls some, and a delivery may be replayed by anyone holding the secret, so
nothing downstream reads a raw dict: webhooks and API bodies become the frozen values below,
or None when the shape is not one runbot acts on. Pull requests look the same in a webhook and
in the pulls API, so one parser serves both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from githubkit.utils import Unset

__all__ = [
    "CIEvent",
    "CommentEvent",
    "InstallationEvent",
    "PullFacts",
    "PullRequestEvent",
    "at",
    "ci_event",
    "comment_event",
    "installation_event",
    "installation_id",
    "pull_facts",
    "pull_request_event",
]


def at(data: Any, *path: str | int, default: Any = None) -> Any:
    """The value at ``path`` in JSON or in a githubkit model alike, or ``default`` where a step
    is missing, null, unset or of another type."""
    for key in path:
        if isinstance(key, int):
            if not isinstance(data, list) or not -len(data) <= key < len(data):
                return default
            data = data[key]
        elif isinstance(data, Mapping):
            data = data.get(key)
        elif data is None or isinstance(data, (str, int, float, list, Unset)):
            return default
        else:
            data = getattr(data, key, None)
    return default if data is None or isinstance(data, Unset) else data


def _text(data: Any, *path: str) -> str:
    value = at(data, *path, default="")
    return value if isinstance(value, str) else str(value)


def _int(data: Any, *path: str) -> int | None:
    value = at(data, *path)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None


def installation_id(payload: Any) -> int | None:
    """The App installation a delivery came through (absent for some local-mode payloads)."""
    return _int(payload, "installation", "id")


@dataclass(frozen=True)
class PullFacts:
    """What decides whether and what to deploy for one pull request."""

    number: int
    head_sha: str
    head_ref: str
    base_ref: str
    base_sha: str
    author: str
    state: str  # "open" or "closed"
    draft: bool
    fork: bool
    labels: tuple[str, ...]
    #: The repository's default branch as GitHub reports it ("" when a payload omits it):
    #: `.runbot.yml` and repository stacks are read from it, never from the PR's base.
    default_branch: str = ""
    #: The repository is public (``visibility``, else ``private``); None when not said.
    public: bool | None = None


def _public(repo: Any) -> bool | None:
    visibility = at(repo, "visibility")
    if isinstance(visibility, str) and visibility:
        return visibility == "public"
    private = at(repo, "private")
    return (not private) if isinstance(private, bool) else None


def pull_facts(item: Any, *, closed: bool = False) -> PullFacts | None:
    """A pull request object (webhook or pulls API); ``closed`` when the event says so.

    A PR is a fork PR when its head lives in another repository, or in one since deleted (its
    ``head.repo`` is null): code from outside must never pass for the repository's own.
    """
    number = _int(item, "number")
    if number is None:
        return None
    head_repo = at(item, "head", "repo", "full_name")
    base_repo = at(item, "base", "repo", "full_name")
    return PullFacts(
        number=number,
        head_sha=_text(item, "head", "sha"),
        head_ref=_text(item, "head", "ref"),
        base_ref=_text(item, "base", "ref"),
        base_sha=_text(item, "base", "sha"),
        author=_text(item, "user", "login"),
        state="closed" if closed or at(item, "state") == "closed" else "open",
        draft=bool(at(item, "draft", default=False)),
        fork=head_repo is None or str(head_repo).lower() != str(base_repo).lower(),
        labels=tuple(_text(label, "name") for label in at(item, "labels", default=[])),
        default_branch=_text(item, "base", "repo", "default_branch"),
        public=_public(at(item, "base", "repo")),
    )


@dataclass(frozen=True)
class PullRequestEvent:
    """A ``pull_request`` delivery; ``updated_at`` orders late deliveries."""

    action: str
    repository: str
    installation_id: int | None
    pull: PullFacts
    updated_at: datetime | None


def pull_request_event(payload: Any) -> PullRequestEvent | None:
    repository = at(payload, "repository", "full_name")
    item = at(payload, "pull_request")
    if not isinstance(repository, str) or not isinstance(item, dict):
        return None
    action = _text(payload, "action")
    if _int(item, "number") is None and _int(payload, "number") is not None:
        item = {**item, "number": payload["number"]}
    if isinstance(item.get("base"), dict) and at(item, "base", "repo") is None:
        # Some payloads omit the base repository: it is the repository the event is about.
        item = {**item, "base": {**item["base"], "repo": {"full_name": repository}}}
    pull = pull_facts(item, closed=action == "closed")
    if pull is None:
        return None
    return PullRequestEvent(
        action=action,
        repository=repository,
        installation_id=installation_id(payload),
        pull=pull,
        updated_at=_time(item.get("updated_at")),
    )


@dataclass(frozen=True)
class CIEvent:
    """A commit's checks or statuses changed."""

    repository: str
    sha: str


def ci_event(event: str, payload: Any) -> CIEvent | None:
    """``check_suite.completed`` or ``status``; anything else is not a CI change."""
    if event == "check_suite" and at(payload, "action") == "completed":
        sha = at(payload, "check_suite", "head_sha")
    elif event == "status":
        sha = at(payload, "sha")
    else:
        return None
    repository = at(payload, "repository", "full_name")
    if not isinstance(repository, str) or not isinstance(sha, str):
        return None
    return CIEvent(repository, sha)


@dataclass(frozen=True)
class InstallationEvent:
    """``installation`` or ``installation_repositories``: which repositories runbot may serve."""

    event: str
    action: str
    installation_id: int
    account: str
    repositories: tuple[str, ...] | None  # the full list, when the event carries one
    added: tuple[str, ...]
    removed: tuple[str, ...]


def _names(items: Any) -> tuple[str, ...]:
    if not isinstance(items, list):
        return ()
    return tuple(str(repo.get("full_name")) for repo in items if isinstance(repo, dict))


def installation_event(event: str, payload: Any) -> InstallationEvent | None:
    install = installation_id(payload)
    if event not in ("installation", "installation_repositories") or install is None:
        return None
    listed = payload.get("repositories") if isinstance(payload, dict) else None
    return InstallationEvent(
        event=event,
        action=_text(payload, "action"),
        installation_id=install,
        account=_text(payload, "installation", "account", "login"),
        repositories=_names(listed) if "repositories" in payload else None,
        added=_names(at(payload, "repositories_added")),
        removed=_names(at(payload, "repositories_removed")),
    )


@dataclass(frozen=True)
class CommentEvent:
    """The parts of an ``issue_comment`` delivery a command needs."""

    repository: str
    number: int
    comment_id: int
    body: str
    author: str
    pr_author: str
    pr_state: str
    installation_id: int | None


def _is_bot(user: Any) -> bool:
    login = _text(user, "login")
    return at(user, "type") == "Bot" or login.lower().endswith("[bot]")


def comment_event(payload: Any) -> CommentEvent | None:
    """The comment to act on, or None: only newly created comments, by people, on PRs.

    Edits are ignored (re-running a command because someone fixed a typo in it would surprise
    everyone), and so are bots, including runbot itself.
    """
    if at(payload, "action") != "created":
        return None
    issue = at(payload, "issue")
    if not isinstance(issue, dict) or not issue.get("pull_request"):
        return None
    comment = at(payload, "comment")
    if not isinstance(comment, dict) or _is_bot(comment.get("user")):
        return None
    if _is_bot(at(payload, "sender")):
        return None
    repository = at(payload, "repository", "full_name")
    number, comment_id = _int(issue, "number"), _int(comment, "id")
    author = at(comment, "user", "login")
    body = comment.get("body")
    if not (
        isinstance(repository, str)
        and number is not None
        and comment_id is not None
        and isinstance(author, str)
        and isinstance(body, str)
    ):
        return None
    return CommentEvent(
        repository=repository,
        number=number,
        comment_id=comment_id,
        body=body,
        author=author,
        pr_author=_text(issue, "user", "login"),
        pr_state="closed" if issue.get("state") == "closed" else "open",
        installation_id=installation_id(payload),
    )
