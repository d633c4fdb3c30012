"""What the lifecycle asks of whatever runs the engine: one job in, its outputs or an error out.

`local` is `EngineRunner` (the engine as a child of runbot, sandboxed); `kubernetes` runs the
same job in a Kubernetes Job (`app/executor`). Both take the same `EngineJob`, report through the
same sinks and raise the same `EngineError`s, so the lifecycle never knows which one ran.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from app.engine.runner import EngineJob, EngineResult, LineSink, PhaseSink


class Executor(Protocol):
    async def execute(
        self,
        job: EngineJob,
        on_line: LineSink,
        on_phase: PhaseSink | None = None,
        cancel: asyncio.Event | None = None,
    ) -> EngineResult:
        """Run `job` to the end; cancelling means SIGINT, then SIGTERM, then SIGKILL."""
        ...

    def forget(self, target: str) -> None:
        """Drop a destroyed target's state and engine data, so nothing is left behind."""
        ...

    def argv_prefix(self) -> list[str]:
        """The engine argv prefix, or EngineMissing saying how to get an engine."""
        ...
