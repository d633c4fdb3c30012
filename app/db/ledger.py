"""Reading the cost ledger: the spans `app.db.models` writes on every status change, as
`app.cost.money.Span` values for the pure arithmetic, and the sums every view asks for.

Queries select only spans that overlap the window asked about (open, or ended after its start),
through the (repository|silo, started_at) and (environment, ended_at) indexes.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime

from sqlalchemy import ColumnElement, or_
from sqlmodel import Session, col, select

from app.cost.money import (
    EnvironmentCost,
    Span,
    environment_cost,
    month_start,
    month_to_date,
    per_day,
    per_environment,
)
from app.db.models import CostSpan


def _span(row: CostSpan) -> Span:
    return Span(
        row.environment_id,
        row.repository,
        row.silo_name,
        row.status,
        row.hourly,
        row.started_at,
        row.ended_at,
    )


def _overlapping(since: datetime | None) -> ColumnElement[bool]:
    if since is None:
        return col(CostSpan.id).is_not(None)
    return or_(col(CostSpan.ended_at).is_(None), col(CostSpan.ended_at) > since)


def spans(
    session: Session,
    *,
    since: datetime | None = None,
    environment_ids: Iterable[str] | None = None,
    repositories: Iterable[str] | None = None,
    silos: Iterable[str] | None = None,
) -> list[Span]:
    """Spans overlapping [since, now), optionally of some environments, repositories, silos."""
    query = select(CostSpan).where(_overlapping(since))
    if environment_ids is not None:
        query = query.where(col(CostSpan.environment_id).in_(list(environment_ids)))
    if repositories is not None:
        query = query.where(col(CostSpan.repository).in_(list(repositories)))
    if silos is not None:
        query = query.where(col(CostSpan.silo_name).in_(list(silos)))
    return [_span(row) for row in session.exec(query)]


def cost_of(session: Session, env_id: str, now: datetime) -> EnvironmentCost:
    """Money one environment has cost so far, and its rate now."""
    return environment_cost(spans(session, environment_ids=[env_id]), now)


def costs_of(session: Session, env_ids: Iterable[str], now: datetime) -> dict[str, EnvironmentCost]:
    """`cost_of` for many environments in one query; absent ids have no spans."""
    ids = list(env_ids)
    if not ids:
        return {}
    return per_environment(spans(session, environment_ids=ids), now)


def daily_by_repository(
    session: Session, since: datetime, now: datetime, repositories: Iterable[str] | None = None
) -> dict[tuple[str, date], float]:
    return per_day(spans(session, since=since, repositories=repositories), now, since)


def month_to_date_by_repository(
    session: Session, now: datetime, repositories: Iterable[str] | None = None
) -> dict[str, float]:
    found = spans(session, since=month_start(now), repositories=repositories)
    return month_to_date(found, now)


def month_to_date_by_silo(
    session: Session, now: datetime, silos: Iterable[str] | None = None
) -> dict[str, float]:
    found = spans(session, since=month_start(now), silos=silos)
    return month_to_date(found, now, key=lambda span: span.silo_name)
