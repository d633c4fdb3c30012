"""The sleep tick (`Ticks.sleep_idle`) and what counts as activity, on SQLite and PostgreSQL.

Activity is a push, a command, a dashboard/API action or HTTP traffic; each is checked to keep
an environment awake through the tick. Then the real APScheduler, as `register_ticks` sets it
up, runs against a ManualClock moved by hours: the environment sleeps, then expires, at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import text, update
from sqlmodel import col

from app import clock
from app.db.models import Environment
from app.lifecycle.states import Desired, Status
from app.schedule.ticks import TICK_STATS, due_for_sleep, register_ticks
from app.server import create_app
from tests.apphost import INSTALLATION, REPO, free_port, sign_in_settings
from tests.commandhost import CommandHost
from tests.fakegithub.server import FakeGitHub
from tests.webtools import WebServer, seed_env, seed_silo

pytest_plugins = ["tests.fakegithub.pytest_plugin"]

T0 = datetime(2030, 3, 4, 9, 0, tzinfo=UTC)
CONFIG = "stack: local\nsilo: cmd\nttl: {idle: 8h, max: 2d, warn_before: 30m, sleep_after: 1h}\n"
HOUR = timedelta(hours=1)


# --- the pure decision ----------------------------------------------------------------------


def test_sleep_is_due_once_idle_for_sleep_after() -> None:
    ttl = {"idle": 28800.0, "max": 172800.0, "warn_before": 1800.0, "sleep_after": 3600.0}
    assert due_for_sleep(ttl, T0, T0 + HOUR - timedelta(seconds=1)) is None
    cutoff = due_for_sleep(ttl, T0, T0 + HOUR)
    assert cutoff is not None and cutoff > T0  # activity at T0 is before the cut-off
    assert (
        due_for_sleep({k: v for k, v in ttl.items() if k != "sleep_after"}, T0, T0 + HOUR * 99)
        is None
    )
    assert due_for_sleep(None, T0, T0 + HOUR * 99) is None


# --- the tick on a database -----------------------------------------------------------------


@pytest.fixture
def manual(manual_clock: clock.ManualClock) -> clock.ManualClock:
    assert manual_clock.now() == T0
    return manual_clock


@pytest.fixture
async def host(
    tmp_path: Path, fake_github: FakeGitHub, database_url: str, manual: clock.ManualClock
) -> AsyncIterator[CommandHost]:
    host = CommandHost(tmp_path, fake_github, database_url, config=CONFIG)
    await host.open_pull(author="alice")
    set_status(host, Status.READY)
    yield host
    await host.close()


def live(host: CommandHost) -> Environment:
    env = host.live()
    assert env is not None
    return env


def set_status(host: CommandHost, status: Status, number: int = 1) -> None:
    """As a worker's apply leaves the row (no engine runs in these tests)."""
    env = host.live(number)
    assert env is not None
    with host.rt.db.session() as session:
        row = session.get(Environment, env.id)
        assert row is not None
        row.status, row.observed_generation = status, row.generation
        session.add(row)
        session.commit()


async def test_an_idle_environment_sleeps_and_keeps_its_expiry(
    host: CommandHost, manual: clock.ManualClock
) -> None:
    env = live(host)
    assert env.ttl["sleep_after"] == 3600.0 and env.sleep_due_at == env.last_activity_at + HOUR
    woken: list[int] = []
    host.ticks.wake = lambda: woken.append(1)
    assert await host.ticks.sleep_idle(now=env.last_activity_at + HOUR - timedelta(seconds=1)) == []
    before = TICK_STATS["slept"]
    now = manual.set(env.last_activity_at + HOUR)
    assert await host.ticks.sleep_idle() == [env.id]  # the clock's time, no argument
    assert woken == [1] and TICK_STATS["slept"] == before + 1
    row = live(host)
    assert (row.desired, row.sleep_reason, row.slept_at) == (Desired.SUSPENDED, "idle", now)
    assert row.expires_at == env.expires_at  # sleep keeps the expiry
    assert await host.ticks.sleep_idle(now=now + HOUR) == []  # asleep: no second sleep


async def test_only_ready_awake_environments_with_sleep_after_sleep(
    host: CommandHost, manual: clock.ManualClock
) -> None:
    env = live(host)
    set_status(host, Status.UPDATING)  # mid-apply: the apply's outcome decides, not the tick
    assert await host.ticks.sleep_idle(now=T0 + HOUR * 3) == []
    set_status(host, Status.FAILED)
    assert await host.ticks.sleep_idle(now=T0 + HOUR * 3) == []
    set_status(host, Status.READY)
    with host.rt.db.session() as session:  # a row made before sleep_after existed
        row = session.get(Environment, env.id)
        assert row is not None
        row.ttl = {k: v for k, v in row.ttl.items() if k != "sleep_after"}
        session.add(row)
        session.commit()
    assert live(host).sleep_due_at is None
    assert await host.ticks.sleep_idle(now=T0 + HOUR * 3) == []


async def test_a_lagging_sleep_due_at_is_corrected_not_slept_on(
    host: CommandHost, manual: clock.ManualClock
) -> None:
    """A writer that moves only last_activity_at (a Core UPDATE) must not make it sleep."""
    env = live(host)
    with host.rt.db.session() as session:
        session.exec(
            update(Environment)
            .where(col(Environment.id) == env.id)
            .values(last_activity_at=T0 + HOUR)
        )
        session.commit()
    assert await host.ticks.sleep_idle(now=T0 + HOUR + timedelta(minutes=30)) == []
    assert live(host).sleep_due_at == T0 + HOUR * 2  # corrected: no longer a candidate
    assert await host.ticks.sleep_idle(now=T0 + HOUR * 2) == [env.id]


async def test_a_push_keeps_it_awake(host: CommandHost, manual: clock.ManualClock) -> None:
    env = live(host)
    manual.advance(timedelta(minutes=50))
    host.fake.add_pull(REPO, 1, "b" * 40, "feature/1", author="alice")
    payload = host.fake.pull_request_event("synchronize", REPO, 1)
    payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
    assert await host.workers.intent.handle("pull_request", payload)
    assert live(host).last_activity_at == T0 + timedelta(minutes=50)
    set_status(host, Status.READY)
    assert await host.ticks.sleep_idle(now=T0 + HOUR + timedelta(minutes=10)) == []
    assert await host.ticks.sleep_idle(now=T0 + HOUR + timedelta(minutes=50)) == [env.id]


@pytest.mark.parametrize("command", ["/runbot status", "/runbot help", "/runbot extend 1h"])
async def test_a_command_keeps_it_awake(
    host: CommandHost, manual: clock.ManualClock, command: str
) -> None:
    env = live(host)
    manual.advance(timedelta(minutes=50))
    await host.comment(command, "alice")
    assert live(host).last_activity_at == T0 + timedelta(minutes=50)
    assert await host.ticks.sleep_idle(now=T0 + HOUR + timedelta(minutes=10)) == []
    assert await host.ticks.sleep_idle(now=T0 + HOUR + timedelta(minutes=50)) == [env.id]


async def test_traffic_keeps_it_awake(host: CommandHost, manual: clock.ManualClock) -> None:
    env = live(host)
    seen = manual.advance(timedelta(minutes=50))
    assert host.rt.lifecycle.record_traffic({env.id: seen}) == 1
    assert await host.ticks.sleep_idle(now=T0 + HOUR + timedelta(minutes=10)) == []
    assert await host.ticks.sleep_idle(now=T0 + HOUR + timedelta(minutes=50)) == [env.id]


async def test_wake_by_command_then_sleep_again_after_sleep_after(
    host: CommandHost, manual: clock.ManualClock
) -> None:
    env = live(host)
    assert await host.ticks.sleep_idle(now=manual.set(T0 + HOUR)) == [env.id]
    set_status(host, Status.SLEEPING)
    manual.set(T0 + HOUR * 3)
    await host.comment("/runbot wake", "alice")
    row = live(host)
    assert (row.desired, row.sleep_reason, row.last_activity_at) == (
        Desired.PRESENT,
        None,
        T0 + HOUR * 3,
    )
    set_status(host, Status.READY)
    assert await host.ticks.sleep_idle(now=T0 + HOUR * 3 + timedelta(minutes=59)) == []
    assert await host.ticks.sleep_idle(now=T0 + HOUR * 4) == [env.id]


def test_the_tick_asks_the_index_for_candidates_only(tmp_path: Path) -> None:
    """SQLite's plan for the tick's query walks ix_environment_sleep_due, not the table."""
    from app.runtime import build_runtime
    from tests.conftest import make_settings

    rt = build_runtime(make_settings(tmp_path))
    try:
        with rt.db.engine.connect() as connection:
            plan = connection.execute(
                text(
                    "EXPLAIN QUERY PLAN SELECT id, ttl, last_activity_at FROM environment"
                    " WHERE desired = 'present' AND sleep_due_at <= :now AND status = 'ready'"
                ),
                {"now": "2030-01-01 00:00:00"},
            ).all()
        detail = " ".join(str(row[-1]) for row in plan)
        assert "ix_environment_sleep_due" in detail, detail
    finally:
        rt.db.dispose()


# --- a dashboard/API action is activity -----------------------------------------------------


def test_a_dashboard_action_keeps_it_awake(
    tmp_path: Path, fake_github: FakeGitHub, database_url: str, manual: clock.ManualClock
) -> None:
    token = "test-api-token-0123456789"
    fake_github.add_repo(REPO, files={"main": {".runbot.yml": "stack: local\n"}})
    fake_github.add_installation(INSTALLATION, "octo-org", [REPO])
    port = free_port()
    settings = sign_in_settings(tmp_path, fake_github, database_url, port, api_token=token)
    app = create_app(settings, background=False)
    db = app.state.runtime.db
    seed_silo(db, "shared", {})
    seed_env(db, "pr-1-aaaaa", REPO, 1, "shared", slot=0, installation_id=INSTALLATION)
    with db.session() as session:
        row = session.get(Environment, "pr-1-aaaaa")
        assert row is not None
        row.ttl = {**row.ttl, "sleep_after": 3600.0}
        row.last_activity_at = T0 - HOUR * 2  # idle for two hours already
        session.add(row)
        session.commit()
    with WebServer(app, port) as server:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=server.url, headers=headers, trust_env=False) as client:
            # Destroy touches nothing else that counts as activity: the action itself must.
            answer = client.post("/api/environments/pr-1-aaaaa/destroy")
            assert answer.status_code == 200, answer.text
    with db.session() as session:
        row = session.get(Environment, "pr-1-aaaaa")
        assert row is not None and row.last_activity_at == T0


# --- the real scheduler on a moved clock ----------------------------------------------------


async def test_the_real_scheduler_follows_a_moved_clock(
    host: CommandHost, manual: clock.ManualClock
) -> None:
    """`register_ticks` jobs read the clock: moving it by hours sleeps, then reaps, at once."""
    env = live(host)
    assert env.expires_at == T0 + timedelta(hours=8)
    scheduler = AsyncIOScheduler()
    woken = asyncio.Event()
    host.ticks.wake = woken.set

    async def resync() -> None:
        return None

    register_ticks(scheduler, host.ticks, resync, 0.05)
    assert {job.id for job in scheduler.get_jobs()} >= {"sleep_idle", "reap_expired"}
    scheduler.start()
    try:
        await asyncio.sleep(0.3)
        assert live(host).desired == Desired.PRESENT  # an hour has not passed on the clock
        manual.advance(HOUR * 2)
        await asyncio.wait_for(woken.wait(), timeout=10)
        row = live(host)
        assert (row.desired, row.sleep_reason) == (Desired.SUSPENDED, "idle")
        woken.clear()
        manual.advance(HOUR * 7)  # past the expiry, which sleep kept
        await asyncio.wait_for(woken.wait(), timeout=10)
        await asyncio.sleep(0.1)
        row = host.rt.lifecycle.get_environment(env.id)
        assert (row.desired, row.reason) == (Desired.ABSENT, "expired")
    finally:
        scheduler.shutdown(wait=False)
