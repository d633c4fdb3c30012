"""Small statistics and reporting helpers shared by every benchmark.

Machines here are noisy, so every headline figure is a ratio of medians against a baseline
measured in the same run; absolute times are kept for context only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


def median(values: Iterable[float]) -> float:
    data = sorted(values)
    if not data:
        return math.nan
    middle = len(data) // 2
    if len(data) % 2:
        return data[middle]
    return (data[middle - 1] + data[middle]) / 2


def percentile(values: Iterable[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), pct in 0..100."""
    data = sorted(values)
    if not data:
        return math.nan
    if len(data) == 1:
        return data[0]
    rank = (len(data) - 1) * pct / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return data[low] + (data[high] - data[low]) * (rank - low)


def ratio(measured: float, baseline: float) -> float:
    if not baseline or math.isnan(baseline) or math.isnan(measured):
        return math.nan
    return measured / baseline


def fmt_ratio(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}x"


def fmt_seconds(value: float | None) -> str:
    """Seconds with a unit that keeps three significant digits readable."""
    if value is None or math.isnan(value):
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    if value < 120:
        return f"{value:.2f} s"
    return f"{value / 60:.1f} min"


def fmt_bytes(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value / (1024 * 1024):.1f} MB"


@dataclass
class Row:
    """One line of the results table.

    ``measured`` and ``baseline`` are display strings (absolute values, for context);
    ``value`` is the number compared with the target (usually a ratio).
    """

    bench: str
    name: str
    measured: str
    baseline: str = "-"
    value: float | None = None
    target: str = "-"
    passed: bool | None = None  # None: reported only, no target
    unit: str = "ratio"
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def shown_value(self) -> str:
        if self.value is None:
            return "-"
        if self.unit == "ratio":
            return fmt_ratio(self.value)
        if self.unit == "%":
            return f"{self.value:.3f}%"
        if self.unit == "count":
            return f"{self.value:g}"
        return f"{self.value:.3g}{self.unit}"

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: "info"}[self.passed]

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["verdict"] = self.verdict
        if isinstance(data["value"], float) and math.isnan(data["value"]):
            data["value"] = None
        return data


def check(value: float, limit: float, *, at_most: bool = True) -> bool:
    if math.isnan(value):
        return False
    return value <= limit if at_most else value >= limit


def table(rows: Sequence[Row]) -> str:
    headers = ("benchmark", "figure", "measured", "baseline", "ratio/value", "target", "result")
    lines = [
        (r.bench, r.name, r.measured, r.baseline, r.shown_value, r.target, r.verdict) for r in rows
    ]
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *lines, strict=True)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(str(cell).ljust(width) for cell, width in zip(cells, widths, strict=True))

    out = [fmt(headers), fmt(["-" * w for w in widths])]
    out.extend(fmt(line) for line in lines)
    return "\n".join(out)
