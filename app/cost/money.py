"""Adding up spend: rate x time over ledger spans, cut at any window and per UTC day.

A span is one stretch of one environment in one status at one rate; an open span
(``ended_at`` None) runs up to ``now``. Everything takes ``now`` so tests and the simulated
month need no real time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta

HOUR = 3600.0


@dataclass(frozen=True)
class Span:
    environment_id: str
    repository: str
    silo_name: str
    status: str
    hourly: float
    started_at: datetime
    ended_at: datetime | None = None


@dataclass(frozen=True)
class EnvironmentCost:
    """What one environment has cost, and costs per hour now."""

    so_far: float
    hourly: float


def month_start(now: datetime) -> datetime:
    """The first instant of ``now``'s calendar month, UTC: budgets reset then."""
    utc = now.astimezone(UTC)
    return utc.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_month_start(now: datetime) -> datetime:
    start = month_start(now)
    return (start + timedelta(days=32)).replace(day=1)


def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def hours_in(span: Span, start: datetime | None, end: datetime) -> float:
    """Hours of ``span`` inside [start, end) (start None: from its beginning)."""
    begin = span.started_at if start is None else max(span.started_at, start)
    finish = min(span.ended_at or end, end)
    seconds = (finish - begin).total_seconds()
    return seconds / HOUR if seconds > 0 else 0.0


def money(spans: Iterable[Span], now: datetime, since: datetime | None = None) -> float:
    """Money of ``spans`` from ``since`` (None: ever) up to ``now``."""
    return sum(span.hourly * hours_in(span, since, now) for span in spans)


def current_hourly(spans: Iterable[Span]) -> float:
    """The rate of the open span (0 when none is open: destroyed, or never billed)."""
    rate = 0.0
    latest: datetime | None = None
    for span in spans:
        if span.ended_at is None and (latest is None or span.started_at > latest):
            rate, latest = span.hourly, span.started_at
    return rate


def environment_cost(spans: Iterable[Span], now: datetime) -> EnvironmentCost:
    items = list(spans)
    return EnvironmentCost(money(items, now), current_hourly(items))


def per_environment(spans: Iterable[Span], now: datetime) -> dict[str, EnvironmentCost]:
    grouped: dict[str, list[Span]] = defaultdict(list)
    for span in spans:
        grouped[span.environment_id].append(span)
    return {env_id: environment_cost(items, now) for env_id, items in grouped.items()}


def per_day(
    spans: Iterable[Span],
    now: datetime,
    since: datetime,
    key: Callable[[Span], str] = lambda span: span.repository,
) -> dict[tuple[str, date], float]:
    """Money per (key, UTC day) from ``since`` to ``now``: a span across midnight is split."""
    out: dict[tuple[str, date], float] = defaultdict(float)
    for span in spans:
        if span.hourly <= 0:
            continue
        begin = max(span.started_at, since)
        finish = min(span.ended_at or now, now)
        day = begin.astimezone(UTC).date()
        while begin < finish:
            cut = min(day_start(day + timedelta(days=1)), finish)
            out[(key(span), day)] += span.hourly * (cut - begin).total_seconds() / HOUR
            begin, day = cut, day + timedelta(days=1)
    return dict(out)


def split_at_claim(
    spans: Iterable[Span], pooled: Mapping[str, datetime | None]
) -> tuple[list[Span], list[Span]]:
    """(the warm pool's, the PRs') parts of ``spans``. ``pooled`` maps each pool instance to
    when a PR claimed it (None: still unclaimed); a span across the claim is cut there."""
    pool: list[Span] = []
    prs: list[Span] = []
    for span in spans:
        if span.environment_id not in pooled:
            prs.append(span)
            continue
        claimed = pooled[span.environment_id]
        if claimed is None or (span.ended_at is not None and span.ended_at <= claimed):
            pool.append(span)
        elif span.started_at >= claimed:
            prs.append(span)
        else:
            pool.append(replace(span, ended_at=claimed))
            prs.append(replace(span, started_at=claimed))
    return pool, prs


def hours_per_day(
    spans: Iterable[Span], now: datetime, since: datetime
) -> dict[tuple[str, date], float]:
    """Hours per (repository, UTC day), whatever the rate: ``per_day`` at one an hour."""
    return per_day([replace(span, hourly=1.0) for span in spans], now, since)


def month_to_date(
    spans: Iterable[Span],
    now: datetime,
    key: Callable[[Span], str] = lambda span: span.repository,
) -> dict[str, float]:
    """Money per key in ``now``'s calendar month (UTC) so far."""
    start = month_start(now)
    out: dict[str, float] = defaultdict(float)
    for span in spans:
        out[key(span)] += span.hourly * hours_in(span, start, now)
    return dict(out)


#: Currencies shown by their sign; any other code is written after the amount ("1.20 CHF").
SIGNS = {"USD": "$", "EUR": "€", "GBP": "£"}


def format_money(amount: float, currency: str = "USD") -> str:
    """``$1.20``, ``€0.05``, ``1.20 CHF``: two decimals (cents are what a preview costs)."""
    code = currency.upper()
    sign = SIGNS.get(code)
    text = f"{amount:,.2f}"
    return f"{sign}{text}" if sign else f"{text} {code}"


def format_rate(hourly: float, currency: str = "USD") -> str:
    """``$0.05/h``; a rate under a cent keeps enough decimals not to read as free."""
    if 0 < hourly < 0.01:
        code = currency.upper()
        sign = SIGNS.get(code)
        text = f"{hourly:.4f}"
        return (f"{sign}{text}" if sign else f"{text} {code}") + "/h"
    return format_money(hourly, currency) + "/h"


def cost_line(cost: EnvironmentCost, currency: str = "USD") -> str:
    """What the status comment says: ``≈ $1.20 so far · $0.05/h``."""
    return f"≈ {format_money(cost.so_far, currency)} so far · {format_rate(cost.hourly, currency)}"


def money_by_repository(spans: Iterable[Span], now: datetime) -> dict[str, float]:
    """All money ever per repository, up to ``now``."""
    out: dict[str, float] = defaultdict(float)
    for span in spans:
        out[span.repository] += span.hourly * hours_in(span, None, now)
    return dict(out)
