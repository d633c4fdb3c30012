"""Who is asking, and what may they do: sessions, GitHub sign-in, the API token, CSRF.

A person sees the environments of repositories they can read through the App's installations.
What they may do there is decided by the comment commands' own rule (`access.rules.
authorize`, fed with the role GitHub reports): write by default (RUNBOT_COMMAND_PERMISSION), and
a PR's author may extend, destroy, sleep and wake its environment. What GitHub says is cached
per session for a few minutes, so a page view costs no GitHub call.

Principals:
- `user`: signed in with GitHub (the App's OAuth client). Logins in RUNBOT_ADMINS are operators.
- `token`: `Authorization: Bearer <RUNBOT_API_TOKEN>`, for automation; an operator.
- `local`: local mode with no OAuth client configured: the dashboard is open, but only to
  loopback clients (no proxy headers), and says so; an operator.
- `anonymous`: nobody; sees nothing.

Sessions are cookies signed with itsdangerous; the user's GitHub token inside is additionally
encrypted (Fernet), so the browser never holds a usable GitHub credential. Every session,
anonymous ones too, carries a CSRF token that every state-changing request must echo, from a
page of RUNBOT_PUBLIC_URL's origin. RUNBOT_SESSION_SECRET may list several secrets, newest
first: the newest signs, all verify. Signing out records the session's id (`RevokedSession`),
so a copy of the cookie signs no one in afterwards, on any replica.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import httpx
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from starlette.concurrency import run_in_threadpool

from app.access.roles import Role, role_from_listing
from app.db.models import RevokedSession, table_of, utcnow
from app.db.session import Database
from app.github.gateway import Gateway, GitHubError
from app.settings import Settings
from app.web.surface import LOOPBACK_NAMES

log = logging.getLogger("runbot.web.auth")

SESSION_COOKIE = "runbot_session"
OAUTH_COOKIE = "runbot_oauth"
SESSION_MAX_AGE = 8 * 3600  # GitHub App user tokens live 8 hours
OAUTH_MAX_AGE = 600
GRANT_TTL = 300.0  # seconds a user's repositories and permissions are trusted without asking
MAX_PAGES = 50

Kind = Literal["anonymous", "local", "token", "user"]


class AuthError(Exception):
    """The request may not proceed; `status` is 401 (who are you), 403 (not you) or 503."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Session:
    sid: str
    csrf: str
    login: str | None = None
    token: str | None = None  # encrypted GitHub user token


def new_session() -> Session:
    return Session(sid=secrets.token_urlsafe(16), csrf=secrets.token_urlsafe(24))


@dataclass(frozen=True)
class Principal:
    kind: Kind
    login: str | None = None
    readable: frozenset[str] | None = None  # lower-case owner/name; None: every repository
    admin: bool = False
    session: Session | None = None

    @property
    def operator(self) -> bool:
        """May see and do everything, silos included."""
        return self.kind in ("local", "token") or self.admin

    @property
    def member(self) -> bool:
        """Has access to at least one repository runbot serves (silos are visible to members)."""
        return self.operator or bool(self.readable)

    def can_read(self, repository: str) -> bool:
        if self.kind == "anonymous":
            return False
        return self.readable is None or repository.lower() in self.readable

    def trigger(self, via: str) -> str:
        """How runs and comments name this principal: `dashboard:alice`, `api`, ..."""
        return f"{via}:{self.login}"[:40] if self.login else via


@dataclass
class Grant:
    readable: frozenset[str]
    listed_roles: dict[str, Role]  # from the user's own repository listing (local mode)
    expires: float
    roles: dict[str, tuple[float, Role]] = field(default_factory=dict)


def session_secrets(settings: Settings) -> tuple[str, ...]:
    """RUNBOT_SESSION_SECRET's secrets, newest first, or one generated once in the data dir."""
    if settings.session_secrets:
        return settings.session_secrets
    path = settings.data_dir / "session-secret"
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return (path.read_text().strip(),)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return (path.read_text().strip(),)


def signer(settings: Settings, salt: str) -> URLSafeTimedSerializer:
    """Signs with the newest session secret and verifies with any (itsdangerous wants the
    newest last)."""
    return URLSafeTimedSerializer(list(reversed(session_secrets(settings))), salt=salt)


def bearer_ok(header: str | None, token: str) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time."""
    scheme, _, credential = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        credential.strip().encode(), token.encode()
    )


def same_origins(public_url: str) -> frozenset[str]:
    """The origins a state-changing request may come from: RUNBOT_PUBLIC_URL's. When that is a
    loopback address, the other loopback names for the same port are the same server."""
    parts = urlsplit(public_url)
    origins = {f"{parts.scheme}://{parts.netloc}"}
    if parts.hostname in LOOPBACK_NAMES:
        port = f":{parts.port}" if parts.port else ""
        origins |= {
            f"{parts.scheme}://{name}{port}" for name in ("localhost", "127.0.0.1", "[::1]")
        }
    return frozenset(origins)


def is_loopback(request: Request) -> bool:
    """A direct loopback client; anything relayed by a proxy is treated as remote."""
    if any(h in request.headers for h in ("forwarded", "x-forwarded-for", "x-real-ip")):
        return False
    host = request.client.host if request.client else ""
    return host == "::1" or host.startswith("127.")


def safe_next(target: str | None) -> str:
    """Only same-site paths: an open redirect would turn sign-in into a phishing tool."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


class Authenticator:
    def __init__(
        self,
        settings: Settings,
        gateway: Callable[[], Gateway | None],
        db: Database | None = None,
    ) -> None:
        self.settings = settings
        self.gateway = gateway
        self.db = db  # where signed-out sessions are recorded; None: in this process only
        self._signer = signer(settings, "runbot-session")
        self._oauth_signer = signer(settings, "runbot-oauth-state")
        self._fernet = MultiFernet(
            [
                Fernet(
                    base64.urlsafe_b64encode(
                        hashlib.sha256(b"runbot-user-token:" + s.encode()).digest()
                    )
                )
                for s in session_secrets(settings)
            ]
        )
        self._revoked: dict[str, float] = {}  # sid -> monotonic expiry, this process's
        self.origins = same_origins(settings.public_url)
        self._grants: dict[str, Grant] = {}
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(15.0, connect=5.0), headers={"User-Agent": "runbot"}
        )
        self.secure_cookies = settings.public_url.startswith("https://")

    # ----- configuration ---------------------------------------------------------------------

    @property
    def oauth_enabled(self) -> bool:
        return bool(self.settings.github_client_id and self.settings.github_client_secret)

    @property
    def open_local(self) -> bool:
        """Local mode without sign-in: open to loopback clients only."""
        return self.settings.local_mode and not self.oauth_enabled

    @property
    def redirect_uri(self) -> str:
        return f"{self.settings.public_url}/auth/github/callback"

    # ----- cookies ---------------------------------------------------------------------------

    def read_session(self, request: Request) -> Session | None:
        raw = request.cookies.get(SESSION_COOKIE)
        if not raw:
            return None
        try:
            data = self._signer.loads(raw, max_age=SESSION_MAX_AGE)
            return Session(**data)
        except (BadSignature, TypeError, ValueError):
            return None

    def write_session(self, response: Response, session: Session) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            self._signer.dumps(session.__dict__),
            max_age=SESSION_MAX_AGE,
            httponly=True,
            samesite="lax",
            secure=self.secure_cookies,
        )

    def session_for(self, request: Request) -> tuple[Session, bool]:
        """The request's session, or a fresh anonymous one (True: the cookie must be set)."""
        session = self.read_session(request)
        return (session, False) if session is not None else (new_session(), True)

    # ----- who is asking ---------------------------------------------------------------------

    async def principal(self, request: Request, session: Session | None = None) -> Principal:
        header = request.headers.get("authorization")
        if header:
            token = self.settings.api_token
            if token and bearer_ok(header, token):
                return Principal("token")
            raise AuthError(401, "the bearer token is not RUNBOT_API_TOKEN")
        session = session or self.read_session(request)
        if self.open_local:
            if not is_loopback(request):
                raise AuthError(
                    403,
                    "runbot is in local mode without GitHub sign-in, so the dashboard is open to"
                    " this machine (loopback) only. Set RUNBOT_GITHUB_CLIENT_ID and"
                    " RUNBOT_GITHUB_CLIENT_SECRET to serve it to others.",
                )
            return Principal("local", session=session)
        if session is None or not session.login or not session.token:
            return Principal("anonymous", session=session)
        if await self.revoked(session):
            return Principal("anonymous")
        grant = await self._grant(session)
        return Principal(
            "user",
            login=session.login,
            readable=None if self._is_admin(session.login) else grant.readable,
            admin=self._is_admin(session.login),
            session=session,
        )

    def _is_admin(self, login: str) -> bool:
        return login.lower() in self.settings.admin_logins

    async def role(
        self, principal: Principal, repository: str, installation_id: int | None
    ) -> Role:
        """The principal's GitHub role on the repository (admin for operators)."""
        if principal.operator:
            return Role.ADMIN
        if principal.kind != "user" or principal.session is None:
            return Role.NONE
        if not principal.can_read(repository):
            return Role.NONE
        grant = await self._grant(principal.session)
        key = repository.lower()
        cached = grant.roles.get(key)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        gateway = self.gateway()
        if gateway is not None and not gateway.local:
            try:
                role = await gateway.permission(installation_id, repository, principal.login or "")
            except GitHubError as exc:
                raise AuthError(503, f"could not check your permission on GitHub: {exc}") from exc
        else:
            role = grant.listed_roles.get(key, Role.NONE)
        grant.roles[key] = (time.monotonic() + GRANT_TTL, role)
        return role

    async def _grant(self, session: Session) -> Grant:
        grant = self._grants.get(session.sid)
        if grant is not None and grant.expires > time.monotonic():
            return grant
        token = self._decrypt(session.token)
        readable: set[str] = set()
        roles: dict[str, Role] = {}
        installations = await self._github_pages(token, "/user/installations", "installations")
        for installation in installations:
            repos = await self._github_pages(
                token, f"/user/installations/{installation['id']}/repositories", "repositories"
            )
            for repo in repos:
                name = str(repo.get("full_name", "")).lower()
                readable.add(name)
                roles[name] = role_from_listing(repo.get("permissions") or {})
        grant = Grant(frozenset(readable), roles, time.monotonic() + GRANT_TTL)
        if len(self._grants) > 10_000:  # forget abandoned sessions
            now = time.monotonic()
            self._grants = {k: g for k, g in self._grants.items() if g.expires > now}
        self._grants[session.sid] = grant
        return grant

    def forget(self, session: Session | None) -> None:
        if session is not None:
            self._grants.pop(session.sid, None)

    # ----- revocation --------------------------------------------------------------------------

    async def revoke(self, session: Session) -> None:
        """Sign the session out everywhere: its cookie, and every copy of it, stops working."""
        self.forget(session)
        now = time.monotonic()
        self._revoked = {sid: until for sid, until in self._revoked.items() if until > now}
        self._revoked[session.sid] = now + SESSION_MAX_AGE
        if self.db is not None:
            await run_in_threadpool(self._record_revoked, self.db, session.sid)

    async def revoked(self, session: Session) -> bool:
        until = self._revoked.get(session.sid)
        if until is not None and until > time.monotonic():
            return True
        if self.db is None:
            return False
        return await run_in_threadpool(self._is_recorded, self.db, session.sid)

    @staticmethod
    def _record_revoked(db: Database, sid: str) -> None:
        table = table_of(RevokedSession)
        dialect = postgresql if db.is_postgres else sqlite
        now = utcnow()
        with db.engine.begin() as connection:
            connection.execute(delete(table).where(table.c.expires_at < now))
            connection.execute(
                dialect.insert(table)
                .values(sid=sid, expires_at=now + timedelta(seconds=SESSION_MAX_AGE))
                .on_conflict_do_nothing(index_elements=["sid"])
            )

    @staticmethod
    def _is_recorded(db: Database, sid: str) -> bool:
        with db.session() as session:
            return session.get(RevokedSession, sid) is not None

    def _decrypt(self, token: str | None) -> str:
        try:
            return self._fernet.decrypt((token or "").encode()).decode()
        except InvalidToken:
            raise AuthError(401, "your session is no longer valid; sign in again") from None

    async def _github(
        self,
        method: str,
        url: str,
        token: str | None,
        accept: str = "application/vnd.github+json",
        **kw: Any,
    ) -> httpx.Response:
        headers = {"Accept": accept}
        if token:
            headers["Authorization"] = f"Bearer {token}"
            headers["X-GitHub-Api-Version"] = self.settings.github_api_version
        try:
            response = await self.http.request(method, url, headers=headers, **kw)
        except httpx.HTTPError as exc:
            raise AuthError(503, f"GitHub could not be reached ({type(exc).__name__})") from exc
        if response.status_code == 401:
            raise AuthError(401, "your GitHub sign-in has expired; sign in again")
        if response.status_code >= 400:
            raise AuthError(
                503, f"GitHub answered {response.status_code} while checking your access"
            )
        return response

    async def _github_pages(self, token: str, path: str, key: str) -> list[dict[str, Any]]:
        url: str | None = f"{self.settings.github_api_url}{path}?per_page=100"
        items: list[dict[str, Any]] = []
        for _ in range(MAX_PAGES):
            if url is None:
                break
            response = await self._github("GET", url, token)
            items.extend(response.json().get(key) or [])
            url = response.links.get("next", {}).get("url")
        return items

    # ----- CSRF ------------------------------------------------------------------------------

    def check_csrf(self, request: Request, principal: Principal, provided: str | None) -> None:
        """State changes need the session's CSRF token, unless the caller used the API token."""
        if principal.kind == "token":
            return
        origin = request.headers.get("origin")
        if origin and origin != "null" and origin not in self.origins:
            # Never compared with the request's own Host: a DNS-rebound page sets that one.
            raise AuthError(
                403,
                f"cross-site request from {origin} refused: open runbot at"
                f" {self.settings.public_url} (RUNBOT_PUBLIC_URL) and try again",
            )
        session = principal.session
        if session is None or not provided or not hmac.compare_digest(session.csrf, provided):
            raise AuthError(403, "missing or stale CSRF token; reload the page and try again")

    # ----- the OAuth web flow ----------------------------------------------------------------

    def router(self, login_page: Callable[[Request, str | None, str], Response]) -> APIRouter:
        router = APIRouter(include_in_schema=False)

        @router.get("/auth/github")
        async def start(request: Request, next: str = "/") -> Response:
            if not self.oauth_enabled:
                return login_page(request, "GitHub sign-in is not configured.", "/")
            state = secrets.token_urlsafe(24)
            query = urlencode(
                {
                    "client_id": self.settings.github_client_id,
                    "redirect_uri": self.redirect_uri,
                    "state": state,
                    "allow_signup": "false",
                }
            )
            response = RedirectResponse(
                f"{self.settings.github_url}/login/oauth/authorize?{query}", status_code=302
            )
            response.set_cookie(
                OAUTH_COOKIE,
                self._oauth_signer.dumps({"state": state, "next": safe_next(next)}),
                max_age=OAUTH_MAX_AGE,
                httponly=True,
                samesite="lax",
                secure=self.secure_cookies,
            )
            return response

        @router.get("/auth/github/callback", name="oauth_callback")
        async def callback(
            request: Request,
            code: str | None = None,
            state: str | None = None,
            error: str | None = None,
            error_description: str | None = None,
        ) -> Response:
            try:
                pending = self._oauth_signer.loads(
                    request.cookies.get(OAUTH_COOKIE, ""), max_age=OAUTH_MAX_AGE
                )
            except BadSignature:
                pending = None
            if error:
                return login_page(
                    request, f"GitHub sign-in failed: {error_description or error}", "/"
                )
            if (
                not pending
                or not state
                or not code
                or not hmac.compare_digest(str(pending.get("state", "")), state)
            ):
                return login_page(
                    request, "The sign-in link expired or was not started here; try again.", "/"
                )
            try:
                login, token = await self._exchange(code)
            except AuthError as exc:
                return login_page(request, exc.message, pending.get("next", "/"))
            old = self.read_session(request)
            if old is not None and old.login:
                await self.revoke(old)
            session = replace(
                new_session(), login=login, token=self._fernet.encrypt(token.encode()).decode()
            )
            log.info("%s signed in to the dashboard", login)
            response = RedirectResponse(safe_next(pending.get("next")), status_code=303)
            self.write_session(response, session)
            response.delete_cookie(OAUTH_COOKIE)
            return response

        return router

    async def _exchange(self, code: str) -> tuple[str, str]:
        response = await self._github(
            "POST",
            f"{self.settings.github_url}/login/oauth/access_token",
            None,
            accept="application/json",
            data={
                "client_id": self.settings.github_client_id,
                "client_secret": self.settings.github_client_secret,
                "code": code,
                "redirect_uri": self.redirect_uri,
            },
        )
        data = response.json()
        token = data.get("access_token")
        if not token:
            raise AuthError(
                401, f"GitHub refused the sign-in: {data.get('error_description') or data}"
            )
        user = await self._github("GET", f"{self.settings.github_api_url}/user", token)
        login = user.json().get("login")
        if not isinstance(login, str) or not login:
            raise AuthError(503, "GitHub did not say who signed in")
        return login, token

    async def aclose(self) -> None:
        await self.http.aclose()
