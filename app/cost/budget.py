"""Monthly budgets: how far a month's spend is into one, and what that makes runbot do.

At `WARN_AT` of a budget the status comments carry a warning; at 100% new environments wait
(`REACHED_MESSAGE`) and idle ones are put to sleep. Budgets reset on the 1st (UTC).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

from app.cost.money import format_money

WARN_AT = 0.8
REACHED_MESSAGE = "budget reached; it resets on the 1st"
#: The largest monthly budget a policy may set (larger is a typo, not a budget).
MAX_MONTHLY = 1e9


class Level(IntEnum):
    OK = 0
    WARN = 1
    REACHED = 2


@dataclass(frozen=True)
class Budget:
    """`budget: {monthly: 200}`: money per calendar month, in `RUNBOT_CURRENCY`."""

    monthly: float


def parse_budget(value: object) -> Budget:
    """A policy's `budget:` value; ValueError saying what to write instead."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping like {{monthly: 200}}, got {value!r}")
    unknown = sorted(str(key) for key in value if key != "monthly")
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a budget key; the one key is `monthly`")
    monthly = value.get("monthly")
    if isinstance(monthly, bool) or not isinstance(monthly, int | float):
        raise ValueError(f"`monthly` must be an amount of money like 200, got {monthly!r}")
    if not math.isfinite(monthly) or not 0 < monthly <= MAX_MONTHLY:
        raise ValueError(f"`monthly` must be more than 0 and at most {MAX_MONTHLY:g}")
    return Budget(float(monthly))


@dataclass(frozen=True)
class Standing:
    """One budget's month so far: ``scope`` names it for people ("repository octo/app")."""

    scope: str
    monthly: float
    spent: float

    @property
    def level(self) -> Level:
        return level_of(self.spent, self.monthly)


def level_of(spent: float, monthly: float) -> Level:
    if spent >= monthly:
        return Level.REACHED
    if spent >= WARN_AT * monthly:
        return Level.WARN
    return Level.OK


def worst(standings: list[Standing]) -> Standing | None:
    """The standing furthest into its budget (None: no budget applies)."""
    if not standings:
        return None
    return max(standings, key=lambda s: (s.level, s.spent / s.monthly))


def budget_line(standing: Standing | None, currency: str = "USD") -> str | None:
    """The status comment's warning at 80% and at 100% of a budget (None below).

    Names the level, not the amount spent: the line changes only when the level does, so the
    comment is not edited as money accrues.
    """
    if standing is None or standing.level is Level.OK:
        return None
    budget = format_money(standing.monthly, currency)
    if standing.level is Level.REACHED:
        return (
            f"The monthly budget of {standing.scope} ({budget}) is spent: new environments"
            " wait and idle ones sleep until it resets on the 1st (UTC)."
        )
    return (
        f"{WARN_AT:.0%} of the monthly budget of {standing.scope} ({budget}) is spent: at"
        " 100% new environments wait and idle ones sleep until the 1st."
    )
