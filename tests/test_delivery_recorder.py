"""Group commit of webhook deliveries: every request learns whether its own row went in."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlmodel import func, select

from app.db.models import Delivery, utcnow
from app.db.session import Database
from app.github.intake import ACTIVITY, DeliveryRecorder
from app.intent.deliveries import oldest_claimable
from app.runtime import build_runtime
from app.workers import Workers
from tests.conftest import make_settings


def row(delivery_id: str) -> dict[str, Any]:
    return {
        "id": delivery_id,
        "event": "pull_request",
        "action": "synchronize",
        "payload": '{"action": "synchronize"}',
        "status": "pending",
        "error": None,
        "attempts": 0,
        "received_at": utcnow(),
        "processed_at": None,
    }


def stored(db: Database) -> int:
    with db.session() as session:
        return int(session.exec(select(func.count()).select_from(Delivery)).one())


async def test_one_batch_tells_new_rows_from_redeliveries(database_url: str) -> None:
    db = Database(database_url)
    db.migrate()
    try:
        recorder = DeliveryRecorder(db)
        assert await recorder.record(row("seen-before"))
        # Gathered together, these land in one transaction: a delivery recorded earlier, the
        # same new delivery twice (GitHub redelivering while the first is in flight), others.
        results = await asyncio.gather(
            recorder.record(row("seen-before")),
            recorder.record(row("twice")),
            recorder.record(row("twice")),
            *(recorder.record(row(f"new-{index}")) for index in range(3)),
        )
        assert results == [False, True, False, True, True, True]
        assert stored(db) == 5
    finally:
        db.dispose()


async def test_a_flood_larger_than_one_statement_is_recorded_whole(database_url: str) -> None:
    db = Database(database_url)
    db.migrate()
    try:
        recorder = DeliveryRecorder(db)
        count = 1234  # more than one statement of SQLAlchemy's insertmanyvalues (1000 rows)
        results = await asyncio.gather(*(recorder.record(row(f"d-{i}")) for i in range(count)))
        assert results == [True] * count
        assert stored(db) == count
    finally:
        db.dispose()


async def test_stored_rows_read_back_as_the_orm_wrote_them(database_url: str) -> None:
    """On SQLite the batch bypasses the ORM (`SqliteInlineInsert`): its timestamps must still
    be stored in SQLAlchemy's format, or the intent's lease and age comparisons go wrong."""
    db = Database(database_url)
    db.migrate()
    try:
        recorder = DeliveryRecorder(db)
        sent = row("read-back")
        sent["processed_at"] = sent["received_at"]
        assert await recorder.record(sent)
        with db.session() as session:
            stored_row = session.get(Delivery, "read-back")
            assert stored_row is not None
            assert stored_row.received_at == sent["received_at"]
            assert stored_row.processed_at == sent["received_at"]
            later = session.exec(
                select(func.count())
                .select_from(Delivery)
                .where(Delivery.received_at < sent["received_at"] + timedelta(microseconds=1))
            ).one()
            assert later == 1
    finally:
        db.dispose()


async def test_a_writer_holding_the_sqlite_lock_never_blocks_the_event_loop(
    tmp_path: Path,
) -> None:
    """Another connection is mid-transaction (a CLI command, say): the batch waits for it in a
    thread, and the event loop keeps serving meanwhile."""
    path = tmp_path / "runbot.db"
    db = Database(f"sqlite:///{path}")
    db.migrate()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        recorder = DeliveryRecorder(db)
        assert await recorder.record(row("before"))  # the inline connection is open
        other.execute("BEGIN IMMEDIATE")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        pending = asyncio.create_task(recorder.record(row("while-locked")))
        await asyncio.sleep(0.3)
        assert not pending.done()
        assert ticks >= 10, "the event loop stalled behind the lock"
        other.execute("COMMIT")
        assert await asyncio.wait_for(pending, 30)
        ticking.cancel()
        assert stored(db) == 2
    finally:
        other.close()
        db.dispose()


def test_only_a_sqlite_file_is_written_through_a_second_connection(tmp_path: Path) -> None:
    assert Database(f"sqlite:///{tmp_path / 'x.db'}").is_sqlite_file
    # A second connection to :memory: would be another, empty database.
    assert not Database("sqlite:///:memory:").is_sqlite_file
    assert not Database("sqlite://").is_sqlite_file
    assert not Database("postgresql+psycopg://runbot@127.0.0.1/runbot").is_sqlite_file


async def test_dispose_closes_the_recorders_own_connection(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'runbot.db'}")
    db.migrate()
    recorder = DeliveryRecorder(db)
    assert await recorder.record(row("one"))
    owned = list(db._owned)
    assert len(owned) == 1
    db.dispose()
    with pytest.raises(sqlite3.ProgrammingError):
        owned[0].execute("SELECT 1")


async def test_the_wal_is_checkpointed_off_the_event_loop(tmp_path: Path) -> None:
    """The recorder's connection never checkpoints in its COMMIT (an fsync on the loop); a
    thread copies the WAL into the database file every few megabytes instead."""
    path = tmp_path / "runbot.db"
    db = Database(f"sqlite:///{path}")
    db.migrate()
    try:
        recorder = DeliveryRecorder(db)
        big = '{"pad": "' + "x" * 20_000 + '"}'
        empty_size = path.stat().st_size
        for batch in range(30):  # 300 x 20 kB: past the 4 MB mark
            rows = [dict(row(f"d-{batch}-{index}"), payload=big) for index in range(10)]
            assert all(await asyncio.gather(*(recorder.record(r) for r in rows)))
        inline = recorder._inline
        assert inline is not None and inline._checkpoint is not None
        await asyncio.wait_for(inline._checkpoint, 30)
        assert path.stat().st_size > empty_size + 4 * 2**20
        assert stored(db) == 300
    finally:
        db.dispose()


def test_claiming_from_a_backlog_reads_the_index_alone(tmp_path: Path) -> None:
    """Without ix_delivery_claim, SQLite sorted the pending rows and read each one's payload to
    reach its times: 57 ms per batch of 50 claims from a 7,000-delivery backlog."""
    db = Database(f"sqlite:///{tmp_path / 'runbot.db'}")
    db.migrate()
    try:
        query = oldest_claimable(utcnow(), timedelta(minutes=5), 50)
        sql = str(query.compile(db.engine, compile_kwargs={"literal_binds": True}))
        with db.engine.connect() as connection:
            plan = " | ".join(
                str(step[-1])
                for step in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}").all()
            )
        assert "COVERING INDEX ix_delivery_claim" in plan, plan
        assert "TEMP B-TREE" not in plan, plan
    finally:
        db.dispose()


async def test_a_delivery_recorded_on_an_idle_queue_is_claimed_by_key(tmp_path: Path) -> None:
    """The intake hands the id over: one conditional UPDATE, no listing of the queue. During a
    flood the hint is ignored and the oldest delivery still goes first."""
    rt = build_runtime(make_settings(tmp_path))
    intent = Workers.build(rt).intent
    recorder = DeliveryRecorder(rt.db)
    older, newer = row("older"), row("newer")
    older["received_at"] = utcnow() - timedelta(seconds=5)
    assert await recorder.record(older) and await recorder.record(newer)
    statements: list[str] = []
    event.listen(rt.db.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))

    ACTIVITY.in_flight += 1  # as inside the request that recorded it
    try:
        intent.hint("newer")
    finally:
        ACTIVITY.in_flight -= 1
    assert intent.wakeup.is_set()
    claimed = intent.deliveries.claim()
    assert claimed is not None and claimed.id == "newer"  # by key, ahead of the older one
    assert not any("ORDER BY" in sql for sql in statements), statements

    with rt.db.session() as session:  # put it back in the queue
        back = session.get(Delivery, "newer")
        assert back is not None
        back.processed_at = None
        session.add(back)
        session.commit()
    ACTIVITY.in_flight += 2  # another delivery is in flight: a flood
    try:
        intent.hint("newer")
    finally:
        ACTIVITY.in_flight -= 2
    claimed = intent.deliveries.claim()
    assert claimed is not None and claimed.id == "older"  # the queue's order stands
    rt.db.dispose()


async def test_deliveries_sent_one_by_one_during_a_backlog_keep_their_order(
    tmp_path: Path,
) -> None:
    """Webhooks sent one after another each look alone to the intake; one recorded as the
    queue emptied jumped ahead of older ones still unlisted (in a burst of 20 PRs, #108 and
    #113 took warm instances before #102). Once a delivery waits unlisted, hints wait too."""
    rt = build_runtime(make_settings(tmp_path))
    intent = Workers.build(rt).intent
    recorder = DeliveryRecorder(rt.db)
    start = utcnow() - timedelta(seconds=10)

    async def arrive(name: str, second: int) -> None:
        record = row(name)
        record["received_at"] = start + timedelta(seconds=second)
        assert await recorder.record(record)
        ACTIVITY.in_flight += 1  # inside its own request, with no other in flight
        try:
            intent.hint(name)
        finally:
            ACTIVITY.in_flight -= 1

    def next_claimed() -> str | None:
        claimed = intent.deliveries.claim()
        return None if claimed is None else claimed.id

    try:
        await arrive("a", 0)
        assert next_claimed() == "a"  # an idle queue: by key
        await arrive("b", 1)  # while a is processed: the queue holds nothing older
        await arrive("c", 2)  # b waits in the hint: c is not listed yet
        assert next_claimed() == "b"
        await arrive("d", 3)  # the hints are empty again, but c still waits
        assert [next_claimed(), next_claimed(), next_claimed()] == ["c", "d", None]

        statements: list[str] = []
        event.listen(rt.db.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        await arrive("e", 4)  # the queue was found empty: by key again
        assert next_claimed() == "e"
        assert not any("ORDER BY" in sql for sql in statements), statements
    finally:
        rt.db.dispose()
