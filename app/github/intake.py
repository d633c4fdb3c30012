"""POST /webhooks/github: verify, dedup, persist, acknowledge. Nothing else.

The request path makes no GitHub or engine call, so it answers in milliseconds, far inside
GitHub's 10-second limit. A delivery is acknowledged only once it is durably recorded; the intent
processor turns recorded deliveries into desired state afterwards.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import json
import logging
import re
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert
from starlette.types import Receive, Scope, Send

from app.db.models import Delivery, table_of, utcnow
from app.db.session import Database

log = logging.getLogger("runbot.intake")

#: The default body cap (RUNBOT_WEBHOOK_MAX_BODY_BYTES). GitHub allows 25 MB, but the events
#: runbot handles are a few kB to a few hundred kB, and an unsigned body is buffered in full
#: before its signature can be checked, so a smaller cap bounds what a stranger can make it hold.
MAX_BODY_BYTES = 5 * 1024 * 1024
#: The default whole-body read deadline in seconds (RUNBOT_WEBHOOK_READ_TIMEOUT).
READ_TIMEOUT = 10.0
#: The only signature form accepted: ASCII `sha256=` and 64 hex digits. Anything else (another
#: algorithm, non-ASCII bytes, junk) is refused before a byte of the body is read.
_SIGNATURE = re.compile(r"sha256=[0-9a-f]{64}")
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


def signature_form(header: str | None) -> bytes | None:
    """The header as ASCII bytes when it has the one accepted form, else None (never raises:
    a header is a stranger's bytes, decoded as latin-1 by the server)."""
    value = (header or "").strip().lower()
    if not _SIGNATURE.fullmatch(value):
        return None
    return value.encode("ascii")


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    """Only the `sha256=` form counts; compared in constant time over the raw bytes."""
    expected = signature_form(header)
    if expected is None:
        return False
    return hmac.compare_digest(sign_body(secret, body).encode("ascii"), expected)


def parse_json(data: bytes | str) -> Any:
    """orjson first: 33 µs for an 18 kB payload against 79 µs with `json`, whose parse was a
    fifth of the acknowledgement's CPU. It is stricter (NaN, lone surrogates, a BOM), so what
    it refuses gets a second reading by `json`: validity means what it meant before."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def _problem(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class BodyRefused(enum.Enum):
    """Why a body was not read to its end."""

    TOO_LARGE = "too_large"
    TOO_SLOW = "too_slow"


async def read_body(request: Request, limit: int, deadline: float) -> bytes | BodyRefused:
    """The whole body, if it is at most `limit` bytes and arrives within `deadline` seconds.

    The declared length is checked before reading, the real one while reading; the deadline
    covers the whole body, so a client that trickles a byte a second holds nothing for long.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return BodyRefused.TOO_LARGE
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(deadline):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    return BodyRefused.TOO_LARGE
                chunks.append(chunk)
    except TimeoutError:
        return BodyRefused.TOO_SLOW
    return b"".join(chunks)


class IntakeActivity:
    """How busy the webhook endpoint is, for the background loops sharing its event loop.

    The intent processor consults it to let acknowledgements go first during a flood of
    deliveries: GitHub gives an endpoint 10 s to answer, while processing may lag a little.
    Only deliveries whose signature checked out count: a stranger's requests, however many
    and however slow, never make processing step aside.
    """

    def __init__(self) -> None:
        self.in_flight = 0
        self.last = 0.0

    def busy(self, within: float = 0.002) -> bool:
        return self.in_flight > 0 or time.monotonic() - self.last < within

    def alone(self, within: float = 0.002) -> bool:
        """Asked from inside a request: no other is in flight, and none ended just before."""
        return self.in_flight <= 1 and time.monotonic() - self.last >= within


#: One per process: every webhook router of the process reports to it.
ACTIVITY = IntakeActivity()


class SqliteInlineInsert:
    """SQLite's group commit, run on the event loop itself through a dedicated connection.

    Measured under a webhook flood (bench/webhook.py, 2 cores): committing in a worker thread
    made the two threads trade the GIL at every SQLite call, and SQLAlchemy's per-row Python
    work ran under contention; the event loop then spent ~300 µs more per delivery than the
    insert costs alone (~60 µs for an 18 kB payload). Here the batch is inserted where it was
    gathered, with the DB-API cursor and the statement SQLAlchemy compiled once. It never waits
    for a lock on the loop: with busy_timeout 0, BEGIN IMMEDIATE fails at once when another
    connection is writing, and the caller hands that batch to a thread that may wait.

    Nor does it checkpoint on the loop: SQLite's automatic checkpoint runs inside the COMMIT
    that crosses 1,000 WAL pages and fsyncs (one bench run here saw a 129 ms p99 from it on
    a virtual disk). It is off on this connection, and a thread checkpoints every
    `CHECKPOINT_BYTES` of deliveries.
    """

    CHECKPOINT_BYTES = 4 * 2**20  # about SQLite's default, 1,000 pages of 4 kB

    def __init__(self, db: Database, statement: Insert) -> None:
        self.db = db
        dialect = db.engine.dialect
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        table = table_of(Delivery)
        self._columns = [
            (name, table.c[name].type.dialect_impl(dialect).bind_processor(dialect))
            for name in compiled.positiontup or []
        ]
        self._connection: sqlite3.Connection | None = None
        self._unchecked = 0  # payload bytes committed since the last checkpoint began
        self._checkpoint: asyncio.Future[None] | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            # The engine's pragmas (WAL, synchronous); a SQLite engine's driver connection.
            connection: sqlite3.Connection = self.db.own_connection()
            connection.isolation_level = None  # transactions are begun and ended here
            connection.execute("PRAGMA busy_timeout=0")
            connection.execute("PRAGMA wal_autocheckpoint=0")
            self._connection = connection
        return self._connection

    def insert(self, rows: list[dict[str, Any]]) -> set[int] | None:
        """Indexes of the rows that went in; None when another writer holds the lock."""
        connection = self._connect()
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return None
        try:
            went_in = set()
            for index, row in enumerate(rows):
                values = [
                    process(row[name]) if process else row[name] for name, process in self._columns
                ]
                if connection.execute(self.sql, values).rowcount == 1:
                    went_in.add(index)  # 0: recorded before, or earlier in this batch
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        self._unchecked += sum(len(row["payload"]) for row in rows)
        if self._unchecked >= self.CHECKPOINT_BYTES and (
            self._checkpoint is None or self._checkpoint.done()
        ):
            self._unchecked = 0
            loop = asyncio.get_running_loop()
            self._checkpoint = loop.run_in_executor(None, self._checkpoint_wal)
        return went_in

    def _checkpoint_wal(self) -> None:
        """PASSIVE: copies what no reader still needs and never waits for anyone."""
        try:
            with self.db.engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        except Exception as exc:  # the next one, or any other connection's, catches up
            log.warning("WAL checkpoint failed: %s", exc)


class DeliveryRecorder:
    """Durable recording of deliveries with group commit.

    Each request waits for its row to be committed (a delivery is acknowledged only once it is
    durable), and every delivery that arrived meanwhile goes in the same transaction. Duplicates
    are found per row with INSERT ... ON CONFLICT DO NOTHING, so one duplicate never fails its
    neighbours. On SQLite the batch is written on the event loop (`SqliteInlineInsert`) unless
    another writer holds the lock; on PostgreSQL, and in that case, a worker thread writes it,
    so the loop never waits on the network or on a lock.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        table = table_of(Delivery)
        dialect = postgresql if db.is_postgres else sqlite
        upsert = dialect.insert(table).on_conflict_do_nothing(index_elements=["id"])
        self._statement = upsert.returning(table.c.id)
        self._inline = SqliteInlineInsert(db, upsert) if db.is_sqlite_file else None
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
            rows = [row for row, _ in batch]
            try:
                inserted = self._inline.insert(rows) if self._inline else None
                if inserted is None:
                    inserted = await asyncio.to_thread(self._insert, rows)
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


WEBHOOK_PATH = "/webhooks/github"


class WebhookIntake:
    """The webhook endpoint, reachable two ways: as a FastAPI route (the OpenAPI description,
    the docs, tests) and straight from the ASGI server (`matches` + `__call__`).

    The direct way skips FastAPI's request machinery: its routing, dependency solving and six
    middlewares cost ~80 µs of a ~290 µs acknowledgement (bench/webhook.py, measured on a bare
    endpoint both ways) and give this endpoint nothing: it reads the raw body, checks it by
    hand and answers JSON. Both ways run the same `receive`. One consequence: FastAPI's own
    middleware (its native OpenTelemetry included) does not see deliveries; the access log does.
    """

    def __init__(
        self,
        db: Database,
        secret: Callable[[], str],
        on_recorded: Callable[[str], None],
        count: Callable[[str, str], None] | None = None,
        *,
        max_body_bytes: int = MAX_BODY_BYTES,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self.recorder = DeliveryRecorder(db)
        self.secret = secret
        self.on_recorded = on_recorded
        self.count = count
        self.max_body_bytes = max_body_bytes
        self.read_timeout = read_timeout

    def router(self) -> APIRouter:
        router = APIRouter()
        router.add_api_route(
            WEBHOOK_PATH, self.receive, methods=["POST"], status_code=202, tags=["webhooks"]
        )
        return router

    def matches(self, scope: Scope) -> bool:
        return (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] in (WEBHOOK_PATH, scope.get("root_path", "") + WEBHOOK_PATH)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await self.receive(Request(scope, receive))
        except Exception:
            log.exception("webhook delivery could not be handled")
            response = _problem(500, "the delivery could not be recorded; redeliver it later")
        await response(scope, receive, send)

    async def receive(self, request: Request) -> JSONResponse:
        """Receive one GitHub webhook delivery: 202 once it is durably recorded."""
        event = request.headers.get("x-github-event", "")
        body = await self._verified_body(request, event or "unknown")
        if isinstance(body, JSONResponse):
            return body
        ACTIVITY.in_flight += 1
        try:
            return await self._handle(request, event, body)
        finally:
            ACTIVITY.in_flight -= 1
            ACTIVITY.last = time.monotonic()

    def _outcome(self, event: str, result: str) -> None:
        if self.count:
            self.count(event, result)

    async def _verified_body(self, request: Request, event: str) -> bytes | JSONResponse:
        """The body, once its size, arrival time and signature check out; else the refusal."""
        refused = _problem(
            401, "missing or invalid X-Hub-Signature-256 (sha256=...) for the configured secret"
        )
        expected = signature_form(request.headers.get("x-hub-signature-256"))
        if expected is None:
            self._outcome(event, "bad_signature")
            return refused
        body = await read_body(request, self.max_body_bytes, self.read_timeout)
        if isinstance(body, BodyRefused):
            self._outcome(event, body.value)
            if body is BodyRefused.TOO_LARGE:
                return _problem(413, f"payload larger than {self.max_body_bytes / 2**20:g} MB")
            response = _problem(
                408, f"the body did not arrive within {self.read_timeout:g} s; send it again"
            )
            response.headers["connection"] = "close"  # what is left of it is not read
            return response
        if not hmac.compare_digest(sign_body(self.secret(), body).encode("ascii"), expected):
            self._outcome(event, "bad_signature")
            return refused
        return body

    async def _handle(self, request: Request, event: str, body: bytes) -> JSONResponse:
        outcome = self._outcome
        delivery_id = request.headers.get("x-github-delivery", "").strip()
        if not event or not delivery_id or len(delivery_id) > 100:
            outcome(event or "unknown", "bad_headers")
            return _problem(400, "X-GitHub-Event and X-GitHub-Delivery headers are required")
        try:
            payload = parse_json(body)
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
        if not await self.recorder.record(record):
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
        self.on_recorded(delivery_id)
        return JSONResponse({"status": "accepted", "delivery": delivery_id}, status_code=202)
