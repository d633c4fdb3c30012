"""The doctor's report: a row per check, its state and fix, rendered as a plain-text table."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Row:
    """One line of the report; `fix` is what to do when the state is not OK."""

    check: str
    state: State
    detail: str
    fix: str = ""


def ok(check: str, detail: str) -> Row:
    return Row(check, State.OK, detail)


def warn(check: str, detail: str, fix: str) -> Row:
    return Row(check, State.WARN, detail, fix)


def fail(check: str, detail: str, fix: str) -> Row:
    return Row(check, State.FAIL, detail, fix)


# ----- rendering (pure) ----------------------------------------------------------------------


def render(rows: Iterable[Row], width: int = 100) -> str:
    """A plain-text table: check, state, detail, and the fix under a failing row's detail."""
    rows = list(rows)
    first = max([len("CHECK"), *(len(row.check) for row in rows)]) + 2
    second = len("STATE") + 2
    indent = " " * (first + second)
    wrap = max(30, width - first - second)
    lines = [f"{'CHECK':<{first}}{'STATE':<{second}}DETAIL"]
    for row in rows:
        detail = textwrap.wrap(row.detail, wrap) or [""]
        lines.append(f"{row.check:<{first}}{row.state.value:<{second}}{detail[0]}")
        lines.extend(indent + part for part in detail[1:])
        if row.state is not State.OK and row.fix:
            fix = textwrap.wrap("fix: " + row.fix, wrap, subsequent_indent="     ")
            lines.extend(indent + part for part in fix)
    failed = sum(row.state is State.FAIL for row in rows)
    warned = sum(row.state is State.WARN for row in rows)
    lines.append("")
    lines.append(
        f"{len(rows)} checks: {len(rows) - failed - warned} ok, {warned} warning(s),"
        f" {failed} failed"
    )
    return "\n".join(lines)


def exit_code(rows: Iterable[Row]) -> int:
    return 1 if any(row.state is State.FAIL for row in rows) else 0
