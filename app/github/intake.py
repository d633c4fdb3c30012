"""POST /webhooks/github: verify, dedup, persist, acknowledge. Nothing else.

The request path makes no GitHub or engine call, so it answers in milliseconds, far inside
GitHub's 10-second limit. A delivery is acknowledged only once it is durably recorded; the intent
processor turns recorded deliveries into desired state afterwards.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError

from app.db.models import Delivery
from app.db.session import Database

log = logging.getLogger("runbot.intake")

MAX_BODY_BYTES = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB
HANDLED_EVENTS = frozenset(
    {
        "pull_request",
        "issue_comment",
        "installation",
        "installation_repositories",
        "check_suite",
        "status",
        "ping",
    }
)


def sign_body(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    """Only the `sha256=` form counts; compared in constant time over the raw bytes."""
    if not header or not header.startswith("sha256="):
        return False
    return hmac.compare_digest(sign_body(secret, body), header.strip())


def _problem(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _read_limited(request: Request) -> bytes | None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def webhook_router(
    db: Database,
    secret: Callable[[], str],
    on_recorded: Callable[[], None],
    count: Callable[[str, str], None] | None = None,
) -> APIRouter:
    router = APIRouter()

    def outcome(event: str, result: str) -> None:
        if count:
            count(event, result)

    @router.post("/webhooks/github", status_code=202, tags=["webhooks"])
    async def receive(request: Request) -> JSONResponse:
        event = request.headers.get("x-github-event", "")
        body = await _read_limited(request)
        if body is None:
            outcome(event or "unknown", "too_large")
            return _problem(413, "payload larger than 25 MB")
        if not signature_ok(secret(), body, request.headers.get("x-hub-signature-256")):
            outcome(event or "unknown", "bad_signature")
            return _problem(
                401, "missing or invalid X-Hub-Signature-256 (sha256=...) for the configured secret"
            )
        delivery_id = request.headers.get("x-github-delivery", "").strip()
        if not event or not delivery_id or len(delivery_id) > 100:
            outcome(event or "unknown", "bad_headers")
            return _problem(400, "X-GitHub-Event and X-GitHub-Delivery headers are required")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            outcome(event, "malformed")
            return _problem(400, "body is not valid JSON")
        if not isinstance(payload, dict):
            outcome(event, "malformed")
            return _problem(400, "body must be a JSON object")
        action = payload.get("action") if isinstance(payload.get("action"), str) else None
        handled = event in HANDLED_EVENTS
        record = Delivery(
            id=delivery_id,
            event=event[:60],
            action=(action or "")[:60] or None,
            payload=body.decode("utf-8", errors="replace") if handled else "{}",
            status="pending" if handled and event != "ping" else "ignored",
        )
        try:
            with db.session() as session:
                session.add(record)
                session.commit()
        except IntegrityError:
            outcome(event, "duplicate")
            return JSONResponse({"status": "duplicate", "delivery": delivery_id}, status_code=200)
        log.info("delivery %s recorded", delivery_id, extra={"delivery_id": delivery_id})
        if event == "ping":
            outcome(event, "pong")
            return JSONResponse({"status": "pong", "zen": payload.get("zen")}, status_code=200)
        if not handled:
            outcome(event, "ignored")
            return JSONResponse({"status": "ignored", "event": event}, status_code=202)
        outcome(event, "accepted")
        on_recorded()
        return JSONResponse({"status": "accepted", "delivery": delivery_id}, status_code=202)

    return router
