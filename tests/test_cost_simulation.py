"""The cost benchmark's simulated month: the same seed gives the same events, all of them in
working hours (weekdays 09:00-18:00 UTC), each PR opening before its pushes, visits and close."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from app.ttl.policy import TTLPolicy
from bench.cost import ASLEEP_RATE, AWAKE_RATE, DAYS, PRS, SLEEP_AFTER, replay, simulate
from bench.harness import Context


def test_the_same_seed_gives_the_same_month_and_another_seed_another() -> None:
    assert simulate(DAYS, PRS) == simulate(DAYS, PRS)
    assert simulate(DAYS, PRS) != simulate(DAYS, PRS, seed=18)


def test_events_fall_in_working_hours_and_follow_each_prs_opening() -> None:
    events = simulate(DAYS, PRS)
    assert {e.kind for e in events} == {"open", "push", "traffic", "close"}
    opened = {e.pr: e.at for e in events if e.kind == "open"}
    assert len(opened) == PRS
    for event in events:
        assert event.at >= opened[event.pr]
        if event.kind != "close":  # a close may come up to two hours after the day's last push
            assert event.at.weekday() < 5 and 9 <= event.at.hour < 18, event
    visited = {e.pr for e in events if e.kind == "traffic"}
    assert 0 < len(visited) < PRS  # some environments get traffic, not all


def test_a_short_replay_sleeps_saves_and_keeps_every_hour_on_the_ledger(tmp_path: Path) -> None:
    """Three simulated days, twice, on the real database and ticks: sleep moves awake hours to
    asleep ones, no hour is lost or invented, and the money follows the rates."""
    ctx = Context(quick=True, root=tmp_path)
    events = simulate(3, 8)
    never = TTLPolicy(idle=timedelta(hours=48), max=timedelta(days=7))
    sleepy = TTLPolicy(idle=timedelta(hours=48), max=timedelta(days=7), sleep_after=SLEEP_AFTER)
    without = replay(ctx, "never", never, events, 3)
    with_sleep = replay(ctx, "sleepy", sleepy, events, 3)
    assert without["asleep_hours"] == 0 and with_sleep["asleep_hours"] > 0
    assert with_sleep["awake_hours"] < without["awake_hours"]
    total = with_sleep["awake_hours"] + with_sleep["asleep_hours"]
    assert abs(total - without["awake_hours"]) < 0.5  # the same lifetimes, split differently
    expected = AWAKE_RATE * with_sleep["awake_hours"] + ASLEEP_RATE * with_sleep["asleep_hours"]
    assert abs(with_sleep["money"] - expected) < 0.01
    assert with_sleep["money"] < without["money"]
