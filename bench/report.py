"""Render bench/results.json as docs/performance.md and the README's table of targets.

    python -m bench.report

`python -m bench` runs this after writing the results. The methods are the docstrings of the
benchmark modules, so they stay next to the code that measures; the figures are the rows of the
results file. Nothing here measures, and nothing is written by hand: a test checks that both
documents are what this module renders from the committed results.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from bench import BENCHMARKS
from bench.stats import Row, fmt_seconds

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
PERFORMANCE = ROOT / "docs" / "performance.md"
README = ROOT / "README.md"
#: The README's table of targets sits between these two lines.
BEGIN = "<!-- targets: rendered by `python -m bench.report` from bench/results.json -->"
END = "<!-- end of targets -->"
NOTICE = (
    "<!-- Rendered by `python -m bench.report` from bench/results.json and the docstrings of"
    " bench/: edit those, not this page. -->"
)
VERDICTS = {"PASS": "pass", "FAIL": "**FAIL**", "info": ""}


@dataclass(frozen=True)
class Method:
    """How one benchmark measures: its docstring's summary line and the rest of it."""

    title: str
    body: str


def docstring(module: str) -> str:
    """A module's docstring, read from its source: rendering must not import the benchmarks."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, module
    doc = ast.get_docstring(ast.parse(Path(spec.origin).read_text()))
    if not doc:
        raise ValueError(f"{module} has no docstring to render")
    return doc


def method(module: str) -> Method:
    summary, _, body = docstring(module).partition("\n\n")
    return Method(" ".join(summary.split()).removesuffix("."), body.strip())


def load(path: Path = RESULTS) -> dict[str, Any]:
    return json.loads(path.read_text())


def rows(results: dict[str, Any]) -> list[Row]:
    """The results' rows in the benchmarks' order (a partial run appends its own at the end)."""
    names = {field.name for field in fields(Row)}
    order = {name: index for index, name in enumerate(BENCHMARKS)}
    found = [Row(**{k: v for k, v in row.items() if k in names}) for row in results["rows"]]
    return sorted(found, key=lambda row: order.get(row.bench, len(order)))


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(headers: list[str], lines: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_cell(cell) for cell in line) + " |" for line in lines]
    return out


def _figure(row: Row) -> str:
    return f"`{row.bench}` {row.name}"


def _compared(row: Row) -> str:
    """What the target is checked against: a ratio or share, else the measured figure itself."""
    return row.shown_value if row.unit in ("ratio", "%") else row.measured


def _run(results: dict[str, Any], name: str) -> dict[str, Any] | None:
    return results.get("runs", {}).get(name)


def provenance(results: dict[str, Any]) -> str:
    """Which run(s) the figures come from, in a few words."""
    runs = [run for name in BENCHMARKS if (run := _run(results, name))]
    if not runs:
        return "No benchmark has run yet"
    kinds = sorted({f"{run['mode']} run of {run['when']}" for run in runs})
    machine = results.get("machine", {})
    where = f"on {machine.get('cpus', '?')} CPUs, Python {machine.get('python', '?')}"
    if len(kinds) == 1:
        return f"From one {kinds[0]}, {where}"
    return f"From {len(kinds)} runs ({'; '.join(kinds)}), {where}"


def render_targets(results: dict[str, Any]) -> str:
    """The README's short table: every figure that has a target, and whether it met it."""
    lines = [
        [_figure(row), _compared(row), row.target, VERDICTS[row.verdict]]
        for row in rows(results)
        if row.passed is not None
    ]
    table = _table(["Figure", "Measured", "Target", "Result"], lines)
    return "\n".join([BEGIN, f"{provenance(results)}:", "", *table, END]) + "\n"


def render_performance(results: dict[str, Any]) -> str:
    intro = method("bench")
    out = ["# Performance", "", NOTICE, "", intro.title + ".", "", intro.body, "", "## Results", ""]
    machine = results.get("machine", {})
    out += [f"{provenance(results)} ({machine.get('platform', 'unknown platform')}).", ""]
    number = {name: index for index, name in enumerate(BENCHMARKS, start=1)}
    out += _table(
        ["#", "Figure", "Measured", "Baseline", "Ratio or value", "Target", "Result"],
        [
            [
                str(number.get(row.bench, "")),
                _figure(row),
                row.measured,
                row.baseline,
                row.shown_value,
                row.target,
                VERDICTS[row.verdict],
            ]
            for row in rows(results)
        ],
    )
    notes = [note for name in BENCHMARKS for note in (_run(results, name) or {}).get("notes", [])]
    errors = [
        f"`{name}`: {run['error']}"
        for name in BENCHMARKS
        if (run := _run(results, name)) and run.get("error")
    ]
    for heading, items in (("Notes from the run:", notes), ("Errors:", errors)):
        if items:
            out += ["", heading, "", *(f"- {item}" for item in items)]
    out += ["", "## How each figure is measured"]
    for index, (name, module) in enumerate(BENCHMARKS.items(), start=1):
        run = _run(results, name)
        when = (
            f"last run: {run['mode']}, {run['when']}, {fmt_seconds(run['duration_s'])}"
            if run
            else "not in these results"
        )
        step = method(module)
        out += ["", f"### {index}. {step.title}", ""]
        out += [f"`python -m bench --only {name}` ({when}).", "", step.body]
    return "\n".join(out) + "\n"


def replace_block(text: str, block: str) -> str:
    """`text` with the lines from BEGIN to END replaced by `block` (which holds both)."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no {BEGIN!r} ... {END!r} block")
    return text[:start] + block + text[end + len(END) + 1 :]


def readme_block(text: str) -> str:
    """The table of targets as it stands in `text`, markers included."""
    start, end = text.index(BEGIN), text.index(END)
    return text[start : end + len(END) + 1]


def write(
    results: Path = RESULTS, performance: Path = PERFORMANCE, readme: Path = README
) -> list[Path]:
    data = load(results)
    performance.write_text(render_performance(data))
    readme.write_text(replace_block(readme.read_text(), render_targets(data)))
    return [performance, readme]


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="python -m bench.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).parse_args(argv)
    for path in write():
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
