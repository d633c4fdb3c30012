"""A claim on a target, and what converging it may ask of the worker that holds its lease."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from app.db.models import Run

Mutate = Callable[[Any], None]  # a change to the claimed row, applied under its lease


@dataclass
class Claim:
    kind: str  # "silo" | "environment"
    id: str
    generation: int


class LeaseLost(Exception):
    pass


class Lease(Protocol):
    """The worker holding a claim: the claimed row's only writer while its lease lasts.

    Every write checks the lease and raises LeaseLost once another worker has taken it over.
    """

    worker_id: str

    def save(
        self,
        claim: Claim,
        mutate: Mutate,
        release: bool = False,
        start_run: Run | None = None,
    ) -> Any: ...

    def release_later(self, claim: Claim, delay: float, status: str, reason: str) -> None: ...

    def fail(self, claim: Claim, error: str, run_id: int | None, retry: bool = False) -> None: ...

    async def heartbeat(self, claim: Claim, cancel: asyncio.Event) -> None: ...
