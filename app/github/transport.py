"""Talking to GitHub safely: one pool, installation clients and tokens, pacing, retries.

The endpoints (``app.github.appgateway``) say *what* to send; this module decides how and
when it is sent, and turns every failure into the ``app.github.gateway`` failure contract.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypedDict

import httpx
from githubkit import AppAuthStrategy, GitHub
from githubkit.cache import MemCacheStrategy
from githubkit.exception import GitHubException, RequestError, RequestFailed

from app.github.gateway import ForbiddenOnGitHub, GitHubError, NotFoundOnGitHub, RetryLater
from app.github.payloads import at

if TYPE_CHECKING:
    from githubkit.response import Response

    from app.settings import Settings

__all__ = [
    "GATEWAY_STATS",
    "MAX_PAGES",
    "OUTAGE_BACKOFF",
    "PER_PAGE",
    "GitHubTransport",
    "Send",
    "TransportOptions",
    "github_message",
    "has_next_page",
    "split_repo",
]

logger = logging.getLogger(__name__)

#: Counters for metrics: ``calls`` (HTTP requests sent), ``errors`` (requests that failed),
#: ``rate_limit_waits:<primary|secondary>`` (waited inline), ``retry_later:<kind>``
#: (deferred to the caller; kind is primary, secondary or outage), ``token_refreshes``
#: (revoked installation token replaced) and ``lenient_parses`` (githubkit's model rejected
#: a response, read as plain JSON instead).
GATEWAY_STATS: Counter[str] = Counter()

WRITE_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})
#: Methods safe to resend when we cannot know whether GitHub acted on the first try;
#: a POST that timed out may have created a comment, so it is left to the next sync,
#: which looks for the comment first.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PATCH", "PUT", "DELETE"})
#: Pause before the single quick retry of an idempotent request after a 5xx/connection error.
QUICK_RETRY_DELAY = 0.5
#: How long callers should wait after an outage when GitHub gave no Retry-After.
OUTAGE_BACKOFF = 30.0
#: GitHub's advice when a secondary limit arrives without Retry-After: wait a minute.
SECONDARY_DEFAULT_WAIT = 60.0
#: Our own installation-token cache (for git fetches) renews this long before expiry, so a
#: token handed to a long ``git fetch`` does not expire halfway through.
TOKEN_RENEW_MARGIN = 300.0
PER_PAGE = 100
#: 100 pages of 100 items: beyond that something is wrong, not merely large.
MAX_PAGES = 100


# ---------------------------------------------------------------------------- helpers


def split_repo(repo: str) -> tuple[str, str]:
    owner, _, name = repo.partition("/")
    if not owner or not name or "/" in name:
        raise ValueError(f"repository must be 'owner/name', got {repo!r}")
    return owner, name


def _payload(response: Response[Any]) -> Any:
    """githubkit's parsed model, or the JSON itself when the model rejects what GitHub sent.

    githubkit's models follow one API version and are strict about required fields; GitHub
    adds and drops fields between versions, which must not take the bot down.
    """
    try:
        return response.parsed_data
    except ValueError:  # pydantic.ValidationError, or a body that is not JSON
        GATEWAY_STATS["lenient_parses"] += 1
        try:
            return response.json()
        except ValueError:
            request = response.raw_request
            raise GitHubError(
                f"GitHub answered {request.method} {request.url.path} with a body that is not JSON."
            ) from None


def github_message(response: Response[Any]) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.reason_phrase or "no message"
    message = data.get("message") if isinstance(data, dict) else None
    return str(message).split("\n", 1)[0] if message else (response.reason_phrase or "no message")


def _retry_after_seconds(value: str) -> float | None:
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _rate_limit(response: Response[Any]) -> tuple[str, float] | None:
    """``(kind, seconds to wait)`` when a 403/429 is a rate limit, as GitHub documents them."""
    if response.status_code not in (403, 429):
        return None
    headers = response.headers
    secondary = "secondary rate limit" in github_message(response).lower()
    if "retry-after" in headers:
        wait = _retry_after_seconds(headers["retry-after"])
        return "secondary", SECONDARY_DEFAULT_WAIT if wait is None else wait
    if headers.get("x-ratelimit-remaining") == "0":
        try:
            # Reset is wall-clock epoch seconds; a second of margin for clock skew.
            wait = max(0.0, float(headers["x-ratelimit-reset"]) - time.time()) + 1.0
        except (KeyError, ValueError):
            wait = SECONDARY_DEFAULT_WAIT
        return ("secondary" if secondary else "primary"), wait
    if secondary:
        return "secondary", SECONDARY_DEFAULT_WAIT
    return None


def _unwrap(exc: RequestError[Any]) -> tuple[RequestFailed | None, bool]:
    """``(the HTTP failure if any, whether our own request never left)``.

    githubkit wraps anything raised while sending (including the installation-token
    request its auth flow makes first) in RequestError; a failed token request means our
    request was never sent, so even a POST may be retried.
    """
    if isinstance(exc, RequestFailed):
        return exc, False
    inner = exc.exc
    if isinstance(inner, RequestFailed):
        return inner, True
    return None, isinstance(inner, httpx.ConnectError)


def has_next_page(response: Response[Any]) -> bool:
    return 'rel="next"' in response.headers.get("link", "")


class _SharedTransport(httpx.AsyncBaseTransport):
    """Keeps one connection pool although githubkit opens and closes a client per request."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        """githubkit closes its per-request client (and so us) after every call: ignore."""

    async def close_pool(self) -> None:
        await self._inner.aclose()


@dataclass
class _Installation:
    """A cached installation client plus its write-pacing state."""

    client: GitHub[Any]
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    last_write: float | None = None
    # githubkit fetches the client's token on its first request, once per concurrent request
    # if several start together: until one has succeeded they go one at a time, so a fresh
    # client makes one token request.
    has_token: bool = False
    first_request: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)


Send = Callable[[GitHub[Any]], Awaitable["Response[Any]"]]
SendPage = Callable[[GitHub[Any], int], Awaitable["Response[Any]"]]


def _on_page(fetch: SendPage, page: int) -> Send:
    """``fetch`` bound to one page number (a lambda in a loop would see the last one)."""
    return lambda gh: fetch(gh, page)


# ---------------------------------------------------------------------------- the transport


class TransportOptions(TypedDict, total=False):
    """Pacing, waiting and time, for tests to turn; the defaults are ``GitHubTransport``'s."""

    min_write_interval: float
    max_inline_wait: float
    clock: Callable[[], float]
    sleep: Callable[[float], Awaitable[None]]


class GitHubTransport:
    """The App's requests to GitHub: authenticated, paced, retried and rate-limit handled.

    One transport per process and event loop (its connection pool belongs to the loop).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        min_write_interval: float = 1.0,
        max_inline_wait: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        private_key = settings.private_key
        if not settings.github_app_id or not private_key:
            raise GitHubError(
                "the GitHub App gateway needs RUNBOT_GITHUB_APP_ID and a private key"
                " (RUNBOT_GITHUB_PRIVATE_KEY or RUNBOT_GITHUB_PRIVATE_KEY_PATH)."
            )
        self.min_write_interval = min_write_interval
        self.max_inline_wait = max_inline_wait
        self._clock = clock
        self._sleep = sleep
        self._api_version = settings.github_api_version
        self.api_url = settings.github_api_url.rstrip("/")
        self._pool = _SharedTransport()
        # githubkit 0.16 stamps every call with its own X-GitHub-Api-Version (2026-03-10);
        # this hook runs last, on every request (token requests too), to send the configured one.
        self._app: GitHub[AppAuthStrategy] = GitHub(
            AppAuthStrategy(settings.github_app_id, private_key),
            base_url=settings.github_api_url,
            user_agent="runbot",
            timeout=httpx.Timeout(30.0, connect=10.0),  # githubkit's default is no timeout
            auto_retry=False,
            http_cache=False,
            cache_strategy=MemCacheStrategy(),  # githubkit's default cache is process-global
            async_transport=self._pool,
            async_event_hooks={"request": [self._stamp_api_version]},
        )
        self._installations: dict[int, _Installation] = {}
        self._repo_installations: dict[str, int] = {}
        self._tokens: dict[int, tuple[str, float]] = {}
        self._token_locks: dict[int, asyncio.Lock] = {}

    async def _stamp_api_version(self, request: httpx.Request) -> None:
        request.headers["X-GitHub-Api-Version"] = self._api_version

    # ------------------------------------------------------------------ clients and tokens

    def _installation(self, installation_id: int) -> _Installation:
        """The installation's client, made once: githubkit then caches its token.

        githubkit keeps an installation token until a minute before ``expires_at``. Each
        client gets its own cache (it is ``app.with_auth(app.auth.as_installation(id))``
        with a fresh MemCacheStrategy) so a token GitHub revoked early can be dropped by
        replacing the client.
        """
        state = self._installations.get(installation_id)
        if state is None:
            config = dataclasses.replace(self._app.config, cache_strategy=MemCacheStrategy())
            client = GitHub(self._app.auth.as_installation(installation_id), config=config)
            state = self._installations[installation_id] = _Installation(client)
        return state

    def _renew_client(self, installation_id: int) -> None:
        GATEWAY_STATS["token_refreshes"] += 1
        state = self._installations[installation_id]
        config = dataclasses.replace(self._app.config, cache_strategy=MemCacheStrategy())
        state.client = GitHub(self._app.auth.as_installation(installation_id), config=config)
        state.has_token = False

    @property
    def api_version(self) -> str:
        return self._api_version

    async def installation_for(self, installation_id: int | None, repo: str) -> int:
        """The installation that covers `repo` (looked up once, then cached)."""
        return await self._installation_id(installation_id, repo)

    async def _installation_id(self, installation_id: int | None, repo: str) -> int:
        if installation_id is not None:
            return installation_id
        key = repo.lower()
        if key not in self._repo_installations:
            owner, name = split_repo(repo)
            response = await self.as_app(
                f"find the App's installation on {repo}",
                "GET",
                lambda gh: gh.rest.apps.async_get_repo_installation(owner, name),
            )
            found = at(_payload(response), "id")
            if not isinstance(found, int):
                raise GitHubError(f"GitHub did not say which installation covers {repo}.")
            self._repo_installations[key] = found
        return self._repo_installations[key]

    def forget_installation(self, repo: str, installation_id: int) -> None:
        """Drop what is cached for `repo`'s installation: its token was refused (401), as after
        an uninstall and a re-install, which gives the repository a new installation."""
        self._repo_installations.pop(repo.lower(), None)
        self._tokens.pop(installation_id, None)

    async def installation_token(self, installation_id: int) -> str:
        """A token for git over HTTPS, kept until 5 minutes before it expires.

        githubkit keeps its API token private, so git gets its own, cached the same way.
        """
        cached = self._tokens.get(installation_id)
        if cached is not None and cached[1] > self._clock():
            return cached[0]
        lock = self._token_locks.setdefault(installation_id, asyncio.Lock())
        async with lock:
            cached = self._tokens.get(installation_id)
            if cached is not None and cached[1] > self._clock():
                return cached[0]
            response = await self.as_app(
                f"get a token for installation {installation_id}",
                "POST",
                lambda gh: gh.rest.apps.async_create_installation_access_token(installation_id),
            )
            data = _payload(response)
            token = str(at(data, "token", default=""))
            if not token:
                raise GitHubError(f"GitHub gave no token for installation {installation_id}.")
            try:
                expires = datetime.fromisoformat(str(at(data, "expires_at")))
                lifetime = expires.timestamp() - time.time()
            except ValueError:
                lifetime = 3600.0  # GitHub's documented lifetime
            self._tokens[installation_id] = (
                token,
                self._clock() + max(0.0, lifetime - TOKEN_RENEW_MARGIN),
            )
            return token

    async def aclose(self) -> None:
        self._installations.clear()
        self._tokens.clear()
        await self._pool.close_pool()

    # ------------------------------------------------------------------ requests

    async def as_app(self, what: str, method: str, send: Send) -> Response[Any]:
        """A request authenticated as the App itself (JWT): never paced, never content."""
        return await self.attempt(what, method, send, None)

    async def call(
        self, installation_id: int | None, repo: str, what: str, method: str, send: Send
    ) -> Response[Any]:
        """A request as the installation; content-creating ones are spaced per installation.

        GitHub asks integrations to leave about a second between content-creating requests
        or it answers with secondary rate limits; the lock also keeps one installation's
        burst of comment updates from starving its others.
        """
        iid = await self._installation_id(installation_id, repo)
        state = self._installation(iid)
        if not state.has_token:
            async with state.first_request:
                if not state.has_token:
                    response = await self._paced(state, iid, what, method, send)
                    state.has_token = True
                    return response
        return await self._paced(state, iid, what, method, send)

    async def _paced(
        self, state: _Installation, iid: int, what: str, method: str, send: Send
    ) -> Response[Any]:
        if method not in WRITE_METHODS:
            return await self.attempt(what, method, send, iid)
        async with state.lock:
            if state.last_write is not None:
                wait = state.last_write + self.min_write_interval - self._clock()
                if wait > 0:
                    await self._sleep(wait)
            try:
                return await self.attempt(what, method, send, iid, self.min_write_interval)
            finally:
                # Stamped after the answer, so GitHub sees the gap even if requests overtake.
                state.last_write = self._clock()

    async def attempt(
        self,
        what: str,
        method: str,
        send: Send,
        installation_id: int | None,
        min_gap: float = 0.0,
    ) -> Response[Any]:
        """Send once; wait out a short rate limit or retry a transient failure at most once.

        A resent write waits at least `min_gap` too: GitHub counts a failed write in its pacing.
        """
        waited = retried = renewed = False
        while True:
            client = (
                self._app if installation_id is None else self._installation(installation_id).client
            )
            GATEWAY_STATS["calls"] += 1
            try:
                return await send(client)
            except RequestError as exc:
                GATEWAY_STATS["errors"] += 1
                failed, unsent = _unwrap(exc)
                # Resending is safe when GitHub cannot have acted on the first try.
                resendable = unsent or method in IDEMPOTENT_METHODS
                if failed is None:  # connection refused/reset, timeout, TLS
                    if resendable and not retried:
                        retried = True
                        await self._sleep(max(QUICK_RETRY_DELAY, min_gap))
                        continue
                    raise self._outage(what, f"GitHub could not be reached ({exc.exc!r})") from None
                response = failed.response
                status = response.status_code
                limited = _rate_limit(response)
                if limited is not None:
                    kind, wait = limited
                    if wait <= self.max_inline_wait and not waited:
                        waited = True
                        GATEWAY_STATS[f"rate_limit_waits:{kind}"] += 1
                        logger.info("GitHub %s rate limit: waiting %.1f s to %s", kind, wait, what)
                        await self._sleep(max(wait, min_gap))
                        continue
                    GATEWAY_STATS[f"retry_later:{kind}"] += 1
                    raise RetryLater(
                        wait,
                        f"GitHub's {kind} rate limit stopped runbot from trying to {what};"
                        f" retrying in {wait:.0f} s.",
                    ) from None
                if status >= 500:
                    if resendable and not retried:
                        retried = True
                        await self._sleep(max(QUICK_RETRY_DELAY, min_gap))
                        continue
                    raise self._outage(what, f"GitHub answered {status}", response) from None
                if status == 401 and installation_id is not None and not renewed:
                    renewed = True  # the cached installation token was revoked early
                    self._renew_client(installation_id)
                    continue
                request = response.raw_request
                if status == 403:
                    raise ForbiddenOnGitHub(
                        f"GitHub refused to let runbot {what}: 403 {github_message(response)}"
                        f" ({request.method} {request.url.path}); the App may lack a permission"
                        " this installation has not accepted yet."
                    ) from None
                if status == 404:
                    raise NotFoundOnGitHub(
                        f"GitHub could not find what runbot needed to {what}"
                        f" ({request.method} {request.url.path} answered 404)."
                    ) from None
                raise GitHubError(
                    f"GitHub refused to let runbot {what}: {status} {github_message(response)}"
                    f" ({request.method} {request.url.path})."
                ) from None
            except GitHubException as exc:  # githubkit's own: bad credentials setup etc.
                GATEWAY_STATS["errors"] += 1
                raise GitHubError(f"runbot could not {what}: {exc!r}.") from None

    @staticmethod
    def _outage(what: str, reason: str, response: Response[Any] | None = None) -> RetryLater:
        wait = OUTAGE_BACKOFF
        if response is not None and "retry-after" in response.headers:
            wait = _retry_after_seconds(response.headers["retry-after"]) or OUTAGE_BACKOFF
        GATEWAY_STATS["retry_later:outage"] += 1
        logger.warning("%s while trying to %s; retrying in %.0f s", reason, what, wait)
        return RetryLater(wait, f"{reason} while runbot tried to {what}; retrying in {wait:.0f} s.")

    async def pages(
        self,
        installation_id: int | None,
        repo: str,
        what: str,
        fetch: SendPage,
    ) -> AsyncIterator[Response[Any]]:
        """Follow ``Link: rel="next"`` pages, each a separately rate-limit-handled read."""
        for page in range(1, MAX_PAGES + 1):
            response = await self.call(installation_id, repo, what, "GET", _on_page(fetch, page))
            yield response
            if not has_next_page(response):
                return
        raise GitHubError(f"runbot gave up to {what} after {MAX_PAGES} pages of results.")
