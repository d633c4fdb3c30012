"""Money in the dashboard and the API: environments' cost, and spend per repository per day.

Read from the cost ledger (`app.db.ledger`); an environment of a stack without a cost output
shows no money (None), not a made-up zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from app.cost.money import EnvironmentCost, hours_per_day, per_day, split_at_claim
from app.cost.rates import read_rates
from app.db.ledger import costs_of, spans
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


@dataclass(frozen=True)
class DailySpend:
    """Per repository, one value per day: the PRs' money, and the warm pool's money and
    hours (a claimed instance counts for the pool until its claim, for its PR after)."""

    money: dict[str, list[float]]
    pool_money: dict[str, list[float]]
    pool_hours: dict[str, list[float]]


def spend_per_day(
    db: Database,
    repositories: list[str],
    pooled: Mapping[str, datetime | None],
    start: datetime,
    now: datetime,
    days: list[date],
) -> DailySpend:
    """What ``repositories`` spent on each of ``days`` (UTC), from ``start`` up to ``now``;
    ``pooled``: the pool instances and when each was claimed (None: not yet)."""
    if not repositories:
        return DailySpend({}, {}, {})
    with db.session() as session:
        found = spans(session, since=start, repositories=repositories)
    pool, prs = split_at_claim(found, pooled)
    index = {day: i for i, day in enumerate(days)}

    def by_day(values: dict[tuple[str, date], float]) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for (repository, day), amount in values.items():
            if day in index:
                out.setdefault(repository, [0.0] * len(days))[index[day]] += amount
        return out

    return DailySpend(
        money=by_day(per_day(prs, now, start)),
        pool_money=by_day(per_day(pool, now, start)),
        pool_hours=by_day(hours_per_day(pool, now, start)),
    )
