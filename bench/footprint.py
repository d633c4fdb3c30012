"""Footprint of a real `runbot serve` (App mode, talking to the fake GitHub).

- Idle RSS: after start-up and a few quiet seconds (target: at most 200 MB).
- Leak check: 1,000 create/destroy lifecycles driven by webhooks (opened → environment ready,
  closed → destroyed), four at a time. RSS is read at quiet points (no delivery, run or GitHub
  write owed) after the first 100 lifecycles and after all of them (10 and 40 with `--quick`);
  the second must be within 10% of the first. The PRs are spread over 8 installations, as an
  organisation-wide install would be, so GitHub's write pacing (per installation) lets the
  notifier keep up.
"""

from __future__ import annotations

import os
import threading
import time

from sqlmodel import func, select

from app.db.models import Delivery, Environment, PullRequest
from bench.harness import (
    OWNER,
    Context,
    Serve,
    apply_silo,
    destroy_everything,
    fake_github,
    free_port_base,
    install,
    post_event,
    pr_event,
    process_env,
    runtime_for,
    seed_repo,
    wait_until,
)
from bench.stats import Row, check, ratio

NAME = "footprint"
LANES = 4
INSTALLATIONS = 8


def run(ctx: Context) -> list[Row]:
    total = 40 if ctx.quick else 1000
    first = 10 if ctx.quick else 100
    root = ctx.scratch(NAME)
    repos = [f"{OWNER}/footprint-{i}" for i in range(INSTALLATIONS)]
    samples: list[tuple[int, int]] = []
    with fake_github() as fake:
        for index, repo in enumerate(repos):
            seed_repo(fake, repo, "stack: local\nsilo: churn\nmax_environments: 50\n")
            install(fake, [repo], installation=7000 + index)
        data = root / "data"
        rt = runtime_for(data)
        apply_silo(
            rt, "churn", "local", {"port_base": free_port_base(LANES + 6), "capacity": LANES + 4}
        )
        with Serve(process_env(data, fake), root / "serve.log") as serve:
            time.sleep(5)
            idle = serve.memory().get("VmRSS", 0)
            ctx.log(f"footprint: idle RSS {idle / 2**20:.1f} MB")

            def quiet() -> bool:
                with rt.db.session() as session:
                    busy = session.exec(
                        select(func.count())
                        .select_from(Environment)
                        .where(Environment.generation != Environment.observed_generation)
                    ).one()
                    pending = session.exec(
                        select(func.count())
                        .select_from(Delivery)
                        .where(Delivery.status == "pending")
                    ).one()
                    owed = session.exec(
                        select(func.count())
                        .select_from(PullRequest)
                        .where(PullRequest.sync_version != PullRequest.synced_version)
                    ).one()
                return busy == 0 and pending == 0 and owed == 0

            lock = threading.Lock()
            done: list[int] = []
            errors: list[str] = []

            def env_of(repo: str, number: int) -> Environment | None:
                with rt.db.session() as session:
                    return session.exec(
                        select(Environment).where(
                            Environment.repository == repo, Environment.pr_number == number
                        )
                    ).first()

            def run_one(number: int) -> None:
                repo = repos[number % INSTALLATIONS]
                try:
                    fake.add_pull(repo, number, os.urandom(20).hex(), f"churn/{number}")
                    post_event(serve.webhook_url, pr_event(fake, "opened", repo, number))
                    wait_until(
                        lambda: (e := env_of(repo, number)) is not None and e.status == "ready",
                        300,
                        0.05,
                        f"{repo}#{number} ready",
                    )
                    fake.update_pull(repo, number, state="closed")
                    post_event(serve.webhook_url, pr_event(fake, "closed", repo, number))
                    wait_until(
                        lambda: (e := env_of(repo, number)) is not None and e.status == "destroyed",
                        300,
                        0.05,
                        f"{repo}#{number} destroyed",
                    )
                except Exception as exc:  # surfaced after the lanes stop
                    errors.append(f"{repo}#{number}: {exc}")
                    return
                with lock:
                    done.append(number)
                    if len(done) % 50 == 0:
                        ctx.log(
                            f"footprint: {len(done)}/{total} lifecycles,"
                            f" RSS {serve.memory().get('VmRSS', 0) / 2**20:.1f} MB"
                        )

            def run_lanes(numbers: list[int]) -> None:
                queue = list(reversed(numbers))

                def lane() -> None:
                    while not errors:
                        with lock:
                            if not queue:
                                return
                            number = queue.pop()
                        run_one(number)

                threads = [threading.Thread(target=lane) for _ in range(LANES)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                if errors:
                    raise RuntimeError("; ".join(errors[:3]))

            run_lanes(list(range(1, first + 1)))
            wait_until(quiet, 600, 0.2, "quiet after the first lifecycles")
            time.sleep(2)
            samples.append((len(done), serve.memory().get("VmRSS", 0)))
            ctx.log(f"footprint: after {len(done)} lifecycles RSS {samples[-1][1] / 2**20:.1f} MB")
            run_lanes(list(range(first + 1, total + 1)))
            wait_until(quiet, 1200, 0.2, "quiet after all lifecycles")
            time.sleep(2)
            samples.append((len(done), serve.memory().get("VmRSS", 0)))
            ctx.log(f"footprint: after {len(done)} lifecycles RSS {samples[-1][1] / 2**20:.1f} MB")
            peak = serve.memory().get("VmHWM", 0)
        destroy_everything(rt)
        rt.db.dispose()
    (n1, rss1), (n2, rss2) = samples
    growth = ratio(rss2, rss1)
    return [
        Row(
            NAME,
            "idle RSS of runbot serve",
            f"{idle / 2**20:.0f} MB",
            "200 MB",
            idle / 2**20,
            "<= 200 MB",
            check(idle / 2**20, 200),
            unit=" MB",
        ),
        Row(
            NAME,
            f"RSS after {n2} vs after {n1} lifecycles",
            f"{rss2 / 2**20:.1f} MB",
            f"{rss1 / 2**20:.1f} MB",
            growth,
            "<= 1.10",
            check(growth, 1.10),
            details={"samples": samples, "peak": peak},
        ),
    ]
