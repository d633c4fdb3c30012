"""Concurrency: 50 PRs opened at once with `RUNBOT_MAX_CONCURRENT_RUNS=4`.

Makespan = first `opened` webhook sent → every environment ready (observed state). Ideal =
ceil(50 / 4) x the single-apply time, where the single-apply time is the median engine run
(init + apply + outputs, from runbot's run table) of a PR deployed alone on the same server just
before. `--quick` opens 8 PRs. Two stacks:

- `local` as shipped: its applies are CPU-bound (Python and the engine starting, provisioners),
  so on a 2-core machine four at once cannot each run at their solo speed; reported with the
  CPU they used, for context;
- `bench-io`: the same plus one instance resource that sleeps 5 s (`IO_SECONDS`), standing for
  the time a real instance waits on its cloud API; CPU is then a minor share and the ratio
  measures runbot's scheduling (claims, wake-ups, the global cap). This is the row with the
  target: at most 1.2x.

Also: peak RSS of `runbot serve` (and of it plus its engine children), and that nothing was lost
(every PR has exactly one successful apply, every URL answers, every delivery was processed,
every status comment eventually shows its URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from sqlmodel import select

from app.db.models import Delivery, Environment, Run
from bench.harness import (
    OWNER,
    TEMPLATES,
    URL_IN_COMMENT,
    WEBHOOK_SECRET,
    Context,
    Serve,
    answers,
    apply_silo,
    destroy_everything,
    fake_github,
    free_port_base,
    github_idle,
    install,
    post_event,
    pr_event,
    process_env,
    runtime_for,
    seed_repo,
    status_comment,
    wait_until,
)
from bench.stats import Row, check, fmt_seconds, median, ratio
from tests.fakegithub.webhooks import encode, sign

NAME = "concurrency"
CAP = 4


def tree_rss(pid: int) -> int:
    """RSS of a process plus all its descendants (the engine runs it spawned), in bytes."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            parents[int(entry.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    family, frontier = {pid}, [pid]
    while frontier:
        current = frontier.pop()
        for child, parent in parents.items():
            if parent == current and child not in family:
                family.add(child)
                frontier.append(child)
    total = 0
    for member in family:
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


class Sampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self.done.wait(self.interval)


async def _post_all(url: str, payloads: list[dict]) -> list[int]:  # type: ignore[type-arg]
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(payload: dict) -> int:  # type: ignore[type-arg]
            body = encode(payload)
            response = await client.post(
                url,
                content=body,
                headers={
                    "Content-Type": "application/json",
                    "X-GitHub-Event": "pull_request",
                    "X-GitHub-Delivery": os.urandom(16).hex(),
                    "X-Hub-Signature-256": sign(body, WEBHOOK_SECRET),
                },
            )
            return response.status_code

        return await asyncio.gather(*(one(p) for p in payloads))


IO_SECONDS = 5
IO_RESOURCE = """
# bench: the waiting a cloud instance spends on its provider's API (see bench/concurrency.py).
resource "terraform_data" "simulated_cloud" {
  provisioner "local-exec" {
    command = "sleep %d"
  }
}
"""


def make_catalog(root: Path) -> Path:
    """`local` as shipped, and `bench-io`: the same plus an instance resource that waits."""
    catalog = root / "templates"
    shutil.copytree(TEMPLATES / "local", catalog / "local")
    shutil.copytree(TEMPLATES / "local", catalog / "bench-io")
    with (catalog / "bench-io" / "instance" / "main.tf").open("a") as handle:
        handle.write(IO_RESOURCE % IO_SECONDS)
    return catalog


def children_cpu(pid: int) -> float:
    """CPU seconds of a process's reaped descendants (its engine runs and their children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def own_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scenario(ctx: Context, stack: str, count: int, solos: int, comments: bool) -> dict[str, Any]:
    root = ctx.scratch(f"{NAME}-{stack}")
    repo = f"{OWNER}/concurrency-{stack}"
    capacity = count + solos + 2
    catalog = make_catalog(root)
    with fake_github() as fake:
        seed_repo(fake, repo, f"stack: {stack}\nsilo: wide\nmax_environments: {capacity}\n")
        install(fake, [repo])
        data = root / "data"
        rt = runtime_for(data, templates_dir=catalog)
        apply_silo(
            rt, "wide", stack, {"port_base": free_port_base(capacity + 1), "capacity": capacity}
        )
        env_vars = process_env(data, fake, templates=catalog, max_concurrent_runs=str(CAP))

        def envs(numbers: set[int]) -> list[Environment]:
            with rt.db.session() as session:
                return [e for e in session.exec(select(Environment)) if e.pr_number in numbers]

        def all_ready(numbers: set[int]) -> bool:
            rows = envs(numbers)
            return len(rows) == len(numbers) and all(
                e.status == "ready" and e.generation == e.observed_generation for e in rows
            )

        with Serve(env_vars, root / "serve.log") as serve:
            singles = []
            for index in range(solos):
                number = 1000 + index
                fake.add_pull(repo, number, os.urandom(20).hex(), f"solo/{index}")
                post_event(serve.webhook_url, pr_event(fake, "opened", repo, number))
                wait_until(lambda n=number: all_ready({n}), 120, 0.02, "a solo PR")
                with rt.db.session() as session:
                    solo_run = session.exec(
                        select(Run).where(
                            Run.target_id == envs({number})[0].id, Run.operation == "apply"
                        )
                    ).one()
                assert solo_run.finished_at is not None
                singles.append((solo_run.finished_at - solo_run.started_at).total_seconds())
            single = median(singles[1:] if len(singles) > 1 else singles)  # first one warms up
            github_idle(fake, rt)
            numbers = set(range(1, count + 1))
            for number in sorted(numbers):
                fake.add_pull(repo, number, os.urandom(20).hex(), f"feature/{number}")
            payloads = [pr_event(fake, "opened", repo, n) for n in sorted(numbers)]
            sampler = Sampler(serve.pid, 0.25)
            sampler.start()
            cpu_children, cpu_self = children_cpu(serve.pid), own_cpu(serve.pid)
            started = time.perf_counter()
            codes = asyncio.run(_post_all(serve.webhook_url, payloads))
            finished = wait_until(lambda: all_ready(numbers), 1800, 0.1, "every PR ready")
            makespan = finished - started
            cpu_children = children_cpu(serve.pid) - cpu_children
            cpu_self = own_cpu(serve.pid) - cpu_self
            sampler.done.set()
            hwm = serve.memory().get("VmHWM", 0)
            rows = envs(numbers)
            urls_ok = sum(answers(e.url or "", e.head_sha) for e in rows)
            with rt.db.session() as session:
                runs = [
                    r
                    for r in session.exec(select(Run).where(Run.operation == "apply"))
                    if r.target_id in {e.id for e in rows}
                ]
                deliveries = list(session.exec(select(Delivery)))
            per_env = {e.id: [r for r in runs if r.target_id == e.id] for e in rows}
            one_apply_each = all(
                len(v) == 1 and v[0].status == "succeeded" for v in per_env.values()
            )
            processed = sum(d.status == "processed" for d in deliveries)
            ctx.log(
                f"concurrency {stack}: {count} PRs ready in {fmt_seconds(makespan)}"
                f" (single apply {fmt_seconds(single)}); engines used {cpu_children:.1f} CPU-s,"
                f" runbot serve {cpu_self:.1f} CPU-s"
            )
            comments_at = math.nan
            if comments:

                def comments_done() -> bool:
                    return all(
                        URL_IN_COMMENT.search(status_comment(fake, repo, n) or "") for n in numbers
                    )

                with contextlib.suppress(TimeoutError):
                    comments_at = (
                        wait_until(comments_done, 60 + 6 * count, 0.1, "comments") - started
                    )
            sampler.join()
        destroy_everything(rt)
        rt.db.dispose()
    ideal = math.ceil(count / CAP) * single
    cores = os.cpu_count() or 1
    lost = (
        len(rows) != count
        or urls_ok != count
        or not one_apply_each
        or processed != len(deliveries)
        or any(code != 202 for code in codes)
        or (comments and math.isnan(comments_at))
    )
    facts = {
        "makespan": makespan,
        "ideal": ideal,
        "single": single,
        "singles": singles,
        "engine_cpu_s": cpu_children,
        "serve_cpu_s": cpu_self,
        "cpu_floor_s": (cpu_children + cpu_self) / cores,
        "lost": lost,
        "rows": len(rows),
        "urls_ok": urls_ok,
        "processed": processed,
        "deliveries": len(deliveries),
        "one_apply_each": one_apply_each,
        "comments_at": comments_at,
        "hwm": hwm,
        "tree_peak": sampler.peak,
    }
    return facts


def run(ctx: Context) -> list[Row]:
    count = 8 if ctx.quick else 50
    solos = 2 if ctx.quick else 3
    out: list[Row] = []
    for stack, label in (("local", "local stack"), ("bench-io", f"instance waits {IO_SECONDS} s")):
        f = scenario(ctx, stack, count, solos, comments=stack == "bench-io")
        value = ratio(f["makespan"], f["ideal"])
        io = stack == "bench-io"
        out.append(
            Row(
                NAME,
                f"makespan, {count} PRs, cap {CAP} ({label})",
                fmt_seconds(f["makespan"]),
                f"{fmt_seconds(f['ideal'])} = ceil({count}/{CAP}) x {fmt_seconds(f['single'])}",
                value,
                "<= 1.2" if io else "-",
                check(value, 1.2) if io else None,
                details=f,
            )
        )
        if not io:
            ctx.notes.append(
                f"concurrency (local stack): the {count} applies used"
                f" {f['engine_cpu_s']:.0f} CPU-s of engine and provisioners, and runbot serve"
                f" {f['serve_cpu_s']:.1f} CPU-s: on {os.cpu_count()} cores no schedule finishes"
                f" before {fmt_seconds(f['cpu_floor_s'])}; 4 CPU-bound applies at once cannot"
                " each run at their solo speed here."
            )
            continue
        lost = f["lost"]
        out += [
            Row(
                NAME,
                "nothing lost",
                "none lost" if not lost else "LOST",
                f"{f['rows']} envs, {f['urls_ok']} URLs answer, {f['processed']}/"
                f"{f['deliveries']} deliveries, 1 apply each: {f['one_apply_each']}",
                float(not lost),
                "none lost",
                not lost,
                unit="count",
            ),
            Row(
                NAME,
                "all status comments show the URL",
                fmt_seconds(f["comments_at"]),
                f"{count} PRs (GitHub writes paced ~1/s)",
                None,
                "-",
                None,
                unit="s",
            ),
            Row(
                NAME,
                "peak RSS (serve / serve + engines)",
                f"{f['hwm'] / 2**20:.0f} MB / {f['tree_peak'] / 2**20:.0f} MB",
                "-",
                None,
                "-",
                None,
                unit="MB",
            ),
        ]
    ctx.notes.append(
        f"concurrency: `bench-io` is the local stack plus one instance resource sleeping"
        f" {IO_SECONDS} s, standing for the time a real instance waits on its cloud API (an ECS"
        " service or a pod becoming ready takes tens of seconds to minutes); it keeps CPU a"
        " minor share, so the ratio measures runbot's scheduling, not the machine's cores."
    )
    return out
