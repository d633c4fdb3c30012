"""The usage page and `GET /api/usage`: environment-hours and money per repository per UTC
day, with the warm pool's instances counted apart, so an operator sees what the pool costs.

A PR's hours run from its environment's creation (for an instance taken from the pool, from
its claim) to its destruction; a pool instance's hours and money come from the cost ledger,
up to its claim.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func
from sqlalchemy import select as sql_select
from sqlmodel import col, select

from app.db.models import Environment, Silo
from app.db.session import Database
from app.lifecycle.pool import CLAIMED, CLAIMING, WARM, of_a_pr
from app.lifecycle.states import Status
from app.web.auth import Principal
from app.web.money import spend_per_day
from app.web.views import UsageOut, UsageSeries
from app.web.visible import visible, visible_silos

__all__ = ["usage_of"]


def _hours_by_day(
    rows: Sequence[Any],
    start: datetime,
    now: datetime,
    days: int,
) -> dict[str, list[float]]:
    """Hours per repository per day of (repository, created, destroyed, status, updated)."""
    first_day = start.date()
    hours: dict[str, list[float]] = {}
    for repository, created, destroyed, status, updated in rows:
        end = destroyed or (updated if status == Status.DESTROYED else now)
        begin, end = max(created, start), min(end, now)
        series = hours.setdefault(repository, [0.0] * days)
        while begin < end:
            index = (begin.date() - first_day).days
            next_midnight = datetime(begin.year, begin.month, begin.day, tzinfo=UTC) + timedelta(
                days=1
            )
            stop = min(end, next_midnight)
            if 0 <= index < days:
                series[index] += (stop - begin).total_seconds() / 3600
            begin = stop
    return hours


def _series(
    hours: dict[str, list[float]], money: dict[str, list[float]], days: int
) -> list[UsageSeries]:
    """The busiest repository first."""
    ordered = sorted(hours.items(), key=lambda item: (-sum(item[1]), item[0].lower()))
    return [
        UsageSeries(
            repository=repo,
            hours=[round(h, 2) for h in values],
            total=round(sum(values), 2),
            money=[round(m, 2) for m in money.get(repo, [0.0] * days)],
            money_total=round(sum(money.get(repo, [])), 2),
        )
        for repo, values in ordered
    ]


def usage_of(
    db: Database, principal: Principal, currency: str, now: datetime, days: int
) -> UsageOut:
    """Environment-hours per repository per UTC day over the last ``days`` days."""
    first_day = (now - timedelta(days=days - 1)).date()
    start = datetime(first_day.year, first_day.month, first_day.day, tzinfo=UTC)
    day_list = [first_day + timedelta(days=i) for i in range(days)]
    in_window = (col(Environment.destroyed_at).is_(None)) | (col(Environment.destroyed_at) >= start)
    query = visible(
        # SQLAlchemy's own select: sqlmodel's is typed for at most four columns.
        sql_select(
            col(Environment.repository),
            col(Environment.created_at),
            col(Environment.destroyed_at),
            col(Environment.status),
            col(Environment.updated_at),
        ).where(col(Environment.created_at) < now, in_window, of_a_pr()),
        principal,
    )
    pool_query = visible(
        sql_select(
            col(Environment.id), col(Environment.repository), col(Environment.claimed_at)
        ).where(col(Environment.pool_state).in_([WARM, CLAIMING, CLAIMED]), in_window),
        principal,
    )
    count_query = visible(
        select(Environment.status, func.count())
        .where(Environment.status != Status.DESTROYED, of_a_pr())
        .group_by(Environment.status),
        principal,
    )
    warm_query = visible(
        select(func.count())
        .select_from(Environment)
        .where(Environment.status != Status.DESTROYED, Environment.pool_state == WARM),
        principal,
    )
    silo_query = visible_silos(
        select(func.count()).select_from(Silo).where(Silo.status != Status.DESTROYED),
        principal,
    )
    counts: dict[str, int] = {}
    silos = warm = 0
    with db.session() as session:
        rows = session.execute(query).all() if query is not None else []
        pool_rows = session.execute(pool_query).all() if pool_query is not None else []
        if count_query is not None:
            counts = {status: n for status, n in session.exec(count_query).all()}
        if warm_query is not None:
            warm = session.exec(warm_query).one()
        if silo_query is not None:
            silos = session.exec(silo_query).one()
    hours = _hours_by_day(rows, start, now, days)
    pooled = {env_id: claimed for env_id, _, claimed in pool_rows}
    repositories = sorted(set(hours) | {repository for _, repository, _ in pool_rows})
    spend = spend_per_day(db, repositories, pooled, start, now, day_list)
    pool_hours = spend.pool_hours
    for _, repository, _ in pool_rows:  # an instance not yet billed still shows, at 0 h
        pool_hours.setdefault(repository, [0.0] * days)
    return UsageOut(
        days=day_list,
        series=_series(hours, spend.money, days),
        pool=_series(pool_hours, spend.pool_money, days),
        currency=currency,
        counts=counts,
        live=sum(counts.values()),
        pool_instances=warm,
        silos=silos,
    )
