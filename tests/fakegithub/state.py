"""The fake's state: one record type per GitHub object, and small helpers they share.

Plain dataclasses the mixins of ``server.FakeGitHub`` read and change under its lock;
kept apart so every domain module can import them without importing each other.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from fastapi import Request

DOCS = "https://docs.github.com/rest"
DEFAULT_INSTALLATION_PERMISSIONS: dict[str, str] = {
    "checks": "write",
    "contents": "read",
    "deployments": "write",
    "issues": "write",
    "metadata": "read",
    "pull_requests": "write",
    "statuses": "read",
}
DEFAULT_EVENTS = ["check_suite", "issue_comment", "pull_request", "status"]
_PERMISSION_LEVELS = ("none", "read", "triage", "write", "maintain", "admin")
_SHA_RE = re.compile(r"[0-9a-f]{40}")


class RecordedRequest(NamedTuple):
    """One request as the fake saw it (``path`` has no query string)."""

    time: float  # time.monotonic() on arrival
    method: str
    path: str
    body: Any  # parsed JSON (or form fields), None when empty
    auth: str  # "none" | "app" | "installation" | "user" | "invalid"


@dataclass(frozen=True)
class Violation:
    """A request/response that does not match GitHub's description, or an unknown endpoint."""

    kind: str  # "request" | "response" | "unsupported"
    method: str
    path: str
    message: str


class _GitHubError(Exception):
    """Raised by handlers; rendered as GitHub's JSON error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        errors: list[Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors
        self.headers = dict(headers or {})


@dataclass
class _Resp:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    media_type: str = "application/json; charset=utf-8"


@dataclass
class _Auth:
    kind: str  # none | app | installation | user | invalid
    key: str = "anon"  # rate-limit bucket
    installation_id: int | None = None
    login: str | None = None
    repos: frozenset[str] | None = None  # token restricted to these repos (lower-case)
    permissions: dict[str, str] = field(default_factory=dict)
    error: str = ""


@dataclass
class _Ctx:
    request: Request
    params: dict[str, str]
    query: dict[str, str]
    body: Any
    auth: _Auth


@dataclass
class _User:
    login: str
    id: int
    type: str = "User"
    name: str | None = None
    email: str | None = None


@dataclass
class _Branch:
    sha: str
    files: dict[str, bytes]


@dataclass
class _Repo:
    full_name: str
    id: int
    owner: str
    name: str
    private: bool
    default_branch: str
    branches: dict[str, _Branch]
    created_at: str
    fork: bool = False
    permissions: dict[str, str] = field(default_factory=dict)  # login -> level
    check_suites: dict[str, list[tuple[str, str | None]]] = field(default_factory=dict)
    statuses: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)


@dataclass
class _Pull:
    number: int
    id: int
    head_sha: str
    head_ref: str
    head_repo: str
    base_ref: str
    author: str
    state: str
    draft: bool
    labels: list[str]
    title: str
    body: str | None
    created_at: str
    updated_at: str
    merged: bool = False
    closed_at: str | None = None


@dataclass
class _Issue:
    number: int
    id: int
    title: str
    author: str
    state: str
    created_at: str


@dataclass
class _Comment:
    id: int
    repo: str
    issue_number: int
    body: str
    user: str
    via_app: bool
    created_at: str
    updated_at: str


@dataclass
class _Reaction:
    id: int
    user: str
    content: str
    created_at: str


@dataclass
class _DeploymentStatus:
    id: int
    state: str
    creator: str
    via_app: bool
    description: str
    environment: str
    target_url: str
    log_url: str
    environment_url: str
    created_at: str


@dataclass
class _Deployment:
    id: int
    repo: str
    sha: str
    ref: str
    task: str
    payload: Any
    environment: str
    original_environment: str
    description: str | None
    creator: str
    via_app: bool
    transient: bool
    production: bool
    created_at: str
    updated_at: str
    statuses: list[_DeploymentStatus] = field(default_factory=list)


@dataclass
class _CheckRun:
    id: int
    repo: str
    sha: str
    name: str
    status: str
    conclusion: str | None
    title: str
    summary: str
    details_url: str | None
    suite_id: int
    started_at: str
    completed_at: str | None = None


@dataclass
class _Installation:
    id: int
    account: str
    repos: list[str]
    permissions: dict[str, str]
    events: list[str]
    repository_selection: str
    created_at: str
    suspended_at: str | None = None


@dataclass
class _Token:
    kind: str  # installation | user
    expires_at: float | None
    installation_id: int | None = None
    login: str | None = None
    repos: frozenset[str] | None = None
    permissions: dict[str, str] = field(default_factory=dict)


_LOST = -1  # `_take_fault`'s answer for a fault that lets the request through first


@dataclass
class _Fault:
    status: int
    count: int | None  # None = time-bounded
    until: float | None  # monotonic deadline
    match: re.Pattern[str] | None
    retry_after: int | None = None
    secondary: bool = False
    after: bool = False  # the request is carried out; only its answer is lost


@dataclass(frozen=True)
class _Route:
    method: str
    path: str  # starlette path
    template: str | None  # GitHub path template; None = not in the REST description
    auth: frozenset[str]
    handler: Callable[[_Ctx], _Resp]
    permission: tuple[tuple[str, ...], str] | None = None  # (any of these scopes, level)
    repo_scoped: bool = False


def _b64_wrapped(content: bytes) -> str:
    """Base64 the way the contents API does it: 60-char lines, trailing newline."""
    encoded = base64.b64encode(content).decode()
    return "".join(encoded[i : i + 60] + "\n" for i in range(0, len(encoded), 60))


def _rebase(node: Any, replacements: Sequence[tuple[str, str]]) -> Any:
    """Rewrite URL prefixes (and names) in every string of an example body."""
    if isinstance(node, dict):
        return {k: _rebase(v, replacements) for k, v in node.items()}
    if isinstance(node, list):
        return [_rebase(v, replacements) for v in node]
    if isinstance(node, str):
        for old, new in replacements:
            node = node.replace(old, new)
    return node


def _level_at_least(have: str, want: str) -> bool:
    return _PERMISSION_LEVELS.index(have) >= _PERMISSION_LEVELS.index(want)
