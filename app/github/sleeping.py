"""The status comment's sleep sentence: since when, why, and how to wake it (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from app.ttl.durations import format_duration

__all__ = ["sleep_note", "sleep_why", "wake_ways"]

_WHY = {
    "command": "put to sleep by a command (`/runbot sleep` or the dashboard)",
    "budget": "the monthly budget is reached",
}


def sleep_note(
    state: str,
    slept_at: datetime | None,
    reason: str | None,
    sleep_after: timedelta | None,
    *,
    url_wakes: bool,
    commands: bool,
) -> str | None:
    """``💤 Sleeping since 2030-03-04 14:05 UTC: idle for 2h (...). To wake it, open its URL
    or comment `/runbot wake`.`` Absolute times only, so the text stays the same until
    something changes: no edit of the comment every minute. None while awake."""
    if state == "sleeping" and slept_at is None:
        return _wake_hint("💤 Sleeping.", url_wakes, commands)  # slept before runbot kept when
    if slept_at is None or state not in ("sleeping", "ready", "updating"):
        return None
    why = sleep_why(reason, sleep_after)
    verb = "Sleeping" if state == "sleeping" else "Going to sleep"
    since = slept_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return _wake_hint(f"💤 **{verb} since {since}**: {why}.", url_wakes, commands)


def sleep_why(reason: str | None, sleep_after: timedelta | None) -> str:
    """Why it sleeps, for the comment and the dashboard alike."""
    if reason == "idle":
        idle = f" for {format_duration(sleep_after)}" if sleep_after else ""
        return f"idle{idle} (no push, command or request; `ttl.sleep_after`)"
    return _WHY.get(reason or "", "asked to sleep")


def wake_ways(url_wakes: bool, commands: bool) -> list[str]:
    """How to wake it: "open its URL" only when the stack says its URL wakes it (a silo
    ingress); the command when commands are available on the PR."""
    ways = ["open its URL"] if url_wakes else []
    if commands:
        ways.append("comment `/runbot wake`")
    return ways


def _wake_hint(first: str, url_wakes: bool, commands: bool) -> str:
    ways = wake_ways(url_wakes, commands)
    return f"{first} To wake it, {' or '.join(ways)}." if ways else first
