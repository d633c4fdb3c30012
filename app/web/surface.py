"""The web's outer guard: the Host allow-list and the security headers of every response.

One ASGI middleware around the dashboard, the API, sign-in and the docs (the webhook intake is
served before it and is guarded by its signature). The decisions are pure functions of the
settings and the request's Host, so each is testable apart from the server.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.settings import Settings

#: Names every runbot answers to: a browser on the same machine.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
#: Paths probes and scrapers reach by a pod's IP address; they carry no session and act on
#: nothing, so the Host check would only break them.
HOST_EXEMPT = frozenset({"/healthz", "/readyz", "/metrics"})
#: The dashboard: its own scripts and styles only, never framed, forms post only to itself.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none';"
    " form-action 'self'; frame-ancestors 'none'"
)
#: The OpenAPI page (FastAPI's Swagger UI) loads its bundle from jsDelivr and starts it with one
#: inline script, allowed by its hash (computed from the page itself: it holds no outside data).
DOCS_PATH = "/docs"
DOCS_CDN = "https://cdn.jsdelivr.net"
HSTS = "max-age=31536000; includeSubDomains"
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


def host_name(header: str) -> str | None:
    """The name in a Host header, lower-case, without port or brackets; None if malformed."""
    header = header.strip()
    if not header or any(ch in header for ch in "/\\@?# "):
        return None
    try:
        name = urlsplit("//" + header).hostname
    except ValueError:
        return None
    return name.rstrip(".") if name else None


def allowed_hosts(settings: Settings) -> frozenset[str]:
    """RUNBOT_PUBLIC_URL's and RUNBOT_K8S_CALLBACK_URL's hosts, loopback, RUNBOT_ALLOWED_HOSTS."""
    public = host_name(urlsplit(settings.public_url).netloc)
    # The Kubernetes executor's pods call the run-token API by RUNBOT_K8S_CALLBACK_URL's name.
    callback = host_name(urlsplit(settings.k8s_callback).netloc)
    names = {name for name in (public, callback) if name}
    return LOOPBACK_NAMES | settings.host_names | names


@dataclass(frozen=True)
class Guard:
    """What the middleware applies, decided once from the settings."""

    hosts: frozenset[str]
    https: bool

    @classmethod
    def of(cls, settings: Settings) -> Guard:
        return cls(allowed_hosts(settings), settings.public_url.startswith("https://"))

    def host_ok(self, path: str, host: str | None) -> bool:
        if path in HOST_EXEMPT:
            return True
        name = host_name(host or "")
        return name is not None and name in self.hosts

    def headers(self, policy: str = PAGE_POLICY) -> list[tuple[bytes, bytes]]:
        out = [
            (b"content-security-policy", policy.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"same-origin"),
        ]
        if self.https:
            out.append((b"strict-transport-security", HSTS.encode()))
        return out


def docs_policy(page: bytes) -> str:
    """The CSP of the Swagger UI page: its CDN, and its own inline scripts by hash."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(page)
    )
    return (
        f"default-src 'self'; script-src 'self' {DOCS_CDN} {hashes};"
        f" style-src 'self' {DOCS_CDN} 'unsafe-inline'; img-src 'self' data: https:;"
        " object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


class SurfaceGuard:
    """Refuses a request for another host with 400; adds the security headers to the rest."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.guard = Guard.of(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
        if not self.guard.host_ok(path, host):
            await self._refuse(send)
            return
        if path == DOCS_PATH:
            await self.app(scope, receive, self._docs_sender(send))
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.guard.headers()]
            await send(message)

        await self.app(scope, receive, with_headers)

    def _docs_sender(self, send: Send) -> Send:
        """The docs page is small and sent whole: hold its start until its body is known."""
        held: list[Message] = []

        async def sender(message: Message) -> None:
            if message["type"] == "http.response.start":
                held.append(message)
                return
            if held and message["type"] == "http.response.body":
                start = held.pop()
                policy = docs_policy(message.get("body", b""))
                start["headers"] = [*start.get("headers", []), *self.guard.headers(policy)]
                await send(start)
            await send(message)

        return sender

    async def _refuse(self, send: Send) -> None:
        body = (
            b'{"error":"this runbot does not answer to that host name: use the address in'
            b' RUNBOT_PUBLIC_URL, or add the name to RUNBOT_ALLOWED_HOSTS"}'
        )
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *self.guard.headers(),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
