"""The cost ledger: real applies on a priced stack, on SQLite and PostgreSQL, on a set clock.

Every status change closes the open span and opens one at the new status's rate; money is
rate x time per span, split per UTC day, and month-to-date; untrusted cost outputs count as 0
with a warning in the run's log.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import col, select

from app import clock
from app.clock import ManualClock
from app.db import ledger
from app.db.models import CostSpan, Environment, RunLogChunk
from app.lifecycle.states import Status
from app.runtime import Runtime, build_runtime
from tests.conftest import make_settings
from tests.helpers import converge_sync, env_settled, silo_ready

pytestmark = pytest.mark.engine

STACKS = Path(__file__).parent / "fixtures" / "stacks-cost"
START = datetime(2026, 3, 31, 22, 0, tzinfo=UTC)


def spans_of(rt: Runtime, env_id: str) -> list[CostSpan]:
    with rt.db.session() as session:
        query = select(CostSpan).where(CostSpan.environment_id == env_id)
        return list(session.exec(query.order_by(col(CostSpan.id))))


def log_of(rt: Runtime, env_id: str) -> str:
    env = rt.lifecycle.get_environment(env_id)
    with rt.db.session() as session:
        chunks = session.exec(select(RunLogChunk).where(RunLogChunk.run_id == env.last_run_id))
        return "".join(chunk.text for chunk in chunks)


def settle(rt: Runtime, env_id: str) -> Environment:
    converge_sync(rt, env_settled(rt, env_id))
    return rt.lifecycle.get_environment(env_id)


def priced_env(rt: Runtime, pr: int, hourly: object) -> Environment:
    """A settled environment of the priced stack that outputs ``hourly``."""
    env = rt.lifecycle.create_environment(
        "priced-default", "octo/app", pr, "a" * 7, "f", "alice", vars={"hourly": hourly}
    )
    return settle(rt, env.id)


@pytest.fixture
def priced(tmp_path: Path, database_url: str) -> Runtime:
    rt = build_runtime(make_settings(tmp_path, database_url, templates_dir=STACKS))
    rt.lifecycle.create_silo("priced-default", "priced", {})
    converge_sync(rt, silo_ready(rt, "priced-default"))
    return rt


def test_money_follows_each_status_and_rate(priced: Runtime) -> None:
    rt = priced
    with clock.using(ManualClock(START)) as manual:
        assert isinstance(manual, ManualClock)
        env = rt.lifecycle.create_environment(
            "priced-default", "octo/app", 7, "a" * 7, "f", "alice", vars={"hourly": 0.5}
        )
        assert [(s.status, s.hourly) for s in spans_of(rt, env.id)] == [("pending", 0.0)]
        env = settle(rt, env.id)
        assert env.status == Status.READY
        # A first create has no outputs yet: CREATING bills 0; READY at the output's rate.
        assert [(s.status, s.hourly) for s in spans_of(rt, env.id)][-2:] == [
            ("creating", 0.0),
            ("ready", 0.5),
        ]
        assert [s.ended_at is None for s in spans_of(rt, env.id)][-2:] == [False, True]

        manual.advance(timedelta(hours=3))  # across midnight into April
        now = clock.now()
        with rt.db.session() as session:
            cost = ledger.cost_of(session, env.id, now)
            assert cost.so_far == pytest.approx(1.5) and cost.hourly == 0.5
            daily = ledger.daily_by_repository(session, START - timedelta(days=1), now)
            assert daily == {
                ("octo/app", date(2026, 3, 31)): pytest.approx(1.0),
                ("octo/app", date(2026, 4, 1)): pytest.approx(0.5),
            }
            # The calendar month restarted at midnight UTC.
            assert ledger.month_to_date_by_repository(session, now) == {
                "octo/app": pytest.approx(0.5)
            }
            assert ledger.month_to_date_by_silo(session, now) == {
                "priced-default": pytest.approx(0.5)
            }

        rt.lifecycle.set_suspended(env.id, True)
        env = settle(rt, env.id)
        assert env.status == Status.SLEEPING
        assert [(s.status, s.hourly) for s in spans_of(rt, env.id)][-2:] == [
            ("updating", 0.5),  # the apply runs with the last outputs' rate
            ("sleeping", 0.1),
        ]
        manual.advance(timedelta(hours=10))
        with rt.db.session() as session:
            cost = ledger.cost_of(session, env.id, clock.now())
        assert cost.so_far == pytest.approx(2.5) and cost.hourly == pytest.approx(0.1)

        rt.lifecycle.destroy_environment(env.id)
        env = settle(rt, env.id)
        assert env.status == Status.DESTROYED
        assert all(s.ended_at is not None for s in spans_of(rt, env.id))
        manual.advance(timedelta(days=3))
        with rt.db.session() as session:
            cost = ledger.cost_of(session, env.id, clock.now())
        # Destroyed: the record stays, nothing more accrues.
        assert cost.so_far == pytest.approx(2.5) and cost.hourly == 0.0


@pytest.mark.parametrize(
    ("value", "shown"),
    [("lots", "is not a number"), (-1, "is -1, not an hourly rate"), (1e9, "is 1000000000")],
)
def test_untrusted_cost_outputs_count_as_zero_with_a_warning(
    priced: Runtime, value: object, shown: str
) -> None:
    rt = priced
    with clock.using(ManualClock(START)) as manual:
        assert isinstance(manual, ManualClock)
        env = priced_env(rt, 8, value)
        assert env.status == Status.READY, env.reason
        assert f"the output `runbot_hourly_cost` {shown}" in log_of(rt, env.id)
        assert spans_of(rt, env.id)[-1].hourly == 0.0
        manual.advance(timedelta(hours=5))
        with rt.db.session() as session:
            assert ledger.cost_of(session, env.id, clock.now()).so_far == 0.0


def test_failed_environment_keeps_billing_what_it_holds(priced: Runtime) -> None:
    rt = priced
    with clock.using(ManualClock(START)) as manual:
        assert isinstance(manual, ManualClock)
        env = priced_env(rt, 9, 2)
        rt.lifecycle.update_environment(env.id, vars={"hourly": 2, "fail": True})
        env = settle(rt, env.id)
        assert env.status == Status.FAILED
        # FAILED may hold resources: it bills at the last known awake rate.
        assert [(s.status, s.hourly) for s in spans_of(rt, env.id)][-1] == ("failed", 2.0)
        manual.advance(timedelta(minutes=30))
        with rt.db.session() as session:
            assert ledger.cost_of(session, env.id, clock.now()).so_far == pytest.approx(1.0)


def test_new_outputs_at_the_same_status_reopen_the_span(priced: Runtime) -> None:
    """A write that changes only the outputs (same status) moves the rate too."""
    rt = priced
    with clock.using(ManualClock(START)) as manual:
        assert isinstance(manual, ManualClock)
        env = priced_env(rt, 10, 1)
        manual.advance(timedelta(hours=1))
        with rt.db.session() as session:
            row = session.get(Environment, env.id)
            assert row is not None
            row.outputs = {**row.outputs, "runbot_hourly_cost": {"value": 3, "sensitive": False}}
            session.add(row)
            session.commit()
            row.reason = "unrelated"  # neither status nor outputs: no new span
            session.add(row)
            session.commit()
        manual.advance(timedelta(hours=1))
        assert [(s.status, s.hourly) for s in spans_of(rt, env.id)][-2:] == [
            ("ready", 1.0),
            ("ready", 3.0),
        ]
        with rt.db.session() as session:
            cost = ledger.cost_of(session, env.id, clock.now())
        assert cost.so_far == pytest.approx(4.0) and cost.hourly == 3.0
