"""A stateful fake of GitHub's REST API, OAuth web flow and App-manifest flow.

GitHub is the one thing runbot's tests may not talk to, and mocks of it drift
from the real thing; so this fake runs as a real HTTP server on loopback and
every body it accepts or returns is validated against GitHub's OpenAPI
description (``schema.py``).  Response bodies are built from the description's
own examples, overlaid with the fake's state, so they carry every field
GitHub documents.

Typical use::

    with FakeGitHub(app_id=4242) as fake:
        fake.add_repo("octo-org/hello", files={"main": {"runbot.yml": "..."}})
        fake.add_installation(7, "octo-org", ["octo-org/hello"])
        fake.add_pull("octo-org/hello", 1, head_sha="a" * 40, head_ref="feature")
        github = GitHub(AppAuthStrategy(fake.app_id, fake.private_key_pem),
                        base_url=fake.url, auto_retry=False, http_cache=False)
        ...
        assert fake.violations == []
"""

from __future__ import annotations

import base64
import copy
import fnmatch
import hashlib
import itertools
import json
import math
import re
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, NamedTuple, Self
from urllib.parse import parse_qsl, urlencode

import jwt
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI, Request
from fastapi.responses import Response

from . import schema, webhooks
from .gitbacking import BackingGit

__all__ = ["FakeGitHub", "RecordedRequest", "Violation"]

DOCS = "https://docs.github.com/rest"
SECONDARY_RATE_LIMIT_MESSAGE = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try "
    "again. If you reach out to GitHub Support for help, please include the request ID {rid}."
)
SECONDARY_RATE_LIMIT_DOCS = (
    "https://docs.github.com/free-pro-team@latest/rest/overview/"
    "rate-limits-for-the-rest-api#about-secondary-rate-limits"
)
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
_ids = itertools.count(1_000_001)
_app_ids = itertools.count(900_001)


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


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _node_id(kind: str, ident: int) -> str:
    return base64.b64encode(f"0{len(kind)}:{kind}{ident}".encode()).decode()


def _fake_sha(*parts: object) -> str:
    return hashlib.sha1(":".join(map(str, parts)).encode()).hexdigest()


def _blob_sha(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


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


class FakeGitHub:
    """GitHub, as far as runbot uses it, served for real on 127.0.0.1.

    All seeding methods and readers are thread-safe; they may be called while
    the server is handling requests from the code under test.
    """

    def __init__(
        self,
        app_id: int | None = None,
        slug: str = "runbot-test",
        *,
        name: str | None = None,
        owner: str = "runbot-org",
        client_id: str | None = None,
        client_secret: str | None = None,
        webhook_secret: str | None = None,
        private_key_pem: str | None = None,
        permissions: Mapping[str, str] | None = None,
        events: Sequence[str] | None = None,
        cache_headers: bool = True,
    ) -> None:
        """Create the fake (not yet listening: use ``start()`` or ``with``).

        *app_id* defaults to a process-unique id because githubkit caches App
        JWTs and installation tokens in a process-global cache keyed by app id.
        """
        self.app_id: int = app_id if app_id is not None else next(_app_ids)
        self.slug = slug
        self.name = name or slug
        self.owner = owner
        self.client_id = client_id or f"Iv1.{secrets.token_hex(8)}"
        self.client_secret = client_secret or secrets.token_hex(20)
        self.webhook_secret = webhook_secret or secrets.token_hex(20)
        if private_key_pem is None:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            private_key_pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            ).decode()
        self.private_key_pem: str = private_key_pem
        loaded = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise ValueError("GitHub App keys are RSA keys")
        self._public_key: rsa.RSAPublicKey = loaded.public_key()
        self.app_permissions: dict[str, str] = dict(permissions or DEFAULT_INSTALLATION_PERMISSIONS)
        self.app_events: list[str] = list(events or DEFAULT_EVENTS)
        self.cache_headers = cache_headers
        #: Login the OAuth web flow signs in as (auto-approved).
        self.oauth_login = "alice"
        #: When True, /login/oauth/authorize redirects with error=access_denied.
        self.oauth_deny = False
        #: Lifetime of user tokens; None = non-expiring tokens without refresh tokens.
        self.oauth_token_expiry: int | None = 8 * 3600
        #: Where /login/oauth/authorize redirects when no redirect_uri is given.
        self.oauth_callback_url: str | None = None
        #: GitHub serves public repositories to anonymous GETs; set False to demand auth.
        self.anonymous_reads = True
        #: Primary rate limit per token per hour (unauthenticated: 60).
        self.rate_limit = 5000
        #: Manifests posted to /settings/apps/new, as parsed JSON (plus state/org).
        self.manifests: list[dict[str, Any]] = []

        self._lock = threading.RLock()
        #: Notified once each request has been handled (its effects are visible).
        self._handled = threading.Condition(self._lock)
        self._handled_count = 0
        self._requests: list[RecordedRequest] = []
        self._violations: list[Violation] = []
        self._faults: list[_Fault] = []
        self._users: dict[str, _User] = {}
        self._repos: dict[str, _Repo] = {}  # key: lower-case full name
        self._pulls: dict[str, dict[int, _Pull]] = {}
        self._issues: dict[str, dict[int, _Issue]] = {}
        self._comments: dict[int, _Comment] = {}
        self._reactions: dict[int, list[_Reaction]] = {}
        self._issue_reactions: dict[tuple[str, int], list[_Reaction]] = {}
        self._deployments: dict[int, _Deployment] = {}
        self._check_runs: dict[int, _CheckRun] = {}
        #: (repository, name) of every GitHub environment deleted through the API.
        self.deleted_environments: list[tuple[str, str]] = []
        self._installations: dict[int, _Installation] = {}
        self._tokens: dict[str, _Token] = {}
        self._refresh_tokens: dict[str, str] = {}  # refresh token -> login
        self._oauth_codes: dict[str, tuple[str, str | None, float]] = {}
        self._manifest_codes: dict[str, dict[str, Any] | None] = {}
        self._rate: dict[str, tuple[float, int]] = {}  # bucket -> (window start, used)
        #: Real commits behind the fake's SHAs, for tarballs; codeload's one-use tokens.
        self._git = BackingGit()
        self._codeload_tokens: dict[str, tuple[str, str, float]] = {}
        self._app_created_at = _now()
        # API version of the request being handled (handlers run under self._lock).
        self._api_version = schema.DEFAULT_API_VERSION
        self._templates = self._load_templates()
        self._routes: list[_Route] = []
        self.app: FastAPI = self._build_app()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        """Serve on 127.0.0.1 on an OS-chosen port, in a daemon thread."""
        if self._server is not None:
            return self
        # proto=IPPROTO_TCP lets asyncio set TCP_NODELAY on accepted sockets; without
        # it Nagle + delayed ACK add ~40 ms to every keep-alive request.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            loop="asyncio",
            http="h11",
            ws="none",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="fake-github", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fake GitHub did not start")
            time.sleep(0.005)
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=5)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout=5)
        self._server = self._thread = None
        self._git.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """REST base URL (pass as githubkit's ``base_url``)."""
        if self._port is None:
            raise RuntimeError("FakeGitHub is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def web_url(self) -> str:
        """github.com equivalent (OAuth, manifest flow, html_url); same server."""
        return self.url

    # ------------------------------------------------------------------ records

    @property
    def requests(self) -> list[RecordedRequest]:
        """Snapshot of every request received, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def violations(self) -> list[Violation]:
        """Schema violations and calls to endpoints the fake does not implement."""
        with self._lock:
            return list(self._violations)

    def requests_for(
        self, method: str | None = None, path: str | None = None
    ) -> list[RecordedRequest]:
        """Requests filtered by method and an ``fnmatch`` path pattern (``*`` spans ``/``)."""
        return [
            r
            for r in self.requests
            if (method is None or r.method == method.upper())
            and (path is None or fnmatch.fnmatchcase(r.path, path))
        ]

    @property
    def handled_count(self) -> int:
        """How many requests have been handled so far (for `wait_for_handled`)."""
        with self._lock:
            return self._handled_count

    def wait_for_handled(self, count: int, timeout: float) -> bool:
        """Block until more than `count` requests have been handled, or `timeout` passes.

        Lets a benchmark see a write the moment it lands instead of polling, which would
        also load the machine while the bot works.
        """
        with self._handled:
            return self._handled.wait_for(lambda: self._handled_count > count, timeout)

    def clear_records(self) -> None:
        """Forget recorded requests and violations (state is kept)."""
        with self._lock:
            self._requests.clear()
            self._violations.clear()

    # ------------------------------------------------------------------ faults

    def fail_next(self, n: int = 1, status: int = 502, *, match: str | None = None) -> None:
        """Answer the next *n* requests with *status*.

        *match* (a regex searched in ``"METHOD /path"``) limits which requests fail.
        """
        with self._lock:
            self._faults.append(_Fault(status, n, None, re.compile(match) if match else None))

    def lose_next_response(self, n: int = 1, *, match: str | None = None) -> None:
        """Carry out the next *n* (matching) requests, then answer 502: the response lost on
        the way back, as when a client is killed after GitHub committed its write."""
        with self._lock:
            self._faults.append(
                _Fault(502, n, None, re.compile(match) if match else None, after=True)
            )

    def outage(self, seconds: float, status: int = 502, *, match: str | None = None) -> None:
        """Answer every (matching) request with *status* for *seconds* from now."""
        with self._lock:
            self._faults.append(
                _Fault(
                    status,
                    None,
                    time.monotonic() + seconds,
                    re.compile(match) if match else None,
                )
            )

    def secondary_rate_limit(
        self, count: int = 1, retry_after: int | None = 2, *, match: str | None = None
    ) -> None:
        """Answer the next *count* requests with GitHub's secondary-rate-limit 403."""
        with self._lock:
            self._faults.append(
                _Fault(
                    403,
                    count,
                    None,
                    re.compile(match) if match else None,
                    retry_after=retry_after,
                    secondary=True,
                )
            )

    def reset_faults(self) -> None:
        """Drop all pending fault injections."""
        with self._lock:
            self._faults.clear()

    # ------------------------------------------------------------------ seeding

    def add_user(
        self, login: str, *, type: str = "User", name: str | None = None, email: str | None = None
    ) -> None:
        """Register (or update) a user or organization account."""
        with self._lock:
            user = self._user(login, type)
            user.type, user.name, user.email = type, name, email

    def add_installation(
        self,
        installation_id: int,
        account: str,
        repos: Iterable[str],
        *,
        permissions: Mapping[str, str] | None = None,
        events: Sequence[str] | None = None,
        repository_selection: str = "selected",
    ) -> None:
        """Install the App on *account* for *repos* (created if unknown)."""
        with self._lock:
            self._user(account, "Organization")
            names = []
            for full_name in repos:
                if full_name.lower() not in self._repos:
                    self.add_repo(full_name)
                names.append(self._repos[full_name.lower()].full_name)
            self._installations[installation_id] = _Installation(
                installation_id,
                account,
                names,
                dict(permissions or self.app_permissions),
                list(events or self.app_events),
                repository_selection,
                _now(),
            )

    def remove_installation(self, installation_id: int) -> None:
        """Uninstall: the installation and its tokens stop working."""
        with self._lock:
            self._installations.pop(installation_id, None)
            for token, info in list(self._tokens.items()):
                if info.installation_id == installation_id:
                    del self._tokens[token]

    def suspend_installation(self, installation_id: int, suspended: bool = True) -> None:
        """Suspend (or unsuspend) an installation: while suspended its tokens stop working and
        GitHub refuses it new ones (403)."""
        with self._lock:
            inst = self._installations[installation_id]
            inst.suspended_at = _now() if suspended else None
            for token, info in list(self._tokens.items()):
                if suspended and info.installation_id == installation_id:
                    del self._tokens[token]

    def set_installation_repos(self, installation_id: int, repos: Iterable[str]) -> None:
        """Change which repositories an installation can access."""
        with self._lock:
            inst = self._installations[installation_id]
            inst.repos = []
            for full_name in repos:
                if full_name.lower() not in self._repos:
                    self.add_repo(full_name)
                inst.repos.append(self._repos[full_name.lower()].full_name)

    def add_repo(
        self,
        full_name: str,
        default_branch: str = "main",
        files: Mapping[str, Mapping[str, str | bytes]] | None = None,
        private: bool = False,
    ) -> None:
        """Create a repository; *files* is ``{branch: {path: content}}``."""
        owner, name = full_name.split("/", 1)
        with self._lock:
            self._user(owner)
            branches = {default_branch: _Branch(_fake_sha(full_name, default_branch), {})}
            for branch, tree in (files or {}).items():
                branches.setdefault(branch, _Branch(_fake_sha(full_name, branch), {}))
                for path, content in tree.items():
                    branches[branch].files[path.strip("/")] = (
                        content.encode() if isinstance(content, str) else content
                    )
            self._repos[full_name.lower()] = _Repo(
                full_name, next(_ids), owner, name, private, default_branch, branches, _now()
            )
            self._pulls.setdefault(full_name.lower(), {})
            self._issues.setdefault(full_name.lower(), {})

    def set_file(self, repo: str, branch: str, path: str, content: str | bytes | None) -> None:
        """Create/replace (or with ``None`` delete) a file; a new branch forks the default one."""
        with self._lock:
            r = self._repo(repo)
            if branch not in r.branches:
                base = r.branches[r.default_branch]
                r.branches[branch] = _Branch(_fake_sha(r.full_name, branch), dict(base.files))
            files = r.branches[branch].files
            if content is None:
                files.pop(path.strip("/"), None)
            else:
                files[path.strip("/")] = content.encode() if isinstance(content, str) else content

    def branch_sha(self, repo: str, branch: str) -> str:
        """The commit *branch* points at."""
        with self._lock:
            return self._repo(repo).branches[branch].sha

    def set_branch(self, repo: str, branch: str, sha: str) -> None:
        """Point *branch* at *sha* (creating it from the default branch if needed)."""
        with self._lock:
            r = self._repo(repo)
            if branch not in r.branches:
                r.branches[branch] = _Branch(sha, dict(r.branches[r.default_branch].files))
            r.branches[branch].sha = sha

    def push_commit(
        self,
        repo: str,
        files: Mapping[str, str | bytes],
        *,
        branch: str | None = None,
        message: str = "a commit",
    ) -> str:
        """Make a real commit of exactly *files* in *repo*; its SHA, which the tarball
        endpoint serves. With *branch*, the branch points at it and holds those files."""
        tree = {
            path.strip("/"): content.encode() if isinstance(content, str) else content
            for path, content in files.items()
        }
        with self._lock:
            r = self._repo(repo)
            sha = self._git.commit(tree, message)
            self._git.real[(r.full_name.lower(), sha)] = sha
            if branch is not None:
                r.branches[branch] = _Branch(sha, dict(tree))
            return sha

    def set_permission(self, repo: str, login: str, permission: str) -> None:
        """Set *login*'s role on *repo*: admin, maintain, write, triage, read or none."""
        if permission not in _PERMISSION_LEVELS:
            raise ValueError(f"unknown permission {permission!r}")
        with self._lock:
            self._user(login)
            self._repo(repo).permissions[login.lower()] = permission

    def add_pull(
        self,
        repo: str,
        number: int,
        head_sha: str,
        head_ref: str,
        base_ref: str = "main",
        author: str = "octocat",
        state: str = "open",
        draft: bool = False,
        fork: bool = False,
        labels: Iterable[str] = (),
        *,
        title: str | None = None,
        body: str | None = None,
    ) -> None:
        """Open a pull request (or replace it).  A fork PR's head lives in ``author/<name>``."""
        with self._lock:
            r = self._repo(repo)
            self._user(author)
            if fork:
                head_full = f"{author}/{r.name}"
                if head_full.lower() not in self._repos:
                    self.add_repo(head_full, default_branch=r.default_branch)
                    self._repos[head_full.lower()].fork = True
                head_repo = self._repos[head_full.lower()]
            else:
                head_repo = r
            base = r.branches.get(base_ref) or r.branches[r.default_branch]
            if head_ref not in head_repo.branches:
                head_repo.branches[head_ref] = _Branch(head_sha, dict(base.files))
            head_repo.branches[head_ref].sha = head_sha
            now = _now()
            old = self._pulls[r.full_name.lower()].get(number)
            self._pulls[r.full_name.lower()][number] = _Pull(
                number=number,
                id=old.id if old else next(_ids),
                head_sha=head_sha,
                head_ref=head_ref,
                head_repo=head_repo.full_name,
                base_ref=base_ref,
                author=author,
                state=state,
                draft=draft,
                labels=list(labels),
                title=title or f"Pull request #{number}",
                body=body,
                created_at=old.created_at if old else now,
                updated_at=now,
                closed_at=None if state == "open" else now,
            )

    def update_pull(
        self,
        repo: str,
        number: int,
        *,
        head_sha: str | None = None,
        state: str | None = None,
        draft: bool | None = None,
        labels: Iterable[str] | None = None,
        merged: bool | None = None,
        title: str | None = None,
    ) -> None:
        """Change a pull request (push, close/merge, draft toggle, labels)."""
        with self._lock:
            r = self._repo(repo)
            pull = self._pull(r, number)
            if head_sha is not None:
                pull.head_sha = head_sha
                head_repo = self._repos[pull.head_repo.lower()]
                head_repo.branches[pull.head_ref].sha = head_sha
            if state is not None:
                pull.state = state
                pull.closed_at = None if state == "open" else _now()
            if draft is not None:
                pull.draft = draft
            if labels is not None:
                pull.labels = list(labels)
            if merged is not None:
                pull.merged = merged
                if merged:
                    pull.state, pull.closed_at = "closed", _now()
            if title is not None:
                pull.title = title
            pull.updated_at = _now()

    def add_issue(
        self, repo: str, number: int, *, title: str = "An issue", author: str = "octocat"
    ) -> None:
        """Open a plain issue (comments on it must not trigger PR environments)."""
        with self._lock:
            r = self._repo(repo)
            self._user(author)
            self._issues[r.full_name.lower()][number] = _Issue(
                number, next(_ids), title, author, "open", _now()
            )

    def add_comment(
        self, repo: str, number: int, body: str, author: str = "octocat"
    ) -> dict[str, Any]:
        """Seed a comment by a user (as if typed in the UI); returns its REST body."""
        with self._lock:
            r = self._repo(repo)
            self._issue_exists(r, number)
            self._user(author)
            now = _now()
            comment = _Comment(next(_ids), r.full_name, number, body, author, False, now, now)
            self._comments[comment.id] = comment
            return self._comment_obj(comment)

    def set_check_suites(
        self, repo: str, sha: str, suites: Iterable[tuple[str, str | None]]
    ) -> None:
        """Set the check suites of a commit: ``[(status, conclusion), ...]``."""
        with self._lock:
            self._repo(repo).check_suites[sha] = list(suites)

    def set_combined_status(
        self, repo: str, sha: str, state: str, contexts: Mapping[str, str] | None = None
    ) -> None:
        """Set a commit's combined status.

        *contexts* maps context -> state; by default a single ``ci`` context in *state*.
        """
        with self._lock:
            self._repo(repo).statuses[sha] = (state, dict(contexts or {"ci": state}))

    def add_manifest_code(self, code: str) -> None:
        """Make *code* redeemable once at ``POST /app-manifests/{code}/conversions``."""
        with self._lock:
            self._manifest_codes[code] = None

    def issue_installation_token(self, installation_id: int, ttl: float = 3600) -> str:
        """Mint an installation token without the JWT dance."""
        with self._lock:
            inst = self._installations[installation_id]
            token = "ghs_" + secrets.token_urlsafe(27)[:36]
            self._tokens[token] = _Token(
                "installation",
                time.time() + ttl,
                installation_id,
                permissions=dict(inst.permissions),
            )
            return token

    def issue_user_token(self, login: str, ttl: float | None = None) -> str:
        """Mint a user-to-server (OAuth) token for *login* without the web flow."""
        with self._lock:
            self._user(login)
            token = "ghu_" + secrets.token_urlsafe(27)[:36]
            self._tokens[token] = _Token(
                "user", None if ttl is None else time.time() + ttl, login=login
            )
            return token

    def expire_tokens(self) -> None:
        """Expire every installation and user token (as if an hour passed)."""
        with self._lock:
            for info in self._tokens.values():
                info.expires_at = time.time() - 1

    # ------------------------------------------------------------------ readers

    def comments(self, repo: str, number: int) -> list[dict[str, Any]]:
        """Comments on an issue/PR, oldest first, as ``GET .../comments`` returns them."""
        with self._lock:
            r = self._repo(repo)
            return [
                self._comment_obj(c)
                for c in sorted(self._comments.values(), key=lambda c: c.id)
                if c.repo == r.full_name and c.issue_number == number
            ]

    def reactions(self, comment_id: int) -> list[dict[str, Any]]:
        """Reactions on an issue comment, oldest first."""
        with self._lock:
            return [self._reaction_obj(x) for x in self._reactions.get(comment_id, [])]

    def deployments(self, repo: str) -> list[dict[str, Any]]:
        """Deployments of *repo*, oldest first (the API lists newest first)."""
        with self._lock:
            r = self._repo(repo)
            return [
                self._deployment_obj(d)
                for d in sorted(self._deployments.values(), key=lambda d: d.id)
                if d.repo == r.full_name
            ]

    def deployment_statuses(self, repo: str, deployment_id: int) -> list[dict[str, Any]]:
        """Statuses of a deployment, oldest first (the API lists newest first)."""
        with self._lock:
            dep = self._deployments[deployment_id]
            if dep.repo.lower() != repo.lower():
                raise KeyError(f"deployment {deployment_id} is not in {repo}")
            return [self._deployment_status_obj(dep, s) for s in dep.statuses]

    def check_runs(self, repo: str, sha: str | None = None) -> list[dict[str, Any]]:
        """The App's check runs on ``repo`` (on ``sha``), oldest first, as GitHub shows them."""
        with self._lock:
            return [
                self._check_run_obj(run)
                for run in sorted(self._check_runs.values(), key=lambda r: r.id)
                if run.repo == self._repo(repo).full_name and sha in (None, run.sha)
            ]

    def pull(self, repo: str, number: int) -> dict[str, Any]:
        """A pull request as ``GET .../pulls/{n}`` returns it."""
        with self._lock:
            r = self._repo(repo)
            return self._pull_obj(r, self._pull(r, number), full=True)

    def repo_id(self, full_name: str) -> int:
        """The numeric id of a seeded repository."""
        with self._lock:
            return self._repo(full_name).id

    def installation_for(self, repo: str) -> int | None:
        """The id of the installation that covers *repo*, if any."""
        with self._lock:
            return self._installation_for(self._repo(repo).full_name)

    # ------------------------------------------------------------------ webhook events

    def pull_request_event(
        self, action: str, repo: str, number: int, **overrides: Any
    ) -> dict[str, Any]:
        """A ``pull_request`` payload consistent with the fake's state for that PR."""
        with self._lock:
            r = self._repo(repo)
            pull = self._pull(r, number)
            kwargs: dict[str, Any] = {
                "repo": r.full_name,
                "number": number,
                "head_sha": pull.head_sha,
                "head_ref": pull.head_ref,
                "author": pull.author,
                "fork": pull.head_repo != r.full_name,
                "draft": pull.draft,
                "labels": tuple(pull.labels),
                "installation_id": self._installation_for(r.full_name) or 1,
                "base_ref": pull.base_ref,
                "title": pull.title,
                "merged": pull.merged,
                "repo_id": r.id,
                "pull_id": pull.id,
                "private": r.private,
                "api_url": self.url,
                "web_url": self.web_url,
            }
        kwargs.update(overrides)
        return webhooks.make_pull_request_event(action, **kwargs)

    def installation_event(
        self, event: str, action: str, installation_id: int, repos: Iterable[str] = ()
    ) -> dict[str, Any]:
        """An admin acts on the App's installation: change the fake's state the way GitHub
        does and return the webhook GitHub sends for it.

        ``installation``: ``deleted`` uninstalls, ``suspend``/``unsuspend``; ``created``
        installs it on ``repos``. ``installation_repositories``: ``added``/``removed`` ``repos``.
        """
        with self._lock:
            inst = self._installations.get(installation_id)
            account = inst.account if inst is not None else ""
            current = list(inst.repos) if inst is not None else []
        if event == "installation_repositories":
            wanted = {name.lower() for name in repos}
            kept = [name for name in current if name.lower() not in wanted]
            self.set_installation_repos(
                installation_id, [*kept, *repos] if action == "added" else kept
            )
            listed = list(repos)
        elif action == "created":
            account = account or next(iter(repos)).split("/", 1)[0]
            self.add_installation(installation_id, account, repos)
            listed = list(repos)
        else:
            listed = current
            if action == "deleted":
                self.remove_installation(installation_id)
            elif action in ("suspend", "unsuspend"):
                self.suspend_installation(installation_id, action == "suspend")
        with self._lock:
            described = [
                (self._repo(name).full_name, self._repo(name).id, self._repo(name).private)
                for name in listed
            ]
        return webhooks.make_installation_event(
            event,
            action,
            installation_id,
            account,
            described,
            api_url=self.url,
            web_url=self.web_url,
        )

    def issue_comment_event(
        self,
        repo: str,
        number: int,
        body: str,
        author: str = "octocat",
        *,
        action: str = "created",
        comment_id: int | None = None,
        author_association: str | None = None,
    ) -> dict[str, Any]:
        """Post a comment into the fake (or edit *comment_id*) and return its webhook payload."""
        with self._lock:
            r = self._repo(repo)
            previous = None
            if action == "created":
                comment_obj = self.add_comment(repo, number, body, author)
                comment_id = comment_obj["id"]
            elif comment_id is not None:
                comment = self._comments[comment_id]
                previous, comment.body, comment.updated_at = comment.body, body, _now()
                author = comment.user
            else:
                raise ValueError("comment_id is required unless action is 'created'")
            pull = self._pulls[r.full_name.lower()].get(number)
            issue = self._issues[r.full_name.lower()].get(number)
            association = author_association or self._association(r, author)
            kwargs: dict[str, Any] = {
                # The issue's (PR's) author, as GitHub sends it; not the commenter.
                "issue_author": pull.author if pull else (issue.author if issue else author),
                "repo": r.full_name,
                "number": number,
                "body": body,
                "author": author,
                "on_pull_request": pull is not None,
                "comment_id": comment_id,
                "installation_id": self._installation_for(r.full_name) or 1,
                "author_association": association,
                "repo_id": r.id,
                "private": r.private,
                "api_url": self.url,
                "web_url": self.web_url,
            }
            if previous is not None:
                kwargs["previous_body"] = previous
            state = pull.state if pull else (issue.state if issue else "open")
        payload = webhooks.make_issue_comment_event(action, **kwargs)
        payload["issue"]["state"] = state
        return payload

    # ------------------------------------------------------------------ state helpers

    def _user(self, login: str, type: str = "User") -> _User:
        key = login.lower()
        if key not in self._users:
            self._users[key] = _User(login, next(_ids), type)
        return self._users[key]

    def _repo(self, full_name: str) -> _Repo:
        try:
            return self._repos[full_name.lower()]
        except KeyError:
            raise KeyError(f"unknown repository {full_name!r}; add_repo() it first") from None

    def _pull(self, repo: _Repo, number: int) -> _Pull:
        try:
            return self._pulls[repo.full_name.lower()][number]
        except KeyError:
            raise KeyError(f"unknown pull request {repo.full_name}#{number}") from None

    def _issue_exists(self, repo: _Repo, number: int) -> None:
        key = repo.full_name.lower()
        if number not in self._pulls[key] and number not in self._issues[key]:
            raise _GitHubError(404, "Not Found")

    def _installation_for(self, full_name: str) -> int | None:
        for inst in self._installations.values():
            if full_name.lower() in (n.lower() for n in inst.repos):
                return inst.id
        return None

    def _permission(self, repo: _Repo, login: str) -> str:
        explicit = repo.permissions.get(login.lower())
        if explicit is not None:
            return explicit
        if login.lower() == repo.owner.lower():
            return "admin"
        return "none" if repo.private else "read"

    def _association(self, repo: _Repo, login: str) -> str:
        if login.lower() == repo.owner.lower():
            return "OWNER"
        if repo.permissions.get(login.lower(), "none") != "none":
            return "COLLABORATOR"
        return "NONE"

    def _resolve_ref(self, repo: _Repo, ref: str) -> tuple[str, _Branch | None] | None:
        """Resolve a branch / ``refs/pull/N/head`` / sha to ``(sha, branch or None)``."""
        name = ref.removeprefix("refs/heads/").removeprefix("heads/")
        if name in repo.branches:
            return repo.branches[name].sha, repo.branches[name]
        pulls = self._pulls.get(repo.full_name.lower(), {})
        match = re.fullmatch(r"(?:refs/)?pull/(\d+)/head", ref)
        if match and int(match.group(1)) in pulls:
            pull = pulls[int(match.group(1))]
            head = self._repos[pull.head_repo.lower()].branches.get(pull.head_ref)
            return pull.head_sha, head
        if _SHA_RE.fullmatch(ref):
            for branch in repo.branches.values():
                if branch.sha == ref:
                    return ref, branch
            for pull in pulls.values():
                if pull.head_sha == ref:
                    head = self._repos[pull.head_repo.lower()].branches.get(pull.head_ref)
                    if head is not None and head.sha == ref:
                        return ref, head
            return ref, None
        return None

    def _accessible(self, auth: _Auth, repo: _Repo) -> bool:
        if auth.kind == "installation":
            inst = self._installations.get(auth.installation_id or -1)
            if inst is None or repo.full_name not in inst.repos:
                return False
            return auth.repos is None or repo.full_name.lower() in auth.repos
        if auth.kind == "user" and auth.login:
            return not repo.private or self._permission(repo, auth.login) != "none"
        return auth.kind == "none" and not repo.private

    def _visible_installations(self, login: str) -> list[_Installation]:
        out = []
        for inst in sorted(self._installations.values(), key=lambda i: i.id):
            if inst.account.lower() == login.lower() or self._visible_repos(login, inst):
                out.append(inst)
        return out

    def _visible_repos(self, login: str, inst: _Installation) -> list[_Repo]:
        """Repos of *inst* the user has *explicit* access to (as GitHub documents)."""
        repos = [self._repos[n.lower()] for n in inst.repos]
        return [
            r
            for r in repos
            if r.owner.lower() == login.lower()
            or r.permissions.get(login.lower(), "none") != "none"
        ]

    # ------------------------------------------------------------------ body builders

    def _load_templates(self) -> dict[str, Any]:
        ex = schema.example
        contents = "/repos/{owner}/{repo}/contents/{path}"
        return {
            "app": ex("GET", "/app"),
            "token": ex("POST", "/app/installations/{installation_id}/access_tokens", "201"),
            "installation": ex("GET", "/repos/{owner}/{repo}/installation"),
            "repo": ex("GET", "/repos/{owner}/{repo}"),
            "file": ex("GET", contents, "200", "response-if-content-is-a-file"),
            "dir_entry": ex("GET", contents, "200", "response-if-content-is-a-directory")[0],
            "pull": ex("GET", "/repos/{owner}/{repo}/pulls/{pull_number}"),
            "comment": ex("POST", "/repos/{owner}/{repo}/issues/{issue_number}/comments", "201"),
            "reaction": ex(
                "POST", "/repos/{owner}/{repo}/issues/comments/{comment_id}/reactions", "201"
            ),
            "deployment": ex("POST", "/repos/{owner}/{repo}/deployments", "201"),
            "deployment_status": ex(
                "POST", "/repos/{owner}/{repo}/deployments/{deployment_id}/statuses", "201"
            ),
            "check_suite": ex("GET", "/repos/{owner}/{repo}/commits/{ref}/check-suites")[
                "check_suites"
            ][0],
            "combined": ex("GET", "/repos/{owner}/{repo}/commits/{ref}/status"),
            "check_run": ex("POST", "/repos/{owner}/{repo}/check-runs", "201"),
            "private_user": ex(
                "GET", "/user", "200", "response-with-public-and-private-profile-information"
            ),
            "manifest": ex("POST", "/app-manifests/{code}/conversions", "201"),
        }

    def _tpl(self, name: str) -> Any:
        return copy.deepcopy(self._templates[name])

    def _user_obj(self, login: str) -> dict[str, Any]:
        user = self._user(login)
        api, web = self.url, self.web_url
        path_login = login.replace("[", "%5B").replace("]", "%5D")
        is_bot = user.type == "Bot"
        return {
            "name": user.name,
            "email": user.email,
            "login": user.login,
            "id": user.id,
            "node_id": _node_id("Bot" if is_bot else "User", user.id),
            "avatar_url": f"https://avatars.githubusercontent.com/u/{user.id}?v=4",
            "gravatar_id": "",
            "url": f"{api}/users/{path_login}",
            "html_url": f"{web}/apps/{self.slug}" if is_bot else f"{web}/{login}",
            "followers_url": f"{api}/users/{path_login}/followers",
            "following_url": f"{api}/users/{path_login}/following{{/other_user}}",
            "gists_url": f"{api}/users/{path_login}/gists{{/gist_id}}",
            "starred_url": f"{api}/users/{path_login}/starred{{/owner}}{{/repo}}",
            "subscriptions_url": f"{api}/users/{path_login}/subscriptions",
            "organizations_url": f"{api}/users/{path_login}/orgs",
            "repos_url": f"{api}/users/{path_login}/repos",
            "events_url": f"{api}/users/{path_login}/events{{/privacy}}",
            "received_events_url": f"{api}/users/{path_login}/received_events",
            "type": user.type,
            "site_admin": False,
            "user_view_type": "public",
        }

    @property
    def bot_login(self) -> str:
        """The login the App acts as (``<slug>[bot]``), e.g. as comment author."""
        return f"{self.slug}[bot]"

    def _bot(self) -> str:
        user = self._user(self.bot_login, "Bot")
        user.type = "Bot"
        return user.login

    def _actor(self, auth: _Auth) -> tuple[str, bool]:
        """(login, via_app) of whoever is making a write."""
        if auth.kind == "installation":
            return self._bot(), True
        return auth.login or "ghost", False

    def _app_obj(self) -> dict[str, Any]:
        self._user(self.owner, "Organization")
        body = self._tpl("app")
        body.update(
            id=self.app_id,
            slug=self.slug,
            client_id=self.client_id,
            node_id=_node_id("Integration", self.app_id),
            owner=self._user_obj(self.owner),
            name=self.name,
            description="",
            external_url=f"{self.web_url}/apps/{self.slug}",
            html_url=f"{self.web_url}/apps/{self.slug}",
            created_at=self._app_created_at,
            updated_at=self._app_created_at,
            permissions=dict(self.app_permissions),
            events=list(self.app_events),
            installations_count=len(self._installations),
        )
        return body

    def _repo_obj(self, repo: _Repo, login: str | None = None) -> dict[str, Any]:
        api, web = f"{self.url}/repos/{repo.full_name}", f"{self.web_url}/{repo.full_name}"
        host = self.web_url.split("://", 1)[1]
        body = _rebase(
            self._tpl("repo"),
            [
                ("https://api.github.com/repos/octocat/Hello-World", api),
                ("https://github.com/octocat/Hello-World", web),
            ],
        )
        for key in ("template_repository", "organization", "parent", "source", "temp_clone_token"):
            body.pop(key, None)
        perm = self._permission(repo, login) if login else "read"
        owner = self._user(repo.owner)
        open_pulls = sum(p.state == "open" for p in self._pulls[repo.full_name.lower()].values())
        body.update(
            id=repo.id,
            node_id=_node_id("Repository", repo.id),
            name=repo.name,
            full_name=repo.full_name,
            owner=self._user_obj(repo.owner),
            private=repo.private,
            visibility="private" if repo.private else "public",
            html_url=web,
            description=None,
            fork=repo.fork,
            url=api,
            git_url=f"git://{host}/{repo.full_name}.git",
            ssh_url=f"git@{host}:{repo.full_name}.git",
            clone_url=f"{web}.git",
            svn_url=web,
            mirror_url=None,
            homepage=None,
            language=None,
            forks_count=0,
            forks=0,
            stargazers_count=0,
            watchers_count=0,
            watchers=0,
            size=1,
            default_branch=repo.default_branch,
            open_issues_count=open_pulls,
            open_issues=open_pulls,
            topics=[],
            pushed_at=repo.created_at,
            created_at=repo.created_at,
            updated_at=repo.created_at,
            license=None,
            subscribers_count=1,
            network_count=0,
            permissions={
                "admin": _level_at_least(perm, "admin"),
                "maintain": _level_at_least(perm, "maintain"),
                "push": _level_at_least(perm, "write"),
                "triage": _level_at_least(perm, "triage"),
                "pull": _level_at_least(perm, "read"),
            },
        )
        if owner.type == "Organization":
            body["organization"] = self._user_obj(repo.owner)
        return self._prune(body, "full-repository", "repository", "minimal-repository")

    def _prune(self, body: dict[str, Any], *schema_names: str) -> dict[str, Any]:
        """Drop fields the requested API version removed (e.g. 2026-03-10's ``has_downloads``)."""
        for name in schema_names:
            for prop in schema.removed_properties(name, self._api_version):
                body.pop(prop, None)
        return body

    def _installation_obj(self, inst: _Installation) -> dict[str, Any]:
        account = self._user(inst.account)
        body = self._tpl("installation")
        org = account.type == "Organization"
        body.update(
            id=inst.id,
            account=self._user_obj(inst.account),
            repository_selection=inst.repository_selection,
            access_tokens_url=f"{self.url}/app/installations/{inst.id}/access_tokens",
            repositories_url=f"{self.url}/installation/repositories",
            html_url=(
                f"{self.web_url}/organizations/{inst.account}/settings/installations/{inst.id}"
                if org
                else f"{self.web_url}/settings/installations/{inst.id}"
            ),
            app_id=self.app_id,
            client_id=self.client_id,
            app_slug=self.slug,
            target_id=account.id,
            target_type=account.type,
            permissions=dict(inst.permissions),
            events=list(inst.events),
            created_at=inst.created_at,
            updated_at=inst.created_at,
            single_file_name=None,
            has_multiple_single_files=False,
            single_file_paths=[],
            suspended_at=inst.suspended_at,
            suspended_by=self._user_obj(inst.account) if inst.suspended_at else None,
        )
        return body

    def _label_obj(self, repo: _Repo, name: str) -> dict[str, Any]:
        ident = int(_fake_sha(repo.full_name, "label", name)[:8], 16)
        return {
            "id": ident,
            "node_id": _node_id("Label", ident),
            "url": f"{self.url}/repos/{repo.full_name}/labels/{name}",
            "name": name,
            "description": "",  # pull-request-simple does not allow null here
            "color": _fake_sha(name)[:6],
            "default": False,
            # Newer descriptions (githubkit's models) require these two.
            "archived_at": None,
            "archived_by": None,
        }

    def _pull_obj(self, repo: _Repo, pull: _Pull, *, full: bool) -> dict[str, Any]:
        api, web = f"{self.url}/repos/{repo.full_name}", f"{self.web_url}/{repo.full_name}"
        n = pull.number
        head_repo = self._repos[pull.head_repo.lower()]
        base_branch = repo.branches.get(pull.base_ref) or repo.branches[repo.default_branch]
        body = self._tpl("pull")
        links = {
            "self": f"{api}/pulls/{n}",
            "html": f"{web}/pull/{n}",
            "issue": f"{api}/issues/{n}",
            "comments": f"{api}/issues/{n}/comments",
            "review_comments": f"{api}/pulls/{n}/comments",
            "review_comment": f"{api}/pulls/comments{{/number}}",
            "commits": f"{api}/pulls/{n}/commits",
            "statuses": f"{api}/statuses/{pull.head_sha}",
        }
        merged_at = pull.closed_at if pull.merged else None
        body.update(
            url=links["self"],
            id=pull.id,
            node_id=_node_id("PullRequest", pull.id),
            html_url=links["html"],
            diff_url=f"{web}/pull/{n}.diff",
            patch_url=f"{web}/pull/{n}.patch",
            issue_url=links["issue"],
            commits_url=links["commits"],
            review_comments_url=links["review_comments"],
            review_comment_url=links["review_comment"],
            comments_url=links["comments"],
            statuses_url=links["statuses"],
            number=n,
            state=pull.state,
            locked=False,
            title=pull.title,
            user=self._user_obj(pull.author),
            body=pull.body,
            labels=[self._label_obj(repo, name) for name in pull.labels],
            milestone=None,
            active_lock_reason=None,
            created_at=pull.created_at,
            updated_at=pull.updated_at,
            closed_at=pull.closed_at,
            merged_at=merged_at,
            merge_commit_sha=_fake_sha("merge", pull.head_sha) if pull.merged else None,
            assignee=None,
            assignees=[],
            requested_reviewers=[],
            requested_teams=[],
            head={
                "label": f"{head_repo.owner}:{pull.head_ref}",
                "ref": pull.head_ref,
                "sha": pull.head_sha,
                "user": self._user_obj(head_repo.owner),
                "repo": self._repo_obj(head_repo),
            },
            base={
                "label": f"{repo.owner}:{pull.base_ref}",
                "ref": pull.base_ref,
                "sha": base_branch.sha,
                "user": self._user_obj(repo.owner),
                "repo": self._repo_obj(repo),
            },
            _links={k: {"href": v} for k, v in links.items()},
            author_association=self._association(repo, pull.author),
            auto_merge=None,
            draft=pull.draft,
        )
        full_only = {
            "merged": pull.merged,
            "mergeable": None if pull.state != "open" else True,
            "rebaseable": None if pull.state != "open" else True,
            "mergeable_state": "draft" if pull.draft else "clean",
            "merged_by": self._user_obj(pull.author) if pull.merged else None,
            "comments": sum(
                c.repo == repo.full_name and c.issue_number == n for c in self._comments.values()
            ),
            "review_comments": 0,
            "maintainer_can_modify": head_repo is not repo,
            "commits": 1,
            "additions": 1,
            "deletions": 0,
            "changed_files": 1,
        }
        for key, value in full_only.items():
            if full:
                body[key] = value
            else:
                body.pop(key, None)
        return self._prune(body, "pull-request" if full else "pull-request-simple")

    def _reaction_rollup(self, url: str, reactions: list[_Reaction]) -> dict[str, Any]:
        rollup: dict[str, Any] = {"url": url, "total_count": len(reactions)}
        for content in ("+1", "-1", "laugh", "confused", "heart", "hooray", "eyes", "rocket"):
            rollup[content] = sum(r.content == content for r in reactions)
        return rollup

    def _comment_obj(self, comment: _Comment) -> dict[str, Any]:
        repo = self._repo(comment.repo)
        api, web = f"{self.url}/repos/{repo.full_name}", f"{self.web_url}/{repo.full_name}"
        kind = "pull" if comment.issue_number in self._pulls[repo.full_name.lower()] else "issues"
        body = self._tpl("comment")
        body.update(
            id=comment.id,
            node_id=_node_id("IssueComment", comment.id),
            url=f"{api}/issues/comments/{comment.id}",
            html_url=f"{web}/{kind}/{comment.issue_number}#issuecomment-{comment.id}",
            body=comment.body,
            user=self._user_obj(comment.user),
            created_at=comment.created_at,
            updated_at=comment.updated_at,
            issue_url=f"{api}/issues/{comment.issue_number}",
            author_association="NONE" if comment.via_app else self._association(repo, comment.user),
            performed_via_github_app=self._app_obj() if comment.via_app else None,
            reactions=self._reaction_rollup(
                f"{api}/issues/comments/{comment.id}/reactions",
                self._reactions.get(comment.id, []),
            ),
        )
        return body

    def _reaction_obj(self, reaction: _Reaction) -> dict[str, Any]:
        body = self._tpl("reaction")
        body.update(
            id=reaction.id,
            node_id=_node_id("Reaction", reaction.id),
            user=self._user_obj(reaction.user),
            content=reaction.content,
            created_at=reaction.created_at,
        )
        return body

    def _deployment_obj(self, dep: _Deployment) -> dict[str, Any]:
        api = f"{self.url}/repos/{dep.repo}"
        body = self._tpl("deployment")
        body.update(
            url=f"{api}/deployments/{dep.id}",
            id=dep.id,
            node_id=_node_id("Deployment", dep.id),
            sha=dep.sha,
            ref=dep.ref,
            task=dep.task,
            payload=copy.deepcopy(dep.payload),
            original_environment=dep.original_environment,
            environment=dep.environment,
            description=dep.description,
            creator=self._user_obj(dep.creator),
            created_at=dep.created_at,
            updated_at=dep.updated_at,
            statuses_url=f"{api}/deployments/{dep.id}/statuses",
            repository_url=api,
            transient_environment=dep.transient,
            production_environment=dep.production,
            performed_via_github_app=self._app_obj() if dep.via_app else None,
        )
        return body

    def _deployment_status_obj(self, dep: _Deployment, st: _DeploymentStatus) -> dict[str, Any]:
        api = f"{self.url}/repos/{dep.repo}"
        body = self._tpl("deployment_status")
        body.update(
            url=f"{api}/deployments/{dep.id}/statuses/{st.id}",
            id=st.id,
            node_id=_node_id("DeploymentStatus", st.id),
            state=st.state,
            creator=self._user_obj(st.creator),
            description=st.description,
            environment=st.environment,
            target_url=st.target_url,
            created_at=st.created_at,
            updated_at=st.created_at,
            deployment_url=f"{api}/deployments/{dep.id}",
            repository_url=api,
            environment_url=st.environment_url,
            log_url=st.log_url,
            performed_via_github_app=self._app_obj() if st.via_app else None,
        )
        return body

    def _check_run_obj(self, run: _CheckRun) -> dict[str, Any]:
        api = f"{self.url}/repos/{run.repo}"
        body = self._tpl("check_run")
        body.update(
            id=run.id,
            head_sha=run.sha,
            node_id=_node_id("CheckRun", run.id),
            external_id="",
            url=f"{api}/check-runs/{run.id}",
            html_url=f"{self.web_url}/{run.repo}/runs/{run.id}",
            details_url=run.details_url,
            status=run.status,
            conclusion=run.conclusion,
            started_at=run.started_at,
            completed_at=run.completed_at,
            output={
                "title": run.title,
                "summary": run.summary,
                "text": None,
                "annotations_count": 0,
                "annotations_url": f"{api}/check-runs/{run.id}/annotations",
            },
            name=run.name,
            check_suite={"id": run.suite_id},
            app=self._app_obj(),
            pull_requests=[],
        )
        return body

    # ------------------------------------------------------------------ HTTP plumbing

    def _build_app(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        app_jwt = frozenset({"app"})
        inst = frozenset({"installation"})
        user = frozenset({"user"})
        writes = frozenset({"installation", "user"})
        reads = frozenset({"installation", "user", "none"})  # public repos are anonymous-readable
        anyone = frozenset({"none", "app", "installation", "user"})
        rp = "/repos/{owner}/{repo}"
        issues = ("issues", "pull_requests")
        # (method, GitHub path template, handler, who may call it, installation permission)
        table: list[tuple[str, str, Callable[[_Ctx], _Resp], frozenset[str], Any]] = [
            ("GET", "/app", self._h_get_app, app_jwt, None),
            (
                "POST",
                "/app/installations/{installation_id}/access_tokens",
                self._h_create_token,
                app_jwt,
                None,
            ),
            ("GET", f"{rp}/installation", self._h_repo_installation, app_jwt, None),
            (
                "GET",
                "/installation/repositories",
                self._h_installation_repos,
                inst,
                (("metadata",), "read"),
            ),
            ("GET", rp, self._h_get_repo, reads, (("metadata",), "read")),
            ("GET", f"{rp}/contents/{{path}}", self._h_contents, reads, (("contents",), "read")),
            ("GET", f"{rp}/tarball/{{ref}}", self._h_tarball, reads, (("contents",), "read")),
            ("GET", f"{rp}/pulls", self._h_list_pulls, reads, (("pull_requests",), "read")),
            (
                "GET",
                f"{rp}/pulls/{{pull_number}}",
                self._h_get_pull,
                reads,
                (("pull_requests",), "read"),
            ),
            (
                "GET",
                f"{rp}/issues/{{issue_number}}/comments",
                self._h_list_comments,
                reads,
                (issues, "read"),
            ),
            (
                "POST",
                f"{rp}/issues/{{issue_number}}/comments",
                self._h_create_comment,
                writes,
                (issues, "write"),
            ),
            (
                "PATCH",
                f"{rp}/issues/comments/{{comment_id}}",
                self._h_update_comment,
                writes,
                (issues, "write"),
            ),
            (
                "POST",
                f"{rp}/issues/comments/{{comment_id}}/reactions",
                self._h_comment_reaction,
                writes,
                (issues, "write"),
            ),
            (
                "POST",
                f"{rp}/issues/{{issue_number}}/reactions",
                self._h_issue_reaction,
                writes,
                (issues, "write"),
            ),
            (
                "GET",
                f"{rp}/deployments",
                self._h_list_deployments,
                reads,
                (("deployments",), "read"),
            ),
            (
                "POST",
                f"{rp}/deployments",
                self._h_create_deployment,
                writes,
                (("deployments",), "write"),
            ),
            (
                "GET",
                f"{rp}/deployments/{{deployment_id}}/statuses",
                self._h_list_deployment_statuses,
                reads,
                (("deployments",), "read"),
            ),
            (
                "POST",
                f"{rp}/deployments/{{deployment_id}}/statuses",
                self._h_create_deployment_status,
                writes,
                (("deployments",), "write"),
            ),
            (
                "DELETE",
                f"{rp}/deployments/{{deployment_id}}",
                self._h_delete_deployment,
                writes,
                (("deployments",), "write"),
            ),
            (
                "DELETE",
                f"{rp}/environments/{{environment_name}}",
                self._h_delete_environment,
                writes,
                (("administration",), "write"),
            ),
            ("POST", f"{rp}/check-runs", self._h_create_check_run, inst, (("checks",), "write")),
            (
                "PATCH",
                f"{rp}/check-runs/{{check_run_id}}",
                self._h_update_check_run,
                inst,
                (("checks",), "write"),
            ),
            (
                "GET",
                f"{rp}/commits/{{ref}}/check-runs",
                self._h_list_check_runs,
                reads,
                (("checks",), "read"),
            ),
            (
                "GET",
                f"{rp}/collaborators/{{username}}/permission",
                self._h_permission,
                reads,
                (("metadata",), "read"),
            ),
            (
                "GET",
                f"{rp}/commits/{{ref}}/check-suites",
                self._h_check_suites,
                reads,
                (("checks",), "read"),
            ),
            (
                "GET",
                f"{rp}/commits/{{ref}}/status",
                self._h_combined_status,
                reads,
                (("statuses",), "read"),
            ),
            (
                "GET",
                f"{rp}/git/ref/{{ref}}",
                self._h_git_ref,
                reads,
                (("contents",), "read"),
            ),
            (
                "POST",
                "/app-manifests/{code}/conversions",
                self._h_manifest_conversion,
                anyone,
                None,
            ),
            ("GET", "/user", self._h_get_user, user, None),
            ("GET", "/user/installations", self._h_user_installations, user, None),
            (
                "GET",
                "/user/installations/{installation_id}/repositories",
                self._h_user_installation_repos,
                user,
                None,
            ),
        ]
        # Starlette paths differ where a parameter may contain "/" (file path, git ref).
        starlette_path = {
            f"{rp}/contents/{{path}}": f"{rp}/contents/{{path:path}}",
            f"{rp}/commits/{{ref}}/check-suites": f"{rp}/commits/{{ref:path}}/check-suites",
            f"{rp}/commits/{{ref}}/check-runs": f"{rp}/commits/{{ref:path}}/check-runs",
            f"{rp}/commits/{{ref}}/status": f"{rp}/commits/{{ref:path}}/status",
            f"{rp}/git/ref/{{ref}}": f"{rp}/git/ref/{{ref:path}}",
            f"{rp}/tarball/{{ref}}": f"{rp}/tarball/{{ref:path}}",
        }
        routes = [
            _Route(
                method,
                starlette_path.get(template, template),
                template,
                auth,
                handler,
                permission,
                repo_scoped=template.startswith(rp) and auth != app_jwt,
            )
            for method, template, handler, auth, permission in table
        ]
        # The repository root listing: GET .../contents with no path.
        routes.append(
            _Route(
                "GET",
                f"{rp}/contents",
                f"{rp}/contents/{{path}}",
                reads,
                self._h_contents,
                (("contents",), "read"),
                repo_scoped=True,
            )
        )
        web_routes = [
            # codeload.github.com, where the tarball endpoint redirects: here on one server.
            _Route(
                "GET",
                "/_codeload/{owner}/{repo}/legacy.tar.gz/{ref:path}",
                None,
                anyone,
                self._h_codeload,
            ),
            _Route("GET", "/login/oauth/authorize", None, anyone, self._h_oauth_authorize),
            _Route("POST", "/login/oauth/access_token", None, anyone, self._h_oauth_token),
            _Route("POST", "/settings/apps/new", None, anyone, self._h_manifest_new),
            _Route(
                "POST",
                "/organizations/{org}/settings/apps/new",
                None,
                anyone,
                self._h_manifest_new,
            ),
        ]
        self._routes = routes + web_routes
        for route in self._routes:
            app.add_api_route(
                route.path, self._endpoint(route), methods=[route.method], include_in_schema=False
            )
        app.add_api_route(
            "/{rest:path}",
            self._unsupported,
            methods=["GET", "POST", "PATCH", "PUT", "DELETE"],
            include_in_schema=False,
        )
        return app

    def _endpoint(self, route: _Route) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await self._dispatch(request, route)

        endpoint.__name__ = f"{route.method.lower()}_{route.path}"
        return endpoint

    async def _unsupported(self, request: Request) -> Response:
        raw = await request.body()
        body = self._parse_body(request, raw)
        auth = self._authenticate(request)
        with self._lock:
            self._requests.append(
                RecordedRequest(time.monotonic(), request.method, request.url.path, body, auth.kind)
            )
            self._violations.append(
                Violation(
                    "unsupported",
                    request.method,
                    request.url.path,
                    "the fake GitHub does not implement this endpoint",
                )
            )
        return self._render(
            _Resp(404, {"message": "Not Found", "documentation_url": DOCS, "status": "404"}), auth
        )

    @staticmethod
    def _parse_body(request: Request, raw: bytes) -> Any:
        if not raw:
            return None
        ctype = request.headers.get("content-type", "")
        if "application/x-www-form-urlencoded" in ctype:
            return dict(parse_qsl(raw.decode(), keep_blank_values=True))
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    async def _dispatch(self, request: Request, route: _Route) -> Response:
        arrived = time.monotonic()
        raw = await request.body()
        body = self._parse_body(request, raw)
        auth = self._authenticate(request)
        with self._lock:
            try:
                return self._dispatch_locked(request, route, body, raw, auth, arrived)
            finally:
                self._handled_count += 1
                self._handled.notify_all()

    def _dispatch_locked(
        self, request: Request, route: _Route, body: Any, raw: bytes, auth: _Auth, arrived: float
    ) -> Response:
        path = request.url.path
        version = request.headers.get("x-github-api-version", schema.DEFAULT_API_VERSION)
        self._requests.append(RecordedRequest(arrived, request.method, path, body, auth.kind))
        fault, lost = self._take_fault(request.method, path), None
        if fault is not None and fault.status == _LOST:
            lost = self._error(_GitHubError(502, "Server Error"))
            fault, lost.headers = None, {"retry-after": "1"}  # retried soon, not in 30 s
        if fault is not None:
            return self._render(fault, auth)
        if version not in schema.api_versions():
            return self._render(
                self._error(
                    _GitHubError(400, f"The requested version {version!r} is not supported.")
                ),
                auth,
            )
        self._api_version = version
        try:
            resp = self._handle(request, route, body, raw, auth)
        except _GitHubError as err:
            resp = self._error(err)
        finally:
            self._api_version = schema.DEFAULT_API_VERSION
        if route.template is not None and resp.raw is None and resp.body is not None:
            try:
                schema.validate_response(
                    route.method, route.template, resp.status, resp.body, version
                )
            except schema.SchemaViolation as exc:
                self._violations.append(Violation("response", route.method, path, str(exc)))
        return self._render(lost or resp, auth, version)

    def _handle(self, request: Request, route: _Route, body: Any, raw: bytes, auth: _Auth) -> _Resp:
        if auth.kind == "invalid":
            raise _GitHubError(401, auth.error or "Bad credentials")
        anonymous_blocked = auth.kind == "none" and route.repo_scoped and not self.anonymous_reads
        if auth.kind not in route.auth or anonymous_blocked:
            if auth.kind == "none":
                raise _GitHubError(401, "Requires authentication")
            if route.auth == frozenset({"app"}):
                raise _GitHubError(401, "A JSON web token could not be decoded")
            raise _GitHubError(403, "Resource not accessible by integration")
        self._count_rate(auth)
        if raw and body is not None and isinstance(body, str) and route.template is not None:
            raise _GitHubError(400, "Problems parsing JSON")
        ctx = _Ctx(request, dict(request.path_params), dict(request.query_params), body, auth)
        # Like GitHub: access (404) and permissions (403) before body validation (422).
        if route.repo_scoped:
            repo = self._repos.get(f"{ctx.params['owner']}/{ctx.params['repo']}".lower())
            if repo is None or not self._accessible(auth, repo):
                raise _GitHubError(404, "Not Found")
        if route.permission is not None and auth.kind == "installation":
            scopes, level = route.permission
            granted = [auth.permissions.get(s, "none") for s in scopes]
            if not any(g != "none" and _level_at_least(g, level) for g in granted):
                raise _GitHubError(403, "Resource not accessible by integration")
        if route.template is not None:
            try:
                schema.validate_request(
                    route.method, route.template, body, ctx.query, self._api_version
                )
            except schema.SchemaViolation as exc:
                self._violations.append(
                    Violation("request", route.method, request.url.path, str(exc))
                )
                raise _GitHubError(422, f"Invalid request.\n\n{exc.detail}") from None
        return route.handler(ctx)

    def _authenticate(self, request: Request) -> _Auth:
        header = request.headers.get("authorization")
        if not header:
            return _Auth("none", key=f"ip:{request.client.host if request.client else '?'}")
        scheme, _, cred = header.partition(" ")
        cred = cred.strip()
        if scheme.lower() not in ("bearer", "token") or not cred:
            return _Auth("invalid", error="Bad credentials")
        if cred.count(".") == 2:
            return self._authenticate_jwt(cred)
        with self._lock:
            info = self._tokens.get(cred)
            if info is None or (info.expires_at is not None and info.expires_at < time.time()):
                return _Auth("invalid", error="Bad credentials")
            if info.kind == "installation":
                if info.installation_id not in self._installations:
                    return _Auth("invalid", error="Bad credentials")
                return _Auth(
                    "installation",
                    key=f"installation:{info.installation_id}",
                    installation_id=info.installation_id,
                    repos=info.repos,
                    permissions=info.permissions,
                )
            return _Auth("user", key=f"user:{info.login}", login=info.login)

    def _authenticate_jwt(self, token: str) -> _Auth:
        try:
            claims = jwt.decode(
                token,
                self._public_key,
                algorithms=["RS256"],
                options={"require": ["exp", "iat", "iss"], "verify_iss": False},
                leeway=60,
            )
        except jwt.ExpiredSignatureError:
            return _Auth(
                "invalid",
                error="'Expiration time' claim ('exp') must be a numeric value representing "
                "the future time at which the assertion expires",
            )
        except jwt.PyJWTError:
            return _Auth("invalid", error="A JSON web token could not be decoded")
        if str(claims["iss"]) not in (str(self.app_id), self.client_id):
            return _Auth("invalid", error="A JSON web token could not be decoded")
        if float(claims["exp"]) > time.time() + 600 + 60:
            return _Auth(
                "invalid", error="'Expiration time' claim ('exp') is too far in the future"
            )
        return _Auth("app", key=f"app:{self.app_id}")

    def _take_fault(self, method: str, path: str) -> _Resp | None:
        now = time.monotonic()
        target = f"{method} {path}"
        for fault in list(self._faults):
            if fault.until is not None and fault.until <= now:
                self._faults.remove(fault)
                continue
            if fault.match is not None and not fault.match.search(target):
                continue
            if fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    self._faults.remove(fault)
            if fault.after:
                return _Resp(_LOST, None)
            rid = uuid.uuid4().hex[:16].upper()
            if fault.secondary:
                headers = (
                    {"retry-after": str(fault.retry_after)} if fault.retry_after is not None else {}
                )
                return _Resp(
                    403,
                    {
                        "message": SECONDARY_RATE_LIMIT_MESSAGE.format(rid=rid),
                        "documentation_url": SECONDARY_RATE_LIMIT_DOCS,
                        "status": "403",
                    },
                    headers,
                )
            message = "Server Error" if fault.status >= 500 else "Injected fault"
            return _Resp(
                fault.status,
                {"message": message, "documentation_url": DOCS, "status": str(fault.status)},
            )
        return None

    def _count_rate(self, auth: _Auth) -> None:
        limit = 60 if auth.kind == "none" else self.rate_limit
        start, used = self._rate.get(auth.key, (time.time(), 0))
        if time.time() >= start + 3600:
            start, used = time.time(), 0
        if used >= limit:
            who = (
                f"installation ID {auth.installation_id}"
                if auth.kind == "installation"
                else f"user ID {self._user(auth.login).id}"
                if auth.login
                else "this client"
            )
            raise _GitHubError(403, f"API rate limit exceeded for {who}.")
        self._rate[auth.key] = (start, used + 1)

    def _rate_headers(self, auth: _Auth) -> dict[str, str]:
        limit = 60 if auth.kind == "none" else self.rate_limit
        start, used = self._rate.get(auth.key, (time.time(), 0))
        return {
            "x-ratelimit-limit": str(limit),
            "x-ratelimit-remaining": str(max(0, limit - used)),
            "x-ratelimit-reset": str(int(start + 3600)),
            "x-ratelimit-used": str(used),
            "x-ratelimit-resource": "core",
        }

    def _error(self, err: _GitHubError) -> _Resp:
        body: dict[str, Any] = {
            "message": err.message,
            "documentation_url": DOCS,
            "status": str(err.status),
        }
        if err.errors is not None:
            body["errors"] = err.errors
        return _Resp(err.status, body, err.headers)

    def _render(
        self, resp: _Resp, auth: _Auth, version: str = schema.DEFAULT_API_VERSION
    ) -> Response:
        with self._lock:
            headers = self._rate_headers(auth)
        headers.update(
            {
                "x-github-request-id": uuid.uuid4().hex[:20].upper(),
                "x-github-api-version-selected": version,
                "x-github-media-type": "github.v3; format=json",
            }
        )
        headers.update(resp.headers)
        if resp.raw is not None:
            content = resp.raw
        elif resp.body is None:
            content = b""
        else:
            content = json.dumps(resp.body).encode()
        if self.cache_headers and resp.status == 200 and content:
            headers.setdefault("cache-control", "private, max-age=60, s-maxage=60")
            headers.setdefault("etag", f'W/"{hashlib.sha256(content).hexdigest()}"')
            headers.setdefault("vary", "Accept, Authorization, Cookie, X-GitHub-OTP")
        media_type = resp.media_type if content else None
        return Response(content, status_code=resp.status, headers=headers, media_type=media_type)

    def _paginate(self, ctx: _Ctx, items: list[Any]) -> tuple[list[Any], dict[str, str]]:
        try:
            per_page = max(1, min(100, int(ctx.query.get("per_page", 30))))
            page = max(1, int(ctx.query.get("page", 1)))
        except ValueError:
            raise _GitHubError(400, "Invalid pagination parameters") from None
        last = max(1, math.ceil(len(items) / per_page))
        url = ctx.request.url

        def link(n: int) -> str:
            return str(url.include_query_params(per_page=per_page, page=n))

        rels = []
        if page < last:
            rels += [f'<{link(page + 1)}>; rel="next"', f'<{link(last)}>; rel="last"']
        if page > 1:
            rels += [f'<{link(page - 1)}>; rel="prev"', f'<{link(1)}>; rel="first"']
        headers = {"link": ", ".join(rels)} if rels else {}
        return items[(page - 1) * per_page : page * per_page], headers

    def _ctx_repo(self, ctx: _Ctx) -> _Repo:
        return self._repos[f"{ctx.params['owner']}/{ctx.params['repo']}".lower()]

    @staticmethod
    def _int_param(ctx: _Ctx, name: str) -> int:
        try:
            return int(ctx.params[name])
        except ValueError:
            raise _GitHubError(404, "Not Found") from None

    # ------------------------------------------------------------------ handlers: App

    def _h_get_app(self, ctx: _Ctx) -> _Resp:
        return _Resp(200, self._app_obj())

    def _h_create_token(self, ctx: _Ctx) -> _Resp:
        inst = self._installations.get(self._int_param(ctx, "installation_id"))
        if inst is None:
            raise _GitHubError(404, "Not Found")
        if inst.suspended_at is not None:
            raise _GitHubError(403, "This installation has been suspended")
        body = ctx.body or {}
        repos: list[_Repo] | None = None
        if body.get("repositories") or body.get("repository_ids"):
            names = {
                f"{inst.account}/{n}".lower() if "/" not in n else n.lower()
                for n in body.get("repositories", [])
            }
            ids = set(body.get("repository_ids", []))
            repos = [
                self._repos[n.lower()]
                for n in inst.repos
                if n.lower() in names or self._repos[n.lower()].id in ids
            ]
            if len(repos) != len(names) + len(ids):
                raise _GitHubError(
                    422,
                    "There is at least one repository that does not exist or is not "
                    "accessible to the parent installation.",
                )
        permissions = dict(inst.permissions)
        if body.get("permissions"):
            for scope, level in body["permissions"].items():
                have = inst.permissions.get(scope, "none")
                if have == "none" or not _level_at_least(have, level):
                    raise _GitHubError(
                        422, "The permissions requested are not granted to this installation."
                    )
            permissions = dict(body["permissions"])
        token = "ghs_" + secrets.token_urlsafe(27)[:36]
        expires = time.time() + 3600
        self._tokens[token] = _Token(
            "installation",
            expires,
            inst.id,
            repos=frozenset(r.full_name.lower() for r in repos) if repos is not None else None,
            permissions=permissions,
        )
        out = self._tpl("token")
        out.update(
            token=token,
            expires_at=_iso(expires),
            permissions=permissions,
            repository_selection="selected" if repos is not None else inst.repository_selection,
        )
        if repos is not None:
            out["repositories"] = [self._repo_obj(r) for r in repos]
        else:
            out.pop("repositories", None)
        return _Resp(201, out)

    def _h_repo_installation(self, ctx: _Ctx) -> _Resp:
        repo = self._repos.get(f"{ctx.params['owner']}/{ctx.params['repo']}".lower())
        inst_id = self._installation_for(repo.full_name) if repo else None
        if inst_id is None:
            raise _GitHubError(404, "Not Found")
        return _Resp(200, self._installation_obj(self._installations[inst_id]))

    def _h_installation_repos(self, ctx: _Ctx) -> _Resp:
        inst = self._installations[ctx.auth.installation_id or -1]
        repos = [
            self._repos[n.lower()]
            for n in inst.repos
            if ctx.auth.repos is None or n.lower() in ctx.auth.repos
        ]
        page, headers = self._paginate(ctx, repos)
        body = {
            "total_count": len(repos),
            "repositories": [self._repo_obj(r) for r in page],
            "repository_selection": inst.repository_selection,
        }
        return _Resp(200, body, headers)

    def _h_manifest_conversion(self, ctx: _Ctx) -> _Resp:
        code = ctx.params["code"]
        if code not in self._manifest_codes:
            raise _GitHubError(404, "Not Found")
        manifest = self._manifest_codes.pop(code) or {}
        if manifest.get("name"):
            self.name = manifest["name"]
        if manifest.get("default_permissions"):
            self.app_permissions = dict(manifest["default_permissions"])
        if manifest.get("default_events"):
            self.app_events = list(manifest["default_events"])
        body = self._tpl("manifest")
        body.update(self._app_obj())
        if manifest.get("url"):
            body["external_url"] = manifest["url"]
        if manifest.get("description") is not None:
            body["description"] = manifest["description"]
        body.update(
            client_id=self.client_id,
            client_secret=self.client_secret,
            webhook_secret=self.webhook_secret,
            pem=self.private_key_pem,
        )
        return _Resp(201, body)

    # ------------------------------------------------------------------ handlers: repos

    def _h_get_repo(self, ctx: _Ctx) -> _Resp:
        return _Resp(200, self._repo_obj(self._ctx_repo(ctx), ctx.auth.login))

    def _h_contents(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        path = ctx.params.get("path", "").strip("/")
        ref = ctx.query.get("ref") or repo.default_branch
        resolved = self._resolve_ref(repo, ref)
        if resolved is None or resolved[1] is None:
            raise _GitHubError(404, f"No commit found for the ref {ref}")
        branch = resolved[1]
        api, web = f"{self.url}/repos/{repo.full_name}", f"{self.web_url}/{repo.full_name}"
        accept = ctx.request.headers.get("accept", "")
        if path in branch.files:
            content = branch.files[path]
            if "application/vnd.github.raw" in accept:
                return _Resp(200, raw=content, media_type="application/vnd.github.raw")
            sha = _blob_sha(content)
            body = self._tpl("file")
            links = {
                "self": f"{api}/contents/{path}?ref={ref}",
                "git": f"{api}/git/blobs/{sha}",
                "html": f"{web}/blob/{ref}/{path}",
            }
            body.update(
                type="file",
                encoding="base64",
                size=len(content),
                name=path.rsplit("/", 1)[-1],
                path=path,
                content=_b64_wrapped(content),
                sha=sha,
                url=links["self"],
                git_url=links["git"],
                html_url=links["html"],
                download_url=f"{self.web_url}/raw/{repo.full_name}/{ref}/{path}",
                _links=links,
            )
            return _Resp(200, body)
        prefix = f"{path}/" if path else ""
        children: dict[str, bool] = {}  # name -> is_dir
        for file_path in branch.files:
            if file_path.startswith(prefix):
                rest = file_path[len(prefix) :]
                name, _, deeper = rest.partition("/")
                children[name] = children.get(name, False) or bool(deeper)
        if not children:
            raise _GitHubError(404, "Not Found")
        entries = []
        for name, is_dir in sorted(children.items()):
            child = f"{prefix}{name}"
            content = b"" if is_dir else branch.files[child]
            sha = _fake_sha(repo.full_name, ref, child) if is_dir else _blob_sha(content)
            kind = "trees" if is_dir else "blobs"
            links = {
                "self": f"{api}/contents/{child}?ref={ref}",
                "git": f"{api}/git/{kind}/{sha}",
                "html": f"{web}/{'tree' if is_dir else 'blob'}/{ref}/{child}",
            }
            entry = self._tpl("dir_entry")
            entry.update(
                type="dir" if is_dir else "file",
                size=0 if is_dir else len(content),
                name=name,
                path=child,
                sha=sha,
                url=links["self"],
                git_url=links["git"],
                html_url=links["html"],
                download_url=None
                if is_dir
                else f"{self.web_url}/raw/{repo.full_name}/{ref}/{child}",
                _links=links,
            )
            entries.append(entry)
        return _Resp(200, entries)

    def _real_commit(self, repo: _Repo, ref: str) -> tuple[str, str] | None:
        """(the SHA GitHub names, the real commit behind it), made from the fake's files the
        first time; None for a ref the fake does not know (GitHub: 404)."""
        key = repo.full_name.lower()
        if (key, ref) in self._git.real:
            return ref, self._git.real[(key, ref)]
        resolved = self._resolve_ref(repo, ref)
        if resolved is None or resolved[1] is None:
            return None
        sha, branch = resolved
        if (key, sha) not in self._git.real:
            self._git.real[(key, sha)] = self._git.commit(branch.files, f"fake {sha}")
        return sha, self._git.real[(key, sha)]

    def _h_tarball(self, ctx: _Ctx) -> _Resp:
        """302 to codeload, as GitHub answers; the token makes the link work without auth."""
        repo = self._ctx_repo(ctx)
        ref = ctx.params["ref"]
        if self._real_commit(repo, ref) is None:
            raise _GitHubError(404, "Not Found")
        token = secrets.token_urlsafe(16)
        self._codeload_tokens[token] = (repo.full_name.lower(), ref, time.time() + 300)
        location = f"{self.url}/_codeload/{repo.owner}/{repo.name}/legacy.tar.gz/{ref}"
        return _Resp(302, None, {"location": f"{location}?{urlencode({'token': token})}"})

    def _h_codeload(self, ctx: _Ctx) -> _Resp:
        token = ctx.query.get("token", "")
        found = self._codeload_tokens.pop(token, None)
        repo = self._repos.get(f"{ctx.params['owner']}/{ctx.params['repo']}".lower())
        ref = ctx.params["ref"]
        if found is None or repo is None or found[:2] != (repo.full_name.lower(), ref):
            return _Resp(404, raw=b"404: Not Found", media_type="text/plain; charset=utf-8")
        if found[2] < time.time():
            return _Resp(404, raw=b"404: Not Found", media_type="text/plain; charset=utf-8")
        real = self._real_commit(repo, ref)
        assert real is not None
        top = f"{repo.owner}-{repo.name}-{real[0][:7]}"
        return _Resp(
            200,
            raw=self._git.archive(real[1], top),
            headers={"content-disposition": f"attachment; filename={top}.tar.gz"},
            media_type="application/x-gzip",
        )

    def _h_list_pulls(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        state = ctx.query.get("state", "open")
        pulls = list(self._pulls[repo.full_name.lower()].values())
        if state != "all":
            pulls = [p for p in pulls if p.state == state]
        if "head" in ctx.query:
            owner, _, ref = ctx.query["head"].rpartition(":")
            pulls = [
                p
                for p in pulls
                if p.head_ref == ref
                and (not owner or self._repos[p.head_repo.lower()].owner.lower() == owner.lower())
            ]
        if "base" in ctx.query:
            pulls = [p for p in pulls if p.base_ref == ctx.query["base"]]
        sort = ctx.query.get("sort", "created")
        key_attr = {"created": "created_at", "updated": "updated_at"}.get(sort, "created_at")
        descending = ctx.query.get("direction", "desc") == "desc"
        pulls.sort(key=lambda p: (getattr(p, key_attr), p.number), reverse=descending)
        page, headers = self._paginate(ctx, pulls)
        return _Resp(200, [self._pull_obj(repo, p, full=False) for p in page], headers)

    def _h_get_pull(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        pull = self._pulls[repo.full_name.lower()].get(self._int_param(ctx, "pull_number"))
        if pull is None:
            raise _GitHubError(404, "Not Found")
        return _Resp(200, self._pull_obj(repo, pull, full=True))

    def _h_list_comments(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        number = self._int_param(ctx, "issue_number")
        self._issue_exists(repo, number)
        comments = [
            c
            for c in sorted(self._comments.values(), key=lambda c: c.id)
            if c.repo == repo.full_name and c.issue_number == number
        ]
        if "since" in ctx.query:
            comments = [c for c in comments if c.updated_at >= ctx.query["since"]]
        page, headers = self._paginate(ctx, comments)
        return _Resp(200, [self._comment_obj(c) for c in page], headers)

    def _h_create_comment(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        number = self._int_param(ctx, "issue_number")
        self._issue_exists(repo, number)
        user, via_app = self._actor(ctx.auth)
        now = _now()
        comment = _Comment(
            next(_ids), repo.full_name, number, ctx.body["body"], user, via_app, now, now
        )
        self._comments[comment.id] = comment
        body = self._comment_obj(comment)
        return _Resp(201, body, {"location": body["url"]})

    def _comment_in(self, ctx: _Ctx) -> _Comment:
        repo = self._ctx_repo(ctx)
        comment = self._comments.get(self._int_param(ctx, "comment_id"))
        if comment is None or comment.repo != repo.full_name:
            raise _GitHubError(404, "Not Found")
        return comment

    def _h_update_comment(self, ctx: _Ctx) -> _Resp:
        comment = self._comment_in(ctx)
        comment.body = ctx.body["body"]
        comment.updated_at = _now()
        return _Resp(200, self._comment_obj(comment))

    def _add_reaction(self, bucket: list[_Reaction], ctx: _Ctx) -> _Resp:
        user, _ = self._actor(ctx.auth)
        content = ctx.body["content"]
        for existing in bucket:
            if existing.user == user and existing.content == content:
                return _Resp(200, self._reaction_obj(existing))
        reaction = _Reaction(next(_ids), user, content, _now())
        bucket.append(reaction)
        return _Resp(201, self._reaction_obj(reaction))

    def _h_comment_reaction(self, ctx: _Ctx) -> _Resp:
        comment = self._comment_in(ctx)
        return self._add_reaction(self._reactions.setdefault(comment.id, []), ctx)

    def _h_issue_reaction(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        number = self._int_param(ctx, "issue_number")
        self._issue_exists(repo, number)
        return self._add_reaction(
            self._issue_reactions.setdefault((repo.full_name, number), []), ctx
        )

    def _h_list_deployments(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        deps = [d for d in self._deployments.values() if d.repo == repo.full_name]
        for name in ("sha", "ref", "task", "environment"):
            if name in ctx.query:
                deps = [d for d in deps if getattr(d, name) == ctx.query[name]]
        deps.sort(key=lambda d: d.id, reverse=True)
        page, headers = self._paginate(ctx, deps)
        return _Resp(200, [self._deployment_obj(d) for d in page], headers)

    def _failing_contexts(
        self, repo: _Repo, sha: str, required: list[str] | None
    ) -> list[dict[str, str]]:
        """Contexts that block a deployment, the way ``required_contexts`` is enforced."""
        contexts: dict[str, str] = {}
        if sha in repo.statuses:
            contexts.update(repo.statuses[sha][1])
        for index, (status, conclusion) in enumerate(repo.check_suites.get(sha, [])):
            ok = status == "completed" and conclusion in ("success", "neutral", "skipped")
            contexts[f"check-suite-{index + 1}"] = (
                "success" if ok else ("pending" if status != "completed" else "failure")
            )
        names = list(contexts) if required is None else required
        return [
            {"context": name, "state": contexts.get(name, "missing")}
            for name in names
            if contexts.get(name) != "success"
        ]

    def _h_create_deployment(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        body = ctx.body
        ref = body["ref"]
        resolved = self._resolve_ref(repo, ref)
        if resolved is None:
            raise _GitHubError(422, f"No ref found for: {ref}")
        sha = resolved[0]
        failing = self._failing_contexts(repo, sha, body.get("required_contexts"))
        if failing:
            raise _GitHubError(
                409,
                f"Conflict: Commit status checks failed for {ref}.",
                errors=[
                    {
                        "contexts": failing,
                        "resource": "Deployment",
                        "field": "required_contexts",
                        "code": "invalid",
                    }
                ],
            )
        environment = body.get("environment", "production")
        creator, via_app = self._actor(ctx.auth)
        now = _now()
        dep = _Deployment(
            id=next(_ids),
            repo=repo.full_name,
            sha=sha,
            ref=ref,
            task=body.get("task", "deploy"),
            payload=body.get("payload", {}),
            environment=environment,
            original_environment=environment,
            description=body.get("description"),
            creator=creator,
            via_app=via_app,
            transient=bool(body.get("transient_environment", False)),
            production=bool(body.get("production_environment", environment == "production")),
            created_at=now,
            updated_at=now,
        )
        self._deployments[dep.id] = dep
        out = self._deployment_obj(dep)
        return _Resp(201, out, {"location": out["url"]})

    def _deployment_in(self, ctx: _Ctx) -> _Deployment:
        repo = self._ctx_repo(ctx)
        dep = self._deployments.get(self._int_param(ctx, "deployment_id"))
        if dep is None or dep.repo != repo.full_name:
            raise _GitHubError(404, "Not Found")
        return dep

    def _h_list_deployment_statuses(self, ctx: _Ctx) -> _Resp:
        dep = self._deployment_in(ctx)
        statuses = list(reversed(dep.statuses))
        page, headers = self._paginate(ctx, statuses)
        return _Resp(200, [self._deployment_status_obj(dep, s) for s in page], headers)

    def _h_create_deployment_status(self, ctx: _Ctx) -> _Resp:
        dep = self._deployment_in(ctx)
        body = ctx.body
        creator, via_app = self._actor(ctx.auth)
        now = _now()
        if body.get("environment"):
            dep.environment = body["environment"]
        target_url = body.get("target_url", "")
        status = _DeploymentStatus(
            id=next(_ids),
            state=body["state"],
            creator=creator,
            via_app=via_app,
            description=body.get("description", ""),
            environment=dep.environment,
            target_url=target_url,
            log_url=body.get("log_url", target_url),
            environment_url=body.get("environment_url", ""),
            created_at=now,
        )
        dep.statuses.append(status)
        dep.updated_at = now
        if status.state == "success" and body.get("auto_inactive", True):
            # GitHub: prior non-transient, non-production deployments of the same
            # environment whose latest state is success get an "inactive" status.
            for other in self._deployments.values():
                if (
                    other.id < dep.id
                    and other.repo == dep.repo
                    and other.environment == dep.environment
                    and not other.transient
                    and not other.production
                    and other.statuses
                    and other.statuses[-1].state == "success"
                ):
                    other.statuses.append(
                        _DeploymentStatus(
                            next(_ids),
                            "inactive",
                            creator,
                            via_app,
                            "",
                            other.environment,
                            "",
                            "",
                            "",
                            now,
                        )
                    )
                    other.updated_at = now
        out = self._deployment_status_obj(dep, status)
        return _Resp(201, out, {"location": out["url"]})

    def _h_delete_deployment(self, ctx: _Ctx) -> _Resp:
        """GitHub deletes only inactive deployments, or the only one of its environment."""
        dep = self._deployment_in(ctx)
        active = not dep.statuses or dep.statuses[-1].state != "inactive"
        siblings = [
            d
            for d in self._deployments.values()
            if d.repo == dep.repo and d.environment == dep.environment and d.id != dep.id
        ]
        if active and siblings:
            raise _GitHubError(
                422,
                "We cannot delete an active deployment unless it is the only deployment in a"
                " given environment.",
            )
        del self._deployments[dep.id]
        return _Resp(204)

    def _h_delete_environment(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        self.deleted_environments.append((repo.full_name, ctx.params["environment_name"]))
        return _Resp(204)

    def _suite_id(self, repo: str, sha: str) -> int:
        """The App's own check suite on a commit: GitHub groups its check runs there."""
        return int(_fake_sha(repo, sha, "app", self.app_id)[:8], 16)

    @staticmethod
    def _check_state(run: _CheckRun, body: Mapping[str, Any]) -> None:
        if "status" in body:
            run.status = body["status"]
        if body.get("conclusion"):
            run.conclusion, run.status = body["conclusion"], "completed"
        if run.status == "completed" and not run.conclusion:
            raise _GitHubError(422, "Invalid request.\n\nconclusion is required when completed.")
        if run.status != "completed":
            run.conclusion = None
        output = body.get("output")
        if isinstance(output, Mapping):
            run.title = str(output.get("title", run.title))
            run.summary = str(output.get("summary", run.summary))
        if "details_url" in body:
            run.details_url = body["details_url"]
        run.completed_at = _now() if run.status == "completed" else None

    def _h_create_check_run(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        body = ctx.body
        sha = body["head_sha"]
        if self._resolve_ref(repo, sha) is None and not _SHA_RE.fullmatch(sha):
            raise _GitHubError(422, "No commit found for SHA: " + sha)
        run = _CheckRun(
            id=next(_ids),
            repo=repo.full_name,
            sha=sha,
            name=body["name"],
            status="queued",
            conclusion=None,
            title="",
            summary="",
            details_url=None,
            suite_id=self._suite_id(repo.full_name, sha),
            started_at=_now(),
        )
        self._check_state(run, body)
        self._check_runs[run.id] = run
        return _Resp(201, self._check_run_obj(run))

    def _h_update_check_run(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        run = self._check_runs.get(self._int_param(ctx, "check_run_id"))
        if run is None or run.repo != repo.full_name:
            raise _GitHubError(404, "Not Found")
        self._check_state(run, ctx.body)
        return _Resp(200, self._check_run_obj(run))

    def _h_list_check_runs(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        sha = self._commit_sha(repo, ctx.params["ref"])
        runs = [r for r in self._check_runs.values() if r.repo == repo.full_name and r.sha == sha]
        if "check_name" in ctx.query:
            runs = [r for r in runs if r.name == ctx.query["check_name"]]
        runs.sort(key=lambda r: r.id, reverse=True)
        page, headers = self._paginate(ctx, runs)
        body = {"total_count": len(runs), "check_runs": [self._check_run_obj(r) for r in page]}
        return _Resp(200, body, headers)

    def _app_suite(self, repo: _Repo, sha: str) -> dict[str, Any] | None:
        """The App's check suite on ``sha``, its state rolled up from its check runs."""
        runs = [r for r in self._check_runs.values() if r.repo == repo.full_name and r.sha == sha]
        if not runs:
            return None
        latest: dict[str, _CheckRun] = {}
        for run in sorted(runs, key=lambda r: r.id):
            latest[run.name] = run
        states = [r.status for r in latest.values()]
        conclusions = {r.conclusion for r in latest.values()}
        if "in_progress" in states:
            status, conclusion = "in_progress", None
        elif "queued" in states:
            status, conclusion = "queued", None
        else:
            status = "completed"
            conclusion = next(
                (c for c in ("failure", "cancelled", "success") if c in conclusions), "neutral"
            )
        ident = self._suite_id(repo.full_name, sha)
        return {"id": ident, "status": status, "conclusion": conclusion, "count": len(latest)}

    def _h_permission(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        login = ctx.params["username"]
        if login.lower() not in self._users:
            raise _GitHubError(404, "Not Found")
        role = self._permission(repo, login)
        permission = {"maintain": "write", "triage": "read"}.get(role, role)
        user = self._user_obj(login)
        user["permissions"] = {
            "admin": _level_at_least(role, "admin"),
            "maintain": _level_at_least(role, "maintain"),
            "push": _level_at_least(role, "write"),
            "triage": _level_at_least(role, "triage"),
            "pull": _level_at_least(role, "read"),
        }
        user["role_name"] = role
        return _Resp(200, {"permission": permission, "role_name": role, "user": user})

    def _commit_sha(self, repo: _Repo, ref: str) -> str:
        resolved = self._resolve_ref(repo, ref)
        if resolved is None:
            raise _GitHubError(422, f"No commit found for SHA: {ref}")
        return resolved[0]

    def _h_git_ref(self, ctx: _Ctx) -> _Resp:
        """``GET .../git/ref/heads/<branch>``: the commit a branch points at."""
        repo = self._ctx_repo(ctx)
        ref = ctx.params["ref"]
        branch = repo.branches.get(ref.removeprefix("heads/")) if ref.startswith("heads/") else None
        if branch is None:
            raise _GitHubError(404, "Not Found")
        api = f"{self.url}/repos/{repo.full_name}"
        return _Resp(
            200,
            {
                "ref": f"refs/{ref}",
                "node_id": "MDM6UmVmcmVmcy9oZWFkcy9tYWlu",
                "url": f"{api}/git/refs/{ref}",
                "object": {
                    "type": "commit",
                    "sha": branch.sha,
                    "url": f"{api}/git/commits/{branch.sha}",
                },
            },
        )

    def _h_check_suites(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        sha = self._commit_sha(repo, ctx.params["ref"])
        api = f"{self.url}/repos/{repo.full_name}"
        suites = []
        rows: list[tuple[str, str | None, int | None, int]] = [
            (status, conclusion, None, 1) for status, conclusion in repo.check_suites.get(sha, [])
        ]
        own = self._app_suite(repo, sha)
        if own is not None:
            rows.append((own["status"], own["conclusion"], own["id"], own["count"]))
        for index, (status, conclusion, own_id, count) in enumerate(rows):
            ident = own_id or int(_fake_sha(repo.full_name, sha, index)[:8], 16)
            # The suite's app is a third-party CI app from the example; keep it, but
            # point its URLs at the fake. runbot's own suite is the App's.
            suite = _rebase(
                self._tpl("check_suite"),
                [("https://api.github.com", self.url), ("https://github.com", self.web_url)],
            )
            head_commit = suite.get("head_commit") or {}
            head_commit.update(id=sha, tree_id=_fake_sha("tree", sha))
            suite.update(
                id=ident,
                node_id=_node_id("CheckSuite", ident),
                head_branch=None,
                head_sha=sha,
                status=status,
                conclusion=conclusion,
                url=f"{api}/check-suites/{ident}",
                before=None,
                after=sha,
                pull_requests=[],
                repository=self._repo_obj(repo),
                check_runs_url=f"{api}/check-suites/{ident}/check-runs",
                head_commit=head_commit,
                latest_check_runs_count=count,
            )
            if own_id is not None:
                suite["app"] = self._app_obj()
            suites.append(suite)
        if "app_id" in ctx.query:
            suites = [
                s for s in suites if str((s.get("app") or {}).get("id")) == ctx.query["app_id"]
            ]
        page, headers = self._paginate(ctx, suites)
        return _Resp(200, {"total_count": len(suites), "check_suites": page}, headers)

    def _h_combined_status(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        ref = ctx.params["ref"]
        resolved = self._resolve_ref(repo, ref)
        if resolved is None:
            raise _GitHubError(404, f"No commit found for SHA: {ref}")
        sha = resolved[0]
        api = f"{self.url}/repos/{repo.full_name}"
        state, contexts = repo.statuses.get(sha, ("pending", {}))
        body = self._tpl("combined")
        statuses = []
        for context, ctx_state in contexts.items():
            ident = int(_fake_sha(repo.full_name, sha, context)[:8], 16)
            item = copy.deepcopy(self._templates["combined"]["statuses"][0])
            item.update(
                url=f"{api}/statuses/{sha}",
                id=ident,
                node_id=_node_id("StatusContext", ident),
                state=ctx_state,
                description=f"{context} is {ctx_state}",
                target_url=None,
                context=context,
                avatar_url=None,
                created_at=_now(),
                updated_at=_now(),
            )
            statuses.append(item)
        body.update(
            state=state,
            statuses=statuses,
            sha=sha,
            total_count=len(statuses),
            repository=self._repo_obj(repo),
            commit_url=f"{api}/commits/{sha}",
            url=f"{api}/commits/{sha}/status",
        )
        return _Resp(200, body)

    # ------------------------------------------------------------------ handlers: users / OAuth

    def _h_get_user(self, ctx: _Ctx) -> _Resp:
        login = ctx.auth.login or ""
        user = self._user(login)
        body = self._tpl("private_user")
        body.update(self._user_obj(login))
        body.update(
            name=user.name,
            email=user.email,
            company=None,
            blog="",
            location=None,
            hireable=None,
            bio=None,
            twitter_username=None,
            created_at=self._app_created_at,
            updated_at=self._app_created_at,
            user_view_type="private",
        )
        return _Resp(200, body)

    def _h_user_installations(self, ctx: _Ctx) -> _Resp:
        installs = self._visible_installations(ctx.auth.login or "")
        page, headers = self._paginate(ctx, installs)
        return _Resp(
            200,
            {
                "total_count": len(installs),
                "installations": [self._installation_obj(i) for i in page],
            },
            headers,
        )

    def _h_user_installation_repos(self, ctx: _Ctx) -> _Resp:
        login = ctx.auth.login or ""
        inst = self._installations.get(self._int_param(ctx, "installation_id"))
        if inst is None or inst not in self._visible_installations(login):
            raise _GitHubError(404, "Not Found")
        repos = self._visible_repos(login, inst)
        page, headers = self._paginate(ctx, repos)
        return _Resp(
            200,
            {
                "total_count": len(repos),
                "repository_selection": inst.repository_selection,
                "repositories": [self._repo_obj(r, login) for r in page],
            },
            headers,
        )

    def _h_oauth_authorize(self, ctx: _Ctx) -> _Resp:
        query = ctx.query
        if query.get("client_id") != self.client_id:
            return _Resp(404, raw=b"Not Found", media_type="text/plain")
        redirect_uri = query.get("redirect_uri") or self.oauth_callback_url
        if not redirect_uri:
            return _Resp(400, raw=b"redirect_uri is required", media_type="text/plain")
        params: dict[str, str] = {}
        if self.oauth_deny:
            params.update(
                error="access_denied",
                error_description="The user has denied your application access.",
                error_uri="https://docs.github.com/apps/troubleshooting-authorization-request-errors/#access-denied",
            )
        else:
            code = secrets.token_hex(10)
            self._user(self.oauth_login)
            self._oauth_codes[code] = (
                self.oauth_login,
                query.get("redirect_uri"),
                time.time() + 600,
            )
            params["code"] = code
        if "state" in query:
            params["state"] = query["state"]
        sep = "&" if "?" in redirect_uri else "?"
        return _Resp(302, headers={"location": f"{redirect_uri}{sep}{urlencode(params)}"})

    def _h_oauth_token(self, ctx: _Ctx) -> _Resp:
        fields: dict[str, str] = dict(ctx.query)
        if isinstance(ctx.body, dict):
            fields.update({k: str(v) for k, v in ctx.body.items() if v is not None})
        accept_json = "json" in ctx.request.headers.get("accept", "")

        def answer(data: Mapping[str, Any]) -> _Resp:
            if accept_json:
                return _Resp(200, dict(data))
            return _Resp(
                200,
                raw=urlencode({k: str(v) for k, v in data.items()}).encode(),
                media_type="application/x-www-form-urlencoded; charset=utf-8",
            )

        def oauth_error(code: str, description: str) -> _Resp:
            return answer(
                {
                    "error": code,
                    "error_description": description,
                    "error_uri": "https://docs.github.com/apps/managing-oauth-apps/"
                    "troubleshooting-oauth-app-access-token-request-errors",
                }
            )

        if fields.get("client_id") != self.client_id or (
            fields.get("client_secret") != self.client_secret
        ):
            return oauth_error(
                "incorrect_client_credentials",
                "The client_id and/or client_secret passed are incorrect.",
            )
        if fields.get("grant_type") == "refresh_token":
            login = self._refresh_tokens.pop(fields.get("refresh_token", ""), None)
            if login is None:
                return oauth_error(
                    "bad_refresh_token", "The refresh token passed is incorrect or expired."
                )
        else:
            entry = self._oauth_codes.pop(fields.get("code", ""), None)
            if entry is None or entry[2] < time.time():
                return oauth_error(
                    "bad_verification_code", "The code passed is incorrect or expired."
                )
            login, redirect_uri, _ = entry
            if (
                redirect_uri
                and fields.get("redirect_uri")
                and fields["redirect_uri"] != redirect_uri
            ):
                return oauth_error(
                    "redirect_uri_mismatch",
                    "The redirect_uri MUST match the registered callback URL for this application.",
                )
        token = "ghu_" + secrets.token_urlsafe(27)[:36]
        data: dict[str, Any] = {"access_token": token, "token_type": "bearer", "scope": ""}
        if self.oauth_token_expiry is None:
            self._tokens[token] = _Token("user", None, login=login)
        else:
            self._tokens[token] = _Token("user", time.time() + self.oauth_token_expiry, login=login)
            refresh = "ghr_" + secrets.token_urlsafe(57)[:76]
            self._refresh_tokens[refresh] = login
            data.update(
                expires_in=self.oauth_token_expiry,
                refresh_token=refresh,
                refresh_token_expires_in=15_811_200,
            )
        return answer(data)

    def _h_manifest_new(self, ctx: _Ctx) -> _Resp:
        fields = dict(ctx.body) if isinstance(ctx.body, dict) else {}
        try:
            manifest = json.loads(fields.get("manifest", ""))
        except ValueError:
            return _Resp(422, raw=b"Invalid manifest", media_type="text/plain")
        if not isinstance(manifest, dict) or not manifest.get("url"):
            return _Resp(422, raw=b"Manifest is missing the required url", media_type="text/plain")
        state = ctx.query.get("state") or fields.get("state")
        self.manifests.append({"manifest": manifest, "state": state, "org": ctx.params.get("org")})
        code = secrets.token_hex(10)
        self._manifest_codes[code] = manifest
        redirect = manifest.get("redirect_url")
        if not redirect:
            return _Resp(200, raw=f"App created; code={code}".encode(), media_type="text/plain")
        params = {"code": code, **({"state": state} if state else {})}
        sep = "&" if "?" in redirect else "?"
        return _Resp(302, headers={"location": f"{redirect}{sep}{urlencode(params)}"})
