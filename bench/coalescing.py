"""Coalescing: 100 `synchronize` deliveries for one PR, each with a new head commit, over 5 s.

The deliveries are spread evenly over the 5 s. The benchmark counts the engine applies they
caused (target: at most 2) and checks that the commit finally deployed and served is the last
one pushed.
"""

from __future__ import annotations

import os
import time

from sqlmodel import select

from app.db.models import Environment, Run
from bench.harness import (
    OWNER,
    Context,
    Serve,
    answers,
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
from bench.stats import Row, check, fmt_seconds

NAME = "coalescing"
EVENTS = 100
WINDOW = 5.0


def run(ctx: Context) -> list[Row]:
    root = ctx.scratch(NAME)
    repo = f"{OWNER}/coalescing"
    number = 7
    with fake_github() as fake:
        seed_repo(fake, repo, "stack: local\nsilo: burst\n")
        install(fake, [repo])
        data = root / "data"
        rt = runtime_for(data)
        apply_silo(rt, "burst", "local", {"port_base": free_port_base(10), "capacity": 5})
        first = os.urandom(20).hex()
        fake.add_pull(repo, number, first, "feature/burst")
        with Serve(process_env(data, fake), root / "serve.log") as serve:
            post_event(serve.webhook_url, pr_event(fake, "opened", repo, number))

            def env() -> Environment | None:
                with rt.db.session() as session:
                    return session.exec(
                        select(Environment).where(Environment.pr_number == number)
                    ).first()

            def settled_at(sha: str) -> bool:
                row = env()
                return bool(
                    row
                    and row.status == "ready"
                    and row.deployed_sha == sha
                    and row.generation == row.observed_generation
                    and row.lease_owner is None
                )

            wait_until(lambda: settled_at(first), 120, 0.05, "the PR's environment")
            env_row = env()
            assert env_row is not None and env_row.url
            shas = [os.urandom(20).hex() for _ in range(EVENTS)]
            started = time.perf_counter()
            for index, sha in enumerate(shas):
                fake.update_pull(repo, number, head_sha=sha)
                post_event(serve.webhook_url, pr_event(fake, "synchronize", repo, number))
                # Evenly spread: event i leaves at i * WINDOW / EVENTS after the first.
                pause = started + (index + 1) * WINDOW / EVENTS - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
            sent_in = time.perf_counter() - started
            last = shas[-1]
            done = wait_until(lambda: settled_at(last), 180, 0.05, "the last commit deployed")
            converged = done - started
            served = answers(env_row.url, last)
            time.sleep(3)  # anything still to come would show up as an extra run
            with rt.db.session() as session:
                runs = list(
                    session.exec(
                        select(Run).where(Run.target_id == env_row.id, Run.operation == "apply")
                    )
                )
            applies = [r for r in runs if r.head_sha != first]
            final_ok = settled_at(last) and served
        destroy_everything(rt)
        rt.db.dispose()
    ctx.log(
        f"coalescing: {EVENTS} pushes in {sent_in:.2f}s → {len(applies)} applies"
        f" ({', '.join((r.head_sha or '')[:7] for r in applies)}); last deployed after"
        f" {fmt_seconds(converged)}"
    )
    return [
        Row(
            NAME,
            f"applies for {EVENTS} pushes in {WINDOW:.0f} s",
            f"{len(applies)} applies",
            f"{EVENTS} events",
            float(len(applies)),
            "<= 2",
            check(len(applies), 2),
            unit="count",
            details={"shas": [r.head_sha for r in applies], "sent_in_s": sent_in},
        ),
        Row(
            NAME,
            "final SHA is the last one",
            "yes" if final_ok else "NO",
            f"last deployed {fmt_seconds(converged)} after the first push",
            float(final_ok),
            "yes",
            final_ok,
            unit="count",
        ),
    ]
