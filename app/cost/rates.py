"""The hourly rates a stack declares, and which rate each environment status bills at.

A stack may output `runbot_hourly_cost` (money per hour while awake) and, optionally,
`runbot_hourly_cost_asleep` (while SLEEPING; 0 when not output). Outputs are untrusted engine
output: a value that is not a finite number in [0, 1e6], or that is marked sensitive (runbot
shows cost in public places), is ignored with a warning and counts as 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

AWAKE_OUTPUT = "runbot_hourly_cost"
ASLEEP_OUTPUT = "runbot_hourly_cost_asleep"
#: Above this an hourly rate is taken for a mistake (cents for units, a total for a rate).
MAX_HOURLY = 1e6

#: Statuses billed at the awake rate: every one that may hold resources, except SLEEPING.
#: CREATING bills at the rate of the outputs the row already holds: none on a first create
#: (so 0 until the first apply reports a rate), the previous apply's on a re-create.
AWAKE_STATUSES = frozenset(
    {"creating", "ready", "updating", "failed", "destroying", "destroy_failed"}
)
ASLEEP_STATUSES = frozenset({"sleeping"})
#: PENDING, QUEUED hold nothing; DESTROYED closes the ledger.
UNBILLED_STATUSES = frozenset({"pending", "queued", "destroyed"})


@dataclass(frozen=True)
class Rates:
    awake: float = 0.0
    asleep: float = 0.0
    #: The stack outputs a cost at all (a valid awake or asleep rate): cost is shown only then.
    declared: bool = False


NO_RATES = Rates()


def _read_one(outputs: dict[str, Any], name: str) -> tuple[float | None, str | None]:
    """(rate, None), (None, warning) for an unusable value, or (None, None) when not output."""
    item = outputs.get(name)
    if item is None:
        return None, None
    if not isinstance(item, dict):
        return None, f"runbot: warning: the output `{name}` is malformed; runbot counts it as 0"
    if item.get("sensitive"):
        return None, (
            f"runbot: warning: the output `{name}` is sensitive, and runbot shows cost in the"
            " PR and the dashboard, so it counts it as 0; output it without `sensitive = true`"
        )
    value = item.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, (
            f"runbot: warning: the output `{name}` is not a number ({type(value).__name__});"
            " runbot counts it as 0; output money per hour as a number, e.g. 0.05"
        )
    rate = float(value)
    if not math.isfinite(rate) or rate < 0 or rate > MAX_HOURLY:
        return None, (
            f"runbot: warning: the output `{name}` is {value!r}, not an hourly rate between 0"
            f" and {MAX_HOURLY:g}; runbot counts it as 0"
        )
    return rate, None


def read_rates(outputs: dict[str, Any] | None) -> tuple[Rates, list[str]]:
    """The rates in a stack's outputs (`{name: {"value", "sensitive"}}`), and warnings."""
    if not outputs:
        return NO_RATES, []
    awake, awake_warning = _read_one(outputs, AWAKE_OUTPUT)
    asleep, asleep_warning = _read_one(outputs, ASLEEP_OUTPUT)
    warnings = [w for w in (awake_warning, asleep_warning) if w is not None]
    declared = awake is not None or asleep is not None
    return Rates(awake or 0.0, asleep or 0.0, declared), warnings


def rate_warnings(outputs: dict[str, Any] | None) -> list[str]:
    return read_rates(outputs)[1]


def hourly_for(status: str, rates: Rates) -> float:
    """Money per hour an environment in ``status`` costs under ``rates``."""
    if status in AWAKE_STATUSES:
        return rates.awake
    if status in ASLEEP_STATUSES:
        return rates.asleep
    return 0.0


def hourly_of(status: str, outputs: dict[str, Any] | None) -> float:
    return hourly_for(status, read_rates(outputs)[0])
