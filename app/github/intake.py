"""POST /webhooks/github: verify, dedup, persist, acknowledge. Nothing else.

The request path makes no GitHub or engine call, so it answers in milliseconds, far inside
GitHub's 10-second limit. A delivery is acknowledged only once it is durably recorded; the intent
processor turns recorded deliveries into desired state afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.dialects import postgresql, sqlite

from app.db.models import Delivery, utcnow
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


class IntakeActivity:
    """How busy the webhook endpoint is, for the background loops sharing its event loop.

    The intent processor consults it to let acknowledgements go first during a flood of
    deliveries: GitHub gives an endpoint 10 s to answer, while processing may lag a little.
    """

    def __init__(self) -> None:
        self.in_flight = 0
        self.last = 0.0

    def busy(self, within: float = 0.002) -> bool:
        return self.in_flight > 0 or time.monotonic() - self.last < within


#: One per process: every webhook router of the process reports to it.
ACTIVITY = IntakeActivity()


class DeliveryRecorder:
    """Durable recording of deliveries with group commit, off the event loop.

    Committing one delivery at a time, synchronously in the request handler, held the event
    loop for the whole commit (~0.7 ms for an 18 kB payload on SQLite), so deliveries queued
    behind each other and behind every other loop (intent, reconcile, notify). Now each request
    waits for its row to be committed, exactly as before (a delivery is acknowledged only once
    it is durable), but the commit runs in a worker thread and takes every delivery that
    arrived meanwhile in the same transaction. Duplicates are found per row with
    INSERT ... ON CONFLICT DO NOTHING, so one duplicate never fails its neighbours.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        table = Delivery.__table__  # type: ignore[attr-defined]
        dialect = postgresql if db.is_postgres else sqlite
        self._statement = (
            dialect.insert(table)
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(table.c.id)
        )
        self._waiting: list[tuple[dict[str, Any], asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(self, row: dict[str, Any]) -> bool:
        """Store one delivery; False when its id was already recorded (a redelivery)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._waiting.append((row, future))
        if self._writer is None or self._writer.done() or self._writer.get_loop() is not loop:
            self._writer = asyncio.create_task(self._write())
        return await future

    async def _write(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                inserted = await asyncio.to_thread(self._insert, [row for row, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for index, (_, future) in enumerate(batch):
                if not future.done():
                    future.set_result(index in inserted)

    def _insert(self, rows: list[dict[str, Any]]) -> set[int]:
        """INSERT ... ON CONFLICT DO NOTHING RETURNING id for the whole batch in one
        executemany: the ids returned are the rows that went in, the others were recorded
        before. SQLAlchemy sends it as a few multi-row statements ("insertmanyvalues") from
        one cached compilation; this runs in a thread whose Python work competes with the
        event loop for the GIL, so it is kept to one call.
        """
        first: dict[str, int] = {}
        for index, row in enumerate(rows):
            first.setdefault(row["id"], index)  # the same delivery twice in one batch
        with self.db.engine.begin() as connection:
            went_in = set(
                connection.execute(self._statement, [rows[index] for index in first.values()])
                .scalars()
                .all()
            )
        return {first[delivery_id] for delivery_id in went_in}


def webhook_router(
    db: Database,
    secret: Callable[[], str],
    on_recorded: Callable[[], None],
    count: Callable[[str, str], None] | None = None,
) -> APIRouter:
    router = APIRouter()
    recorder = DeliveryRecorder(db)

    def outcome(event: str, result: str) -> None:
        if count:
            count(event, result)

    @router.post("/webhooks/github", status_code=202, tags=["webhooks"])
    async def receive(request: Request) -> JSONResponse:
        ACTIVITY.in_flight += 1
        try:
            return await handle(request)
        finally:
            ACTIVITY.in_flight -= 1
            ACTIVITY.last = time.monotonic()

    async def handle(request: Request) -> JSONResponse:
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
        record = {
            "id": delivery_id,
            "event": event[:60],
            "action": (action or "")[:60] or None,
            "payload": body.decode("utf-8", errors="replace") if handled else "{}",
            "status": "pending" if handled and event != "ping" else "ignored",
            "error": None,
            "attempts": 0,
            "received_at": utcnow(),
            "processed_at": None,
        }
        if not await recorder.record(record):
            outcome(event, "duplicate")
            return JSONResponse({"status": "duplicate", "delivery": delivery_id}, status_code=200)
        # Debug only: the access log already has the request, and the intent processor logs
        # each delivery with its outcome, off the acknowledgement's path.
        log.debug("delivery %s recorded", delivery_id, extra={"delivery_id": delivery_id})
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
