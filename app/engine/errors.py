"""The engine's failures, apart from the runner so that what raises them (the runner, the silo
credentials, the executors) and what catches them (the lifecycle, the CLI) share one small module.
"""

from __future__ import annotations

from typing import Any


class EngineError(Exception):
    """Base for engine failures; messages are plain sentences."""


class EngineMissing(EngineError):
    pass


class EngineFailed(EngineError):
    def __init__(self, message: str, *, phase: str, exit_code: int | None) -> None:
        super().__init__(message)
        self.phase = phase
        self.exit_code = exit_code
        #: What a failed apply left in runbot's own local state (its log must not show the
        #: sensitive ones either); empty when unknown.
        self.outputs: dict[str, dict[str, Any]] = {}


class EngineCancelled(EngineFailed):
    pass
