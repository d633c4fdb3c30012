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

The class is a facade: its state lives here, and its behaviour in one mixin per
domain (``seeding``, ``faults``, ``routes``, ``dispatch``, ``auth``, ``issues``,
``deployments``, ``checks``, ``repos``, ...); the records are in ``state``.
"""

from __future__ import annotations

import fnmatch
import secrets
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI

from . import schema
from .auth import AppAuth
from .bodies import Bodies
from .checks import Checks
from .deployments import Deployments
from .dispatch import Dispatch
from .events import Events
from .faults import Faults
from .gitbacking import BackingGit
from .ids import _app_ids, _now
from .issues import Issues
from .lookups import Lookups
from .repos import Repos
from .routes import Routes
from .seeding import Seeding
from .state import (
    DEFAULT_EVENTS,
    DEFAULT_INSTALLATION_PERMISSIONS,
    RecordedRequest,
    Violation,
    _CheckRun,
    _Comment,
    _Deployment,
    _Fault,
    _Installation,
    _Issue,
    _Pull,
    _Reaction,
    _Repo,
    _Route,
    _Token,
    _User,
)
from .webflows import WebFlows

__all__ = ["FakeGitHub", "RecordedRequest", "Violation"]


class FakeGitHub(
    Lookups,
    Seeding,
    Faults,
    Events,
    Bodies,
    Routes,
    Dispatch,
    AppAuth,
    WebFlows,
    Repos,
    Issues,
    Deployments,
    Checks,
):
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
