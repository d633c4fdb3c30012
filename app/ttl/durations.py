"""Human duration strings (``4h``, ``1h30m``, ``2d``) for ``/runbot extend`` and ``.runbot.yml``.

The grammar is deliberately tiny and strict: the same text is typed by people in PR comments
and in config files, so an ambiguous input is rejected with a message that says how to fix it
rather than guessed at.
"""

from __future__ import annotations

import re
from datetime import timedelta

__all__ = ["MAX_DURATION", "UNITS", "DurationError", "format_duration", "parse_duration"]

#: Unit letter -> seconds, largest first; the order is also the order units must appear in.
UNITS: dict[str, int] = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}

#: Hard ceiling: nothing in runbot should live, or be extended by, more than a year.
MAX_DURATION = timedelta(days=365)

_ORDER = {unit: rank for rank, unit in enumerate(UNITS)}
_MAX_SECONDS = int(MAX_DURATION.total_seconds())
# More digits than this is over the ceiling whatever the unit; checking the length first keeps
# int() away from huge digit strings (CPython refuses > 4300 digits and it is slow before that).
_MAX_DIGITS = len(str(_MAX_SECONDS))
_NUMBER = re.compile(r"[0-9]+")
_LETTERS = re.compile(r"[a-z]+")
_EXAMPLES = "e.g. 90s, 30m, 4h, 2d, 1w or 1h30m"
_UNIT_LIST = "s (seconds), m (minutes), h (hours), d (days), w (weeks)"
_SHOW_LIMIT = 40


class DurationError(ValueError):
    """A duration string was rejected; the message is written for the person who typed it."""


def _show(text: str) -> str:
    """Quote user input in an error message without echoing an arbitrarily long string."""
    if len(text) > _SHOW_LIMIT:
        text = text[: _SHOW_LIMIT - 1] + "…"
    return repr(text)


def _too_long(shown: str) -> DurationError:
    return DurationError(
        f"{shown} is longer than the {MAX_DURATION.days}d ceiling; use at most {MAX_DURATION.days}d"
    )


def parse_duration(text: str) -> timedelta:
    """Parse ``90s``/``30m``/``4h``/``2d``/``1w`` and combinations like ``1d12h`` or ``1h30m``.

    Units are s, m, h, d and w, each at most once and largest first; numbers are ASCII integers;
    case and surrounding whitespace are ignored. The result is always > 0 and <= 365 days.
    """
    if not isinstance(text, str):
        raise DurationError(f"expected a duration string ({_EXAMPLES}), got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise DurationError(f"the duration is empty; write one like 4h ({_EXAMPLES})")
    shown = _show(stripped)
    if not stripped.isascii():
        raise DurationError(
            f"{shown} contains non-ASCII characters; "
            f"use plain digits and unit letters ({_EXAMPLES})"
        )
    if any(ch.isspace() for ch in stripped):
        raise DurationError(f"{shown} contains spaces; write the parts together, e.g. 1h30m")
    s = stripped.lower()
    if s[0] == "-":
        raise DurationError(f"{shown} is negative; durations must be positive ({_EXAMPLES})")
    if s[0] == "+":
        raise DurationError(f"{shown} has a sign; write just the number and unit ({_EXAMPLES})")

    total = 0
    seen: list[str] = []
    pos = 0
    while pos < len(s):
        number = _NUMBER.match(s, pos)
        if number is None:
            raise DurationError(
                f"{shown} is not a duration: expected a number at {_show(s[pos:])} ({_EXAMPLES})"
            )
        pos = number.end()
        if pos < len(s) and s[pos] in ".,":
            raise DurationError(
                f"{shown} has a fraction; use whole numbers with a smaller unit, e.g. 90m not 1.5h"
            )
        unit_match = _LETTERS.match(s, pos)
        if unit_match is None:
            if pos == len(s):
                raise DurationError(
                    f"{shown} is missing a unit after {number.group()}; units are {_UNIT_LIST}"
                )
            raise DurationError(
                f"{shown} is not a duration: unexpected {_show(s[pos])} ({_EXAMPLES})"
            )
        unit = unit_match.group()
        pos = unit_match.end()
        if unit not in UNITS:
            raise DurationError(f"{shown} has an unknown unit {unit!r}; units are {_UNIT_LIST}")
        if unit in seen:
            raise DurationError(f"{shown} uses the unit {unit!r} twice; combine them, e.g. 1h30m")
        if seen and _ORDER[unit] < _ORDER[seen[-1]]:
            raise DurationError(
                f"{shown} lists units out of order; put the largest first, e.g. 1d12h"
            )
        seen.append(unit)
        digits = number.group().lstrip("0") or "0"
        if len(digits) > _MAX_DIGITS:
            raise _too_long(shown)
        total += int(digits) * UNITS[unit]
        # Bail out as soon as the running total is over the ceiling: keeps the sum small too.
        if total > _MAX_SECONDS:
            raise _too_long(shown)

    if total == 0:
        raise DurationError(f"{shown} must be greater than zero ({_EXAMPLES})")
    return timedelta(seconds=total)


def format_duration(td: timedelta) -> str:
    """Render ``td`` compactly (``1h30m``, ``14d``, ``45s``) in a form ``parse_duration`` reads.

    Only positive whole-second durations have such a form; anything else raises DurationError
    instead of silently rounding, so a round trip can never change the value.
    """
    if not isinstance(td, timedelta):
        raise DurationError(f"expected a timedelta, got {type(td).__name__}")
    if td.microseconds:
        raise DurationError(f"{td} has a sub-second part, which durations cannot express")
    seconds = td.days * 86_400 + td.seconds
    if seconds <= 0:
        raise DurationError(f"{td} is not positive; durations must be greater than zero")
    parts: list[str] = []
    # Weeks are accepted on input but days read better in output ("10d", not "1w3d").
    for unit, size in UNITS.items():
        if unit == "w":
            continue
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
