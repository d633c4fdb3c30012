"""Group commit of webhook deliveries: every request learns whether its own row went in."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlmodel import func, select

from app.db.models import Delivery, utcnow
from app.db.session import Database
from app.github.intake import DeliveryRecorder


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
