"""Renewing a lease while work is in progress, so leases can be short and crashes heal fast."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

log = logging.getLogger("runbot.leases")


@contextlib.asynccontextmanager
async def kept_alive(renew: Callable[[], None], every: float) -> AsyncIterator[None]:
    """Call `renew()` every `every` seconds until the block exits."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(every)
            try:
                renew()
            except Exception:  # a database blip: keep going until the lease really lapses
                log.exception("lease renewal failed")

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
