"""The one clock runbot reads: the system's, unless a test or a benchmark put another in.

Everything that asks what time it is (row defaults, the scheduler's ticks, TTL and cost
arithmetic) goes through `now()`, so a simulated month can be replayed in seconds against the
real scheduler and database. A process-wide setting, not a context variable: worker threads
(the dashboard's thread pool, the engine's runners) must see the same time as the loop.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock", "now", "using"]


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """Time that moves only when told to; for tests and the simulated-month benchmark."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start")
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        if delta < timedelta(0):
            raise ValueError("time does not run backwards")
        with self._lock:
            self._now += delta
            return self._now

    def set(self, when: datetime) -> datetime:
        return self.advance(when.astimezone(UTC) - self.now())


_current: Clock = SystemClock()


def now() -> datetime:
    return _current.now()


@contextmanager
def using(clock: Clock) -> Iterator[Clock]:
    """Make `clock` the process's clock for the block (tests and benchmarks)."""
    global _current
    previous, _current = _current, clock
    try:
        yield clock
    finally:
        _current = previous
