"""How long a run spent in each phase: waiting in the queue, then each of the engine's.

Kept per run (`Run.timings`) so the dashboard shows where the time of one run went, the
metrics have a histogram per phase, and the status comment says how long an environment took
to be ready. Pure: the caller passes the clock's readings.
"""

from __future__ import annotations

from datetime import datetime

__all__ = ["ORDER", "PhaseMarks", "ordered", "queue_wait", "ready_after"]

#: Phases shown in this order; any other name a runner reports follows them.
ORDER = ("queue", "init", "plan", "apply", "destroy", "output", "url")


def queue_wait(requested_at: datetime | None, started_at: datetime) -> float:
    """Seconds from the request to the run's start; 0 when unknown (rows from before it was
    recorded) or when the clock moved backwards."""
    if requested_at is None:
        return 0.0
    return round(max((started_at - requested_at).total_seconds(), 0.0), 3)


class PhaseMarks:
    """The moments a run entered each phase; each phase lasts until the next one begins, the
    last one until the run finished. A phase entered twice adds up."""

    def __init__(self, timings: dict[str, float] | None = None) -> None:
        self.timings: dict[str, float] = dict(timings or {})
        self._current: tuple[str, float] | None = None

    def enter(self, phase: str, at: float) -> dict[str, float]:
        self._close(at)
        self._current = (phase, at)
        return dict(self.timings)

    def finish(self, at: float) -> dict[str, float]:
        self._close(at)
        self._current = None
        return dict(self.timings)

    def _close(self, at: float) -> None:
        if self._current is None:
            return
        phase, began = self._current
        spent = max(at - began, 0.0)
        self.timings[phase] = round(self.timings.get(phase, 0.0) + spent, 3)


def ordered(timings: dict[str, float] | None) -> list[tuple[str, float]]:
    """The phases in the order they happen, for display."""
    if not timings:
        return []
    rank = {name: index for index, name in enumerate(ORDER)}
    return sorted(timings.items(), key=lambda item: (rank.get(item[0], len(ORDER)), item[0]))


def ready_after(timings: dict[str, float] | None) -> float | None:
    """From the request to the outputs read: how long the environment took to be ready."""
    if not timings:
        return None
    return round(sum(timings.values()), 1)
