"""Money: what the cost ledger and the budget tick cost runbot itself.

- Budget tick at 10,000 environments: `BudgetTick.tick` (month-to-date per repository and
  silo from the ledger, with a budget on every repository) against the scheduler interval,
  the same target as the other ticks (<= 1%). Each environment has three spans this month.
- Ledger writes: an ORM status change of an environment with the ledger hook against the same
  change with the hook removed, alternating trials: the hook's share of every status change.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import event, insert

from app.db.models import CostSpan, Environment, Silo, _keep_cost_ledger, utcnow
from app.policy.load import parse_policy
from app.schedule.budgets import BudgetTick
from bench.harness import Context, runtime_for
from bench.scale import INTERVAL, seed
from bench.stats import Row, check, fmt_seconds, median, ratio

NAME = "money"
COUNT = 10_000
POLICY = """\
default:
  budget: {monthly: 1000000000}
silos:
  bench:
    budget: {monthly: 1000000000}
"""


def seed_spans(rt: Any, count: int) -> None:
    """Three spans per environment this month: two closed, one open (Core: no hook)."""
    now = utcnow()
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    step = (now - start) / 4
    rows = []
    for index in range(count):
        env_id, repo = f"pr-{index}-bench", f"org/repo-{index % 50}"
        for part in range(3):
            rows.append(
                {
                    "environment_id": env_id,
                    "repository": repo,
                    "silo_name": "bench",
                    "status": ("creating", "ready", "sleeping")[part],
                    "hourly": (0.0, 0.05, 0.01)[part],
                    "started_at": start + step * part,
                    "ended_at": None if part == 2 else start + step * (part + 1),
                }
            )
    with rt.db.engine.begin() as conn:
        conn.execute(insert(CostSpan.__table__), rows)  # type: ignore[attr-defined]


def time_budget_tick(ctx: Context, count: int, repeats: int) -> Row:
    data = ctx.scratch(f"{NAME}-tick") / "data"
    rt = runtime_for(data)
    seed(rt, count)
    seed_spans(rt, count)
    policy = parse_policy(POLICY)
    tick = BudgetTick(rt.db, rt.lifecycle, lambda: policy)
    samples = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        asyncio.run(tick.tick())
        samples.append(time.perf_counter() - started)
    rt.db.dispose()
    took = median(samples[1:])
    share = 100.0 * took / INTERVAL
    return Row(
        NAME,
        f"sqlite: budget tick at {count} environments / interval",
        fmt_seconds(took),
        f"{INTERVAL:.0f} s",
        share,
        "<= 1%",
        check(share, 1.0),
        unit="%",
    )


def time_ledger(ctx: Context, changes: int, trials: int) -> Row:
    data = ctx.scratch(f"{NAME}-ledger") / "data"
    rt = runtime_for(data)
    with rt.db.session() as session:
        session.add(Silo(name="bench", stack="local", status="ready"))
        session.commit()
        for index in range(changes):
            session.add(
                Environment(
                    id=f"pr-{index}-ledger",
                    silo_name="bench",
                    stack="local",
                    repository="org/app",
                    pr_number=index,
                    status="ready",
                    outputs={"runbot_hourly_cost": {"value": 0.05, "sensitive": False}},
                )
            )
        session.commit()
    statuses = ("updating", "ready")

    def flip(round_: int) -> float:
        started = time.perf_counter()
        for index in range(changes):
            with rt.db.session() as session:
                env = session.get(Environment, f"pr-{index}-ledger")
                assert env is not None
                env.status = statuses[round_ % 2]
                env.updated_at = utcnow() + timedelta(microseconds=round_)
                session.add(env)
                session.commit()
        return (time.perf_counter() - started) / changes

    with_hook, without = [], []
    for trial in range(trials):
        with_hook.append(flip(2 * trial))
        event.remove(Environment, "after_update", _keep_cost_ledger)
        try:
            without.append(flip(2 * trial + 1))
        finally:
            event.listen(Environment, "after_update", _keep_cost_ledger)
    rt.db.dispose()
    measured, baseline = median(with_hook), median(without)
    return Row(
        NAME,
        "sqlite: status change with the ledger / without",
        fmt_seconds(measured),
        fmt_seconds(baseline),
        ratio(measured, baseline),
        "-",
        None,
    )


def run(ctx: Context) -> list[Row]:
    count = 2_000 if ctx.quick else COUNT
    rows = [time_budget_tick(ctx, count, 3 if ctx.quick else 7)]
    rows.append(time_ledger(ctx, 100 if ctx.quick else 300, 3 if ctx.quick else 7))
    if count != COUNT:
        ctx.notes.append(f"money: quick mode uses {count} environments instead of {COUNT}")
    return rows
