"""Failure injection: 5xx answers, outages, lost responses, secondary limits.

Faults are taken in order before a request is handled, so a test can make the
exact request it means fail (``match``), as GitHub's own bad minutes do.
"""

from __future__ import annotations

import re
import time
import uuid

from .state import _LOST, DOCS, _Fault, _Resp

SECONDARY_RATE_LIMIT_MESSAGE = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try "
    "again. If you reach out to GitHub Support for help, please include the request ID {rid}."
)
SECONDARY_RATE_LIMIT_DOCS = (
    "https://docs.github.com/free-pro-team@latest/rest/overview/"
    "rate-limits-for-the-rest-api#about-secondary-rate-limits"
)


class Faults:
    """FakeGitHub's fault injection (a mixin; ``server.py`` makes the state)."""

    def fail_next(self, n: int = 1, status: int = 502, *, match: str | None = None) -> None:
        """Answer the next *n* requests with *status*.

        *match* (a regex searched in ``"METHOD /path"``) limits which requests fail.
        """
        with self._lock:
            self._faults.append(_Fault(status, n, None, re.compile(match) if match else None))

    def lose_next_response(self, n: int = 1, *, match: str | None = None) -> None:
        """Carry out the next *n* (matching) requests, then answer 502: the response lost on
        the way back, as when a client is killed after GitHub committed its write."""
        with self._lock:
            self._faults.append(
                _Fault(502, n, None, re.compile(match) if match else None, after=True)
            )

    def outage(self, seconds: float, status: int = 502, *, match: str | None = None) -> None:
        """Answer every (matching) request with *status* for *seconds* from now."""
        with self._lock:
            self._faults.append(
                _Fault(
                    status,
                    None,
                    time.monotonic() + seconds,
                    re.compile(match) if match else None,
                )
            )

    def secondary_rate_limit(
        self, count: int = 1, retry_after: int | None = 2, *, match: str | None = None
    ) -> None:
        """Answer the next *count* requests with GitHub's secondary-rate-limit 403."""
        with self._lock:
            self._faults.append(
                _Fault(
                    403,
                    count,
                    None,
                    re.compile(match) if match else None,
                    retry_after=retry_after,
                    secondary=True,
                )
            )

    def reset_faults(self) -> None:
        """Drop all pending fault injections."""
        with self._lock:
            self._faults.clear()

    def _take_fault(self, method: str, path: str) -> _Resp | None:
        now = time.monotonic()
        target = f"{method} {path}"
        for fault in list(self._faults):
            if fault.until is not None and fault.until <= now:
                self._faults.remove(fault)
                continue
            if fault.match is not None and not fault.match.search(target):
                continue
            if fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    self._faults.remove(fault)
            if fault.after:
                return _Resp(_LOST, None)
            rid = uuid.uuid4().hex[:16].upper()
            if fault.secondary:
                headers = (
                    {"retry-after": str(fault.retry_after)} if fault.retry_after is not None else {}
                )
                return _Resp(
                    403,
                    {
                        "message": SECONDARY_RATE_LIMIT_MESSAGE.format(rid=rid),
                        "documentation_url": SECONDARY_RATE_LIMIT_DOCS,
                        "status": "403",
                    },
                    headers,
                )
            message = "Server Error" if fault.status >= 500 else "Injected fault"
            return _Resp(
                fault.status,
                {"message": message, "documentation_url": DOCS, "status": str(fault.status)},
            )
        return None
