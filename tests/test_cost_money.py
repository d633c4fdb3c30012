"""The pure side of money: rates read from untrusted outputs, and spend over spans."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest

from app.cost.money import (
    Span,
    current_hourly,
    money,
    month_start,
    month_to_date,
    next_month_start,
    per_day,
    split_at_claim,
)
from app.cost.rates import (
    ASLEEP_STATUSES,
    AWAKE_STATUSES,
    UNBILLED_STATUSES,
    Rates,
    hourly_for,
    read_rates,
)
from app.lifecycle.states import MAY_HOLD_RESOURCES, Status

T0 = datetime(2026, 5, 31, 23, 30, tzinfo=UTC)


def out(value: object, sensitive: bool = False) -> dict[str, object]:
    return {"value": value, "sensitive": sensitive}


def test_every_status_bills_at_one_rate() -> None:
    assert {s.value for s in MAY_HOLD_RESOURCES} - {"sleeping"} == AWAKE_STATUSES
    assert {Status.SLEEPING.value} == ASLEEP_STATUSES
    assert {s.value for s in Status} == AWAKE_STATUSES | ASLEEP_STATUSES | UNBILLED_STATUSES
    rates = Rates(2.0, 0.5, True)
    assert hourly_for("ready", rates) == 2.0 and hourly_for("destroying", rates) == 2.0
    assert hourly_for("sleeping", rates) == 0.5
    assert hourly_for("queued", rates) == 0.0 and hourly_for("destroyed", rates) == 0.0


def test_rates_from_outputs() -> None:
    assert read_rates({}) == (Rates(), [])
    assert read_rates({"url": out("http://x")}) == (Rates(), [])
    rates, warnings = read_rates({"runbot_hourly_cost": out(0.25)})
    assert rates == Rates(0.25, 0.0, True) and warnings == []  # asleep defaults to 0
    rates, _ = read_rates({"runbot_hourly_cost": out(1), "runbot_hourly_cost_asleep": out(0.1)})
    assert rates == Rates(1.0, 0.1, True)


@pytest.mark.parametrize(
    ("item", "says"),
    [
        (out("0.05"), "not a number (str)"),
        (out(True), "not a number (bool)"),
        (out(None), "not a number (NoneType)"),
        (out([1]), "not a number (list)"),
        (out(float("nan")), "not an hourly rate"),
        (out(float("inf")), "not an hourly rate"),
        (out(-0.01), "not an hourly rate"),
        (out(1e6 + 1), "not an hourly rate"),
        (out(0.3, sensitive=True), "is sensitive"),
        ("0.3", "malformed"),
    ],
)
def test_untrusted_rates_count_as_zero_with_a_warning(item: object, says: str) -> None:
    rates, warnings = read_rates({"runbot_hourly_cost": item, "runbot_hourly_cost_asleep": out(1)})
    assert rates.awake == 0.0 and rates.asleep == 1.0
    assert len(warnings) == 1 and says in warnings[0] and "counts it as 0" in warnings[0]


def span(hourly: float, start: datetime, end: datetime | None, repo: str = "o/a") -> Span:
    return Span("pr-1-x", repo, "s", "ready", hourly, start, end)


def test_money_is_rate_times_time_cut_at_windows_and_days() -> None:
    now = T0 + timedelta(hours=2)
    spans = [span(1.0, T0, T0 + timedelta(hours=1)), span(3.0, T0 + timedelta(hours=1), None)]
    assert money(spans, now) == pytest.approx(4.0)
    assert current_hourly(spans) == 3.0
    assert month_start(now) == datetime(2026, 6, 1, tzinfo=UTC)
    assert next_month_start(now) == datetime(2026, 7, 1, tzinfo=UTC)
    assert next_month_start(datetime(2026, 12, 31, 23, tzinfo=UTC)) == datetime(
        2027, 1, 1, tzinfo=UTC
    )
    assert month_to_date(spans, now) == {"o/a": pytest.approx(3.5)}
    assert per_day(spans, now, T0 - timedelta(days=1)) == {
        ("o/a", date(2026, 5, 31)): pytest.approx(0.5),
        ("o/a", date(2026, 6, 1)): pytest.approx(3.5),
    }
    # A window that starts mid-span counts only its part; a clock set back counts nothing.
    assert money(spans, now, since=T0 + timedelta(minutes=90)) == pytest.approx(1.5)
    assert money([span(5.0, now, None)], now - timedelta(hours=1)) == 0.0


def test_a_long_span_splits_over_every_day() -> None:
    start = datetime(2026, 1, 1, 12, tzinfo=UTC)
    days = per_day([span(1.0, start, None)], start + timedelta(days=3), start)
    assert sorted(days) == [("o/a", date(2026, 1, d)) for d in (1, 2, 3, 4)]
    assert [round(days[k], 6) for k in sorted(days)] == [12.0, 24.0, 24.0, 12.0]
    assert current_hourly([]) == 0.0


def test_a_pool_instance_is_the_pools_until_its_claim_and_the_prs_after() -> None:
    hour = timedelta(hours=1)
    before = Span("warm-a", "o/r", "s", "creating", 1.0, T0, T0 + hour)
    across = Span("warm-a", "o/r", "s", "ready", 2.0, T0 + hour)  # open, claimed at +3h
    unclaimed = Span("warm-b", "o/r", "s", "ready", 2.0, T0)
    pr = Span("pr-1-x", "o/r", "s", "ready", 2.0, T0)
    pool, prs = split_at_claim(
        [before, across, unclaimed, pr], {"warm-a": T0 + 3 * hour, "warm-b": None}
    )
    assert pool == [before, replace(across, ended_at=T0 + 3 * hour), unclaimed]
    assert prs == [replace(across, started_at=T0 + 3 * hour), pr]
    now = T0 + 5 * hour
    assert money(pool, now) == pytest.approx(1.0 + 4.0 + 10.0)
    assert money(prs, now) == pytest.approx(4.0 + 10.0)
    assert money(pool, now) + money(prs, now) == pytest.approx(money([before, across], now) + 20)
