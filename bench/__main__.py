"""Run the benchmarks, print the table and write bench/results.json."""

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

from bench.harness import Context
from bench.stats import Row, table

BENCHMARKS = {
    "webhook": "bench.webhook",  # 1. webhook acknowledgement
    "lifecycle": "bench.lifecycle",  # 2. bot overhead per lifecycle step
    "layering": "bench.layering",  # 3. instance in an existing silo vs silo + instance
    "concurrency": "bench.concurrency",  # 4. 50 PRs at once, capped runs
    "coalescing": "bench.coalescing",  # 5. 100 pushes within 5 s
    "scale": "bench.scale",  # 6. 10,000 environments: ticks, API and dashboard lists
    "footprint": "bench.footprint",  # 7. idle RSS and the leak check
}
RESULTS = Path(__file__).resolve().parent / "results.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts: a few minutes")
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
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
    mode = "quick" if args.quick else "full"
    ctx.log(f"runbot benchmarks ({mode}): {', '.join(chosen)}; scratch {root}")
    try:
        for name in chosen:
            started = time.monotonic()
            ctx.log(f"== {name}")
            try:
                module = importlib.import_module(BENCHMARKS[name])
                rows += module.run(ctx)
            except Exception as exc:  # one broken benchmark must not hide the others
                traceback.print_exc()
                errors[name] = f"{type(exc).__name__}: {exc}"
                rows.append(Row(name, "ERROR", str(exc)[:60], passed=False))
            timings[name] = time.monotonic() - started
            ctx.log(f"== {name} done in {timings[name]:.0f}s")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(table(rows))
    for note in ctx.notes:
        print(f"- {note}")
    report = {
        "mode": mode,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": __import__("os").cpu_count(),
        },
        "durations_s": timings,
        "errors": errors,
        "notes": ctx.notes,
        "rows": [row.as_json() for row in rows],
    }
    if args.only and args.output.exists():
        # A partial run updates its benchmarks in place and keeps the others.
        try:
            previous = json.loads(args.output.read_text())
            kept = [r for r in previous.get("rows", []) if r.get("bench") not in chosen]
            report["rows"] = kept + report["rows"]
        except (ValueError, OSError):
            pass
    args.output.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {args.output}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
