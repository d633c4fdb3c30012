"""Handled webhook deliveries are deleted after the retention; pending ones never are."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from app.db.models import Delivery
from app.db.session import Database
from app.github.outbox import OutboxGateway
from app.runtime import build_runtime
from app.schedule.ticks import PRUNE_BATCH, Ticks
from app.settings import SettingsError, load_settings
from tests.conftest import make_settings

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


def add(db: Database, delivery_id: str, status: str, age: timedelta) -> None:
    with db.session() as session:
        session.add(
            Delivery(
                id=delivery_id,
                event="pull_request",
                action="synchronize",
                payload="{}",
                status=status,
                received_at=NOW - age,
            )
        )
        session.commit()


def remaining(db: Database) -> set[str]:
    with db.session() as session:
        return set(session.exec(select(Delivery.id)))


async def test_old_handled_deliveries_go_and_everything_else_stays(
    tmp_path: Path, database_url: str
) -> None:
    rt = build_runtime(make_settings(tmp_path, database_url))
    try:
        ticks = Ticks(
            rt.db, rt.lifecycle, OutboxGateway(rt.db, None), delivery_retention=timedelta(days=14)
        )
        old, recent = timedelta(days=15), timedelta(days=13)
        for status in ("processed", "ignored", "failed"):
            add(rt.db, f"old-{status}", status, old)
            add(rt.db, f"recent-{status}", status, recent)
        add(rt.db, "old-pending", "pending", timedelta(days=400))  # work not done: kept
        assert await ticks.prune_deliveries(NOW) == 3
        assert remaining(rt.db) == {
            "old-pending",
            "recent-processed",
            "recent-ignored",
            "recent-failed",
        }
        assert await ticks.prune_deliveries(NOW) == 0
    finally:
        rt.db.dispose()


async def test_a_backlog_larger_than_one_batch_is_pruned_whole(tmp_path: Path) -> None:
    rt = build_runtime(make_settings(tmp_path))
    try:
        ticks = Ticks(rt.db, rt.lifecycle, OutboxGateway(rt.db, None))
        count = PRUNE_BATCH * 2 + 3
        with rt.db.session() as session:
            for index in range(count):
                session.add(
                    Delivery(
                        id=f"d-{index}",
                        event="ping",
                        payload="{}",
                        status="ignored",
                        received_at=NOW - timedelta(days=30),
                    )
                )
            session.commit()
        assert await ticks.prune_deliveries(NOW) == count
        assert remaining(rt.db) == set()
    finally:
        rt.db.dispose()


@pytest.mark.parametrize("days", ["1", "0", "-5", "100000"])
def test_a_retention_shorter_than_githubs_redelivery_window_is_refused(
    monkeypatch: pytest.MonkeyPatch, days: str
) -> None:
    monkeypatch.setenv("RUNBOT_DELIVERY_RETENTION_DAYS", days)
    with pytest.raises(SettingsError, match="RUNBOT_DELIVERY_RETENTION_DAYS"):
        load_settings()
