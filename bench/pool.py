"""Pool: PR opened to a working URL from a warm instance, against a cold create and a push.

One real `runbot serve` and the bench-only stack `bench/stacks/pooled`: its instance has a
PR-independent part that takes 5 s (a `sleep 5` whose triggers hold no PR value) and a
PR-specific part of about 0.3 s (the page with the PR's number and head SHA), served on the
slot's port by the local stack's page server; it outputs `runbot_wait_for_url = true`. Two
silos of that stack: `warm` keeps a pool of 4 (`runbot_pool_size`) for its repository, `cold`
none. Each round, alternating, with the pool full and GitHub's writes settled before each:

- warm: a PR opens in the pooled repository and claims a warm instance, whose PR part is then
  applied (an update);
- cold: a PR opens in the repository of the silo without a pool: a fresh create;
- plain update: a push (`synchronize`) on an existing environment of the cold silo.

Each is timed from posting the webhook until the PR's status comment shows its head SHA ready
with the URL and a GET on that URL answers 200 with the SHA (polled every 20 ms): the same end
for all three, as in `lifecycle`. Targets: warm/cold <= 0.15, warm/update <= 1.2 (medians).
Noted too: when the environment's page first served the commit (its URL read from runbot's
database), whatever the comment said: a cold create's comment sometimes shows ready 1-3 s
after its page serves, its edit waiting its turn among GitHub's paced writes (one a second).

Then the burst: 20 PRs open at once in the pooled repository, and each PR's time to its URL
serving its SHA is taken (the URL read from runbot's database: GitHub's paced writes, about one
a second, would otherwise time the comments). Passing: the first 4 PRs opened, and only they,
claimed a warm instance and are at warm speed (under 3x the rounds' warm median to the page:
the claims share the 2 cores with the burst's deliveries and creates), the other 16 at cold
speed (at least 0.8x the cold median to the page), all 20 ready with their own SHA and one
environment each, every status comment showing its URL, and the pool back to 4 warm ready
instances afterwards (waited for, and timed).

Not measured: the refill between rounds (waited for), GitHub's latency (the fake's is nil), and
a 5 s part that is anything but a sleep. `--quick` runs 2 rounds of each instead of 5.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from sqlmodel import col, select

from app.db.models import Environment
from app.lifecycle.pool import CLAIMED, of_a_pr
from app.lifecycle.states import Desired, Status
from app.runtime import Runtime
from bench.harness import (
    OWNER,
    TEMPLATES,
    URL_IN_COMMENT,
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
from bench.lifecycle import READY
from bench.stats import Row, check, fmt_seconds, median, ratio
from tests.fakegithub.server import FakeGitHub

NAME = "pool"
STACKS = Path(__file__).resolve().parent / "stacks"
SERVER_SCRIPT = TEMPLATES / "local" / "silo" / "server.py"
POOL, BURST = 4, 20
COLD_TARGET, UPDATE_TARGET = 0.15, 1.2
WARM_SPEED, COLD_SPEED = 3.0, 0.8  # the burst's split: x the warm median, x the cold median
POLL = 0.02
WARM_REPO, COLD_REPO = f"{OWNER}/pool-warm", f"{OWNER}/pool-cold"


def _sha() -> str:
    return os.urandom(20).hex()


def _shown(fake: FakeGitHub, repo: str, number: int, sha: str) -> str | None:
    """The URL in the PR's status comment, once the comment shows the head SHA ready."""
    body = status_comment(fake, repo, number) or ""
    match = URL_IN_COMMENT.search(body)
    if match is None or READY not in body or sha[:7] not in body:
        return None
    return match.group(1)


def _serves(fake: FakeGitHub, repo: str, number: int, sha: str) -> bool:
    url = _shown(fake, repo, number, sha)
    return url is not None and answers(url, sha)


def _env_url(rt: Runtime, repo: str, number: int) -> str | None:
    """The URL runbot recorded for the PR's environment (a claimed one keeps its warm URL)."""
    env = rt.lifecycle.live_environment_for(repo, number)
    url = (env.outputs.get("url") or {}).get("value") if env is not None else None
    return url if isinstance(url, str) else None


def _timed(
    fake: FakeGitHub, serve: Serve, rt: Runtime, repo: str, number: int, action: str
) -> tuple[float, float]:
    """Post the PR's webhook; seconds until the comment shows its head SHA ready and the URL
    serves it, and until the environment's URL first served it, whatever the comment said."""
    sha = fake.pull_request_event(action, repo, number)["pull_request"]["head"]["sha"]
    served: list[float] = []

    def done() -> bool:
        if not served and (url := _env_url(rt, repo, number)) and answers(url, sha):
            served.append(time.perf_counter())
        return _serves(fake, repo, number, sha)

    started = time.perf_counter()
    post_event(serve.webhook_url, pr_event(fake, action, repo, number))
    end = wait_until(done, 180, POLL, f"{repo}#{number}")
    return end - started, (served[0] if served else end) - started


def _warm_ready(rt: Runtime, silo: str, repo: str) -> int:
    return sum(
        env.status == Status.READY and env.generation == env.observed_generation
        for env in rt.lifecycle.pool_members(silo, repo)
    )


def _quiet(fake: FakeGitHub, rt: Runtime) -> None:
    """The pool full and ready, and GitHub owed nothing: each round starts from rest."""
    wait_until(lambda: _warm_ready(rt, "warm", WARM_REPO) >= POOL, 180, 0.1, "the pool to fill")
    github_idle(fake, rt)


def _rounds(
    ctx: Context, fake: FakeGitHub, serve: Serve, rt: Runtime, rounds: int
) -> dict[str, list[float]]:
    kinds = ("warm", "cold", "update")
    times: dict[str, list[float]] = {name: [] for kind in kinds for name in (kind, f"{kind}_page")}
    fake.add_pull(COLD_REPO, 1, _sha(), "bench/pushed")
    _timed(fake, serve, rt, COLD_REPO, 1, "opened")  # the environment the pushes update
    for index in range(rounds):
        number = 10 + index
        for kind in kinds:
            _quiet(fake, rt)
            if kind == "update":
                fake.update_pull(COLD_REPO, 1, head_sha=_sha())
                elapsed, page = _timed(fake, serve, rt, COLD_REPO, 1, "synchronize")
            else:
                repo = WARM_REPO if kind == "warm" else COLD_REPO
                fake.add_pull(repo, number, _sha(), f"bench/{kind}-{number}")
                elapsed, page = _timed(fake, serve, rt, repo, number, "opened")
            if kind == "warm":
                env = rt.lifecycle.live_environment_for(WARM_REPO, number)
                if env is None or env.pool_state != CLAIMED:
                    raise RuntimeError(f"warm round {index + 1} did not claim: {env}")
            times[kind].append(elapsed)
            times[f"{kind}_page"].append(page)
            ctx.log(
                f"pool round {index + 1} {kind}: {fmt_seconds(elapsed)}"
                f" (page served it after {fmt_seconds(page)})"
            )
    return times


def _burst_envs(rt: Runtime, numbers: list[int]) -> dict[int, Environment]:
    with rt.db.session() as session:
        query = select(Environment).where(
            Environment.repository == WARM_REPO,
            col(Environment.pr_number).in_(numbers),
            of_a_pr(),
            Environment.desired == Desired.PRESENT,
            Environment.status != Status.DESTROYED,
        )
        return {env.pr_number: env for env in session.exec(query)}


def _burst(
    ctx: Context, fake: FakeGitHub, serve: Serve, rt: Runtime, warm: float, cold: float
) -> Row:
    """20 PRs at once against a pool of 4: who got a warm instance, how fast, nothing lost.
    `warm` and `cold` are the rounds' medians to the page serving, as the burst is timed."""
    _quiet(fake, rt)
    numbers = list(range(100, 100 + BURST))
    shas = {number: _sha() for number in numbers}
    for number in numbers:
        fake.add_pull(WARM_REPO, number, shas[number], f"bench/burst-{number}")
    payloads = {number: pr_event(fake, "opened", WARM_REPO, number) for number in numbers}
    started: dict[int, float] = {}
    for number in numbers:
        started[number] = time.perf_counter()
        post_event(serve.webhook_url, payloads[number])
    times: dict[int, float] = {}

    def all_serve() -> bool:
        envs = _burst_envs(rt, [n for n in numbers if n not in times])
        for number, env in envs.items():
            url = (env.outputs.get("url") or {}).get("value")
            if url and answers(url, shas[number]):
                times[number] = time.perf_counter() - started[number]
        return len(times) == BURST

    wait_until(all_serve, 300, POLL, "the burst's 20 URLs")
    last = time.perf_counter()
    envs = _burst_envs(rt, numbers)
    claimed = sorted(n for n, env in envs.items() if env.pool_state == CLAIMED)
    fast = sorted(n for n, t in times.items() if t < WARM_SPEED * warm)
    slow = sorted(n for n, t in times.items() if t >= COLD_SPEED * cold)
    wait_until(lambda: _settled(rt, numbers, shas), 120, 0.1, "the burst's environments")
    wait_until(
        lambda: all(_serves(fake, WARM_REPO, n, shas[n]) for n in numbers),
        300,
        0.2,
        "the burst's status comments",
    )
    comments = time.perf_counter() - last
    wait_until(lambda: _warm_ready(rt, "warm", WARM_REPO) >= POOL, 180, 0.1, "the refill")
    refill = time.perf_counter() - last
    refilled = _warm_ready(rt, "warm", WARM_REPO)
    per_pr = len(_burst_envs(rt, numbers))
    passed = (
        len(fast) == POOL
        and fast == claimed == numbers[:POOL]
        and len(slow) == BURST - POOL
        and per_pr == BURST
        and refilled == POOL
    )
    ordered = sorted(times.values())
    ctx.notes.append(
        f"pool: burst of {BURST} PRs (#{numbers[0]}-#{numbers[-1]}, opened in that order) with"
        f" a pool of {POOL}: {', '.join(f'#{n}' for n in claimed)} claimed warm instances;"
        f" {len(fast)} at warm speed ({', '.join(fmt_seconds(t) for t in ordered[:POOL])}),"
        f" the rest {fmt_seconds(ordered[POOL])} to {fmt_seconds(ordered[-1])}; every comment"
        f" showed the URL {fmt_seconds(comments)} after the last URL served (GitHub's paced"
        f" writes), the pool was full again after {fmt_seconds(refill)}"
    )
    return Row(
        NAME,
        f"burst: {BURST} PRs at once, pool of {POOL}",
        f"{len(fast)} warm / {len(slow)} cold, {per_pr} ready",
        f"page medians: warm {fmt_seconds(warm)}, cold {fmt_seconds(cold)}",
        float(len(fast)),
        f"{POOL} warm, {BURST - POOL} cold, none lost, refilled",
        passed,
        unit="count",
        details={
            "times": {str(n): times[n] for n in numbers},
            "claimed": claimed,
            "warm_speed": fast,
            "cold_speed": slow,
            "environments": per_pr,
            "refilled": refilled,
            "comments_after_s": comments,
            "refill_after_s": refill,
        },
    )


def _settled(rt: Runtime, numbers: list[int], shas: dict[int, str]) -> bool:
    """Every burst PR has one environment, ready, showing its own head SHA."""
    envs = _burst_envs(rt, numbers)
    return len(envs) == len(numbers) and all(
        env.status == Status.READY
        and env.generation == env.observed_generation
        and (env.outputs.get("head_sha") or {}).get("value") == shas[number]
        for number, env in envs.items()
    )


def run(ctx: Context) -> list[Row]:
    rounds = 2 if ctx.quick else 5
    root = ctx.scratch(NAME)
    # 20 burst PRs, the rounds' PRs, the first one, 4 warm, the reserved slot, and spare.
    warm_capacity, cold_capacity = BURST + rounds + POOL + 8, rounds + 4
    base = free_port_base(warm_capacity + cold_capacity)
    with fake_github() as fake:
        for repo, silo in ((WARM_REPO, "warm"), (COLD_REPO, "cold")):
            # The default `max_environments` (10) would queue the burst.
            config = f"stack: pooled\nsilo: {silo}\nmax_environments: {warm_capacity}\n"
            seed_repo(fake, repo, config)
        install(fake, [WARM_REPO, COLD_REPO])
        data = root / "data"
        rt = runtime_for(data, templates_dir=STACKS)
        script = str(SERVER_SCRIPT)
        apply_silo(
            rt,
            "warm",
            "pooled",
            {
                "server_script": script,
                "port_base": base,
                "capacity": warm_capacity,
                "pool_size": POOL,
            },
        )
        apply_silo(
            rt,
            "cold",
            "pooled",
            {"server_script": script, "port_base": base + warm_capacity, "capacity": cold_capacity},
        )
        try:
            with Serve(process_env(data, fake, templates=STACKS), root / "serve.log") as serve:
                # The repository's first PR is created cold: it tells runbot what the pool is
                # made of.
                fake.add_pull(WARM_REPO, 1, _sha(), "bench/first")
                _timed(fake, serve, rt, WARM_REPO, 1, "opened")
                times = _rounds(ctx, fake, serve, rt, rounds)
                warm, cold, update = (median(times[k]) for k in ("warm", "cold", "update"))
                page = {kind: median(times[f"{kind}_page"]) for kind in ("warm", "cold", "update")}
                burst = _burst(ctx, fake, serve, rt, page["warm"], page["cold"])
        finally:  # even after a failure: the page servers must not outlive the benchmark
            destroy_everything(rt)
            rt.db.dispose()
    against_cold, against_update = ratio(warm, cold), ratio(warm, update)
    ctx.notes.append(
        f"pool: PR opened to its URL with a warm instance, median {fmt_seconds(warm)}, against"
        f" {fmt_seconds(cold)} created cold and {fmt_seconds(update)} for a push ({rounds} rounds"
        f" each, alternating). The environment's page served the PR's commit after"
        f" {fmt_seconds(page['warm'])}, {fmt_seconds(page['cold'])} and"
        f" {fmt_seconds(page['update'])}: ratios {ratio(page['warm'], page['cold']):.2f}x and"
        f" {ratio(page['warm'], page['update']):.2f}x without the status comment's paced writes"
    )
    return [
        Row(
            NAME,
            "PR opened → URL: warm instance vs cold create (5 s + 0.3 s stack)",
            fmt_seconds(warm),
            fmt_seconds(cold),
            against_cold,
            f"<= {COLD_TARGET}",
            check(against_cold, COLD_TARGET),
            details=times,
        ),
        Row(
            NAME,
            "PR opened → URL: warm instance vs a push's update",
            fmt_seconds(warm),
            fmt_seconds(update),
            against_update,
            f"<= {UPDATE_TARGET}",
            check(against_update, UPDATE_TARGET),
        ),
        burst,
    ]
