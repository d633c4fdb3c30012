"""Money in the dashboard and the API: environments' cost, and spend per repository per day.

Read from the cost ledger (`app.db.ledger`); an environment of a stack without a cost output
shows no money (None), not a made-up zero.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

from app.cost.money import EnvironmentCost
from app.cost.rates import read_rates
from app.db.ledger import costs_of, daily_by_repository
from app.db.models import Environment
from app.db.session import Database


def environment_costs(
    db: Database, envs: Iterable[Environment], now: datetime
) -> dict[str, EnvironmentCost]:
    """The cost of each environment (one ledger query for all of them)."""
    with db.session() as session:
        return costs_of(session, [env.id for env in envs], now)


def cost_fields(env: Environment, cost: EnvironmentCost | None, currency: str) -> dict[str, Any]:
    """`EnvironmentOut`'s money: shown once the stack output a cost or the ledger holds some."""
    if cost is None or not (read_rates(env.outputs)[0].declared or cost.so_far > 0):
        return {}
    return {
        "cost_so_far": round(cost.so_far, 4),
        "hourly_cost": cost.hourly,
        "currency": currency,
    }


def money_per_day(
    db: Database, repositories: list[str], start: datetime, now: datetime, days: list[date]
) -> dict[str, list[float]]:
    """Money per repository on each of ``days`` (UTC), from ``start`` up to ``now``."""
    if not repositories:
        return {}
    with db.session() as session:
        spent = daily_by_repository(session, start, now, repositories)
    index = {day: i for i, day in enumerate(days)}
    out: dict[str, list[float]] = {}
    for (repository, day), amount in spent.items():
        if day in index:
            out.setdefault(repository, [0.0] * len(days))[index[day]] += amount
    return out
