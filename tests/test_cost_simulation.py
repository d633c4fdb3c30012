"""The cost benchmark's simulated month: the same seed gives the same events, all of them in
working hours (weekdays 09:00-18:00 UTC), each PR opening before its pushes, visits and close."""

from __future__ import annotations

from bench.cost import DAYS, PRS, simulate


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
