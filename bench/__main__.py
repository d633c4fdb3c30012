"""Run the benchmarks, print the table, write bench/results.json and render the docs from it."""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import BENCHMARKS, report
from bench.harness import Context
from bench.stats import Row, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts: a few minutes")
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument(
        "--output", type=Path, default=report.RESULTS, help="where to write the JSON"
    )
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()] or list(BENCHMARKS)
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; have {', '.join(BENCHMARKS)}")

    root = Path(tempfile.mkdtemp(prefix="runbot-bench-"))
    ctx = Context(quick=args.quick, root=root)
    rows: list[Row] = []
    timings: dict[str, float] = {}
    errors: dict[str, str] = {}
    notes: dict[str, list[str]] = {}
    mode = "quick" if args.quick else "full"
    ctx.log(f"runbot benchmarks ({mode}): {', '.join(chosen)}; scratch {root}")
    try:
        for name in chosen:
            started, noted = time.monotonic(), len(ctx.notes)
            ctx.log(f"== {name}")
            try:
                module = importlib.import_module(BENCHMARKS[name])
                rows += module.run(ctx)
            except Exception as exc:  # one broken benchmark must not hide the others
                traceback.print_exc()
                errors[name] = f"{type(exc).__name__}: {exc}"
                rows.append(Row(name, "ERROR", str(exc)[:60], passed=False))
            timings[name] = time.monotonic() - started
            notes[name] = ctx.notes[noted:]
            ctx.log(f"== {name} done in {timings[name]:.0f}s")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(table(rows))
    for note in ctx.notes:
        print(f"- {note}")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results = {
        "mode": mode,
        "when": when,
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": __import__("os").cpu_count(),
        },
        "durations_s": timings,
        "errors": errors,
        "notes": ctx.notes,
        # Which run each benchmark's rows come from: a partial run keeps the others' entries.
        "runs": {
            name: {
                "mode": mode,
                "when": when,
                "duration_s": timings[name],
                "error": errors.get(name),
                "notes": notes[name],
            }
            for name in chosen
        },
        "rows": [row.as_json() for row in rows],
    }
    if args.only and args.output.exists():
        # A partial run updates its benchmarks in place and keeps the others.
        try:
            previous = json.loads(args.output.read_text())
            kept = [r for r in previous.get("rows", []) if r.get("bench") not in chosen]
            results["rows"] = kept + results["rows"]
            runs = {k: v for k, v in previous.get("runs", {}).items() if k not in chosen}
            results["runs"] = runs | results["runs"]
        except (ValueError, OSError):
            pass
    args.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwrote {args.output}")
    if args.output.resolve() == report.RESULTS:
        for path in report.write():
            print(f"wrote {path}")
    else:
        print(f"docs not rendered: they follow {report.RESULTS}, not {args.output}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
