"""After an apply, wait for the environment's URL to answer, when its stack asks for it.

An instance template that outputs `runbot_wait_for_url = true` says its apply returns before
the app serves (a load balancer registering targets, DNS, a container starting): runbot then
asks the `url` output with plain GETs until it answers, as the run's `url` phase, before the
environment shows ready. An answer is any status under 500 (a 404 is the app answering; a 502
or 503 is a proxy still waiting for it). Redirects are not followed and bodies not read: the
URL is engine output, so runbot only learns whether and when it answered. After
`runbot_url_timeout` seconds (default 120, at most 900) it shows ready anyway, with a warning
in the run's log. A sleeping environment (`runbot_suspended`) is not asked.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx

from app.links import safe_link

__all__ = ["URL_TIMEOUT_DEFAULT", "answered", "url_to_wait_for", "wait_for_url"]

URL_TIMEOUT_DEFAULT = 120.0
URL_TIMEOUT_MAX = 900.0
_ATTEMPT_SECONDS = 5.0
_PAUSE_SECONDS = 0.2


def _value(outputs: dict[str, Any], name: str) -> Any:
    entry = outputs.get(name)
    return entry.get("value") if isinstance(entry, dict) else None


def url_to_wait_for(
    outputs: dict[str, Any] | None, variables: dict[str, Any]
) -> tuple[str, float] | None:
    """The URL to wait for and for how long; None when the stack does not ask (pure)."""
    if not outputs or _value(outputs, "runbot_wait_for_url") is not True:
        return None
    if variables.get("runbot_suspended") is True:
        return None
    url = _value(outputs, "url")
    if not isinstance(url, str) or outputs["url"].get("sensitive") or safe_link(url) is None:
        return None
    timeout = _value(outputs, "runbot_url_timeout")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        timeout = URL_TIMEOUT_DEFAULT
    return url, min(float(timeout), URL_TIMEOUT_MAX)


def answered(status: int) -> bool:
    """The app answered: anything but a server or gateway error."""
    return status < 500


async def wait_for_url(url: str, timeout: float, line: Callable[[str], None]) -> bool:
    """Ask until the URL answers or ``timeout`` passes; what happened goes to the run's log."""
    line(f"runbot: waiting for {url} to answer (at most {timeout:.0f} s)")
    began = time.monotonic()
    deadline = began + timeout
    last = "no answer"
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                async with client.stream(
                    "GET", url, timeout=min(_ATTEMPT_SECONDS, max(left, 0.1))
                ) as response:
                    if answered(response.status_code):
                        spent = time.monotonic() - began
                        line(f"runbot: {url} answered {response.status_code} after {spent:.1f} s")
                        return True
                    last = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            await asyncio.sleep(min(_PAUSE_SECONDS, max(deadline - time.monotonic(), 0)))
    line(
        f"runbot: warning: {url} did not answer within {timeout:.0f} s (last: {last}); shown as"
        " ready anyway. Raise `runbot_url_timeout`, or check the app's logs"
    )
    return False
