"""Lifecycle: what the bot adds to each step of a PR, through `runbot serve` and the fake GitHub.

- create: `opened` webhook sent → the status comment shows the URL, and the URL answers with
  the PR's commit; against the engine's own `init` + `apply` of the same instance template with
  the same variables, run by hand (target: at most 1.10x). runbot runs `init` once per template,
  not once per PR, so create is also shown against the engine's `apply` alone: what the bot adds
  on top of the one engine run it cannot avoid.
- update: `synchronize` sent → the comment shows the new commit deployed, and the page serves
  it; against `init` + `apply` with the new commit.
- destroy: `closed` sent → the comment says destroyed, and the URL reaches nothing;
  against `init` + `destroy`.

9 trials (3 with `--quick`), after one warm-up trial of each side that is not counted. Bot and
direct trials alternate, so slow drifts of a shared machine hit both sides alike. The direct
runs use the same engine (the embedded shim), argv, variables (from the same silo's outputs),
state backend kind and engine environment as runbot does.

Each webhook's payload is built before its clock starts: GitHub's sender has it ready, and
building one in the fake takes ~5 ms, which the bot's figure used to carry. Before each step,
the previous step's GitHub writes are let finish: they are paced at about one a second per
installation, and would otherwise delay the next step's comment. The benchmark re-checks the
comment each time the fake GitHub has handled a request rather than polling.
"""

from __future__ import annotations

import os
import time
from typing import Any

from sqlmodel import col, select

from app.db.models import Environment, Run
from bench.harness import (
    OWNER,
    URL_IN_COMMENT,
    Context,
    DirectEngine,
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
    refuses,
    runtime_for,
    seed_repo,
    status_comment,
    wait_for_github,
    wait_until,
)
from bench.stats import Row, check, fmt_seconds, median, ratio
from tests.fakegithub.server import FakeGitHub

NAME = "lifecycle"
READY = "Preview environment ready"
DESTROYED = "Preview environment destroyed"
STEPS = ("create", "update", "destroy")


def settle(fake: FakeGitHub, repo: str, number: int, deployment: str, sha: str) -> None:
    """Let the previous step's GitHub side effects finish before timing the next step
    (deletes count: a closed PR's tidy-up takes write slots too).

    GitHub writes are paced (about one a second per installation), so the deployment statuses
    a step owes would otherwise delay the next step's comment: each step is measured alone.
    """

    def done() -> bool:
        writes = [
            r.time
            for r in fake.requests
            if r.method in ("POST", "PATCH", "DELETE") and r.path.startswith(f"/repos/{repo}/")
        ]
        quiet = not writes or time.monotonic() - max(writes) > 1.1
        mine = [d for d in fake.deployments(repo) if d["environment"] == f"pr-{number}"]
        if not mine and deployment == "inactive":
            return quiet  # a closed PR's inactive deployments are deleted: settled too
        if not mine or mine[-1]["sha"] != sha:
            return False
        statuses = fake.deployment_statuses(repo, mine[-1]["id"])
        if not statuses or statuses[-1]["state"] != deployment:
            return False
        return not writes or time.monotonic() - max(writes) > 1.1

    wait_until(done, 60, 0.05, f"PR {number}'s GitHub writes to settle")


def bot_lifecycle(fake: FakeGitHub, serve: Serve, repo: str, number: int) -> dict[str, float]:
    first, second = os.urandom(20).hex(), os.urandom(20).hex()
    fake.add_pull(repo, number, first, f"feature/{number}")
    found: dict[str, str] = {}

    def created() -> bool:
        body = status_comment(fake, repo, number)
        match = URL_IN_COMMENT.search(body or "")
        if not body or READY not in body or not match:
            return False
        found["url"] = match.group(1)
        return answers(found["url"], first)

    event = pr_event(fake, "opened", repo, number)
    started = _now()
    post_event(serve.webhook_url, event)
    create = wait_for_github(fake, created, 180, what=f"PR {number} created") - started
    settle(fake, repo, number, "success", first)
    fake.update_pull(repo, number, head_sha=second)

    def updated() -> bool:
        body = status_comment(fake, repo, number) or ""
        return (
            READY in body
            and second[:7] in body
            and first[:7] not in body
            and answers(found["url"], second)
        )

    event = pr_event(fake, "synchronize", repo, number)
    started = _now()
    post_event(serve.webhook_url, event)
    update = wait_for_github(fake, updated, 180, what=f"PR {number} updated") - started
    settle(fake, repo, number, "success", second)
    fake.update_pull(repo, number, state="closed")

    def destroyed() -> bool:
        body = status_comment(fake, repo, number) or ""
        return DESTROYED in body and refuses(found["url"])

    event = pr_event(fake, "closed", repo, number)
    started = _now()
    post_event(serve.webhook_url, event)
    destroy = wait_for_github(fake, destroyed, 180, what=f"PR {number} destroyed") - started
    settle(fake, repo, number, "inactive", second)
    return {"create": create, "update": update, "destroy": destroy}


def engine_runs(rt: Any, repo: str, number: int) -> dict[str, float]:
    """Durations of the bot's engine runs for one PR (create, update, destroy)."""
    with rt.db.session() as session:
        env = session.exec(
            select(Environment).where(
                Environment.repository == repo, Environment.pr_number == number
            )
        ).one()
        runs = list(session.exec(select(Run).where(Run.target_id == env.id).order_by(col(Run.id))))
    spans = [(r.finished_at - r.started_at).total_seconds() for r in runs if r.finished_at]
    return dict(zip(STEPS, spans, strict=False))


def direct_lifecycle(direct: DirectEngine, index: int, slot: int) -> dict[str, Any]:
    instance = f"direct-{index}-{os.urandom(3).hex()}"
    first, second = os.urandom(20).hex(), os.urandom(20).hex()
    url = direct.url(slot)
    workdir = direct.prepare(instance, slot, first)
    init = direct.init(workdir, instance)
    apply = direct.apply(workdir, instance)
    if not answers(url, first):
        raise RuntimeError("the direct apply left no answering URL")
    direct.write_vars(workdir, instance, slot, second)
    init2 = direct.init(workdir, instance)
    apply2 = direct.apply(workdir, instance)
    if not answers(url, second):
        raise RuntimeError("the direct update did not serve the new commit")
    init3 = direct.init(workdir, instance)
    destroy = direct.apply(workdir, instance, "destroy")
    if not refuses(url):
        raise RuntimeError("the direct destroy left the URL answering")
    return {
        "create": init + apply,
        "update": init2 + apply2,
        "destroy": init3 + destroy,
        "init": (init + init2 + init3) / 3,
        "apply": apply,
        "update_apply": apply2,
        "destroy_only": destroy,
    }


def _now() -> float:
    return time.perf_counter()


def run(ctx: Context) -> list[Row]:
    trials = 3 if ctx.quick else 9
    root = ctx.scratch(NAME)
    repo = f"{OWNER}/lifecycle"
    bot: dict[str, list[float]] = {step: [] for step in STEPS}
    base: dict[str, list[float]] = {}
    inside: dict[str, list[float]] = {}  # the bot's own engine runs, from its run table
    with fake_github() as fake:
        seed_repo(fake, repo, "stack: local\nsilo: bench\n")
        install(fake, [repo])
        data = root / "data"
        rt = runtime_for(data)
        apply_silo(rt, "bench", "local", {"port_base": free_port_base(25), "capacity": 20})
        direct = DirectEngine(root / "direct", rt.lifecycle.get_silo("bench").outputs)
        with Serve(process_env(data, fake), root / "serve.log") as serve:
            for trial in range(trials + 1):  # trial 0 warms both sides up and is not counted
                order = ["bot", "direct"] if trial % 2 else ["direct", "bot"]
                for side in order:
                    if side == "bot":
                        got = bot_lifecycle(fake, serve, repo, 100 + trial)
                        if trial:
                            for step in STEPS:
                                bot[step].append(got[step])
                            for step, seconds in engine_runs(rt, repo, 100 + trial).items():
                                inside.setdefault(step, []).append(seconds)
                    else:
                        figures = direct_lifecycle(direct, trial, slot=19)
                        if trial:
                            for key, value in figures.items():
                                base.setdefault(key, []).append(value)
                if trial:
                    ctx.log(
                        f"lifecycle trial {trial}/{trials}: "
                        + ", ".join(
                            f"{step} {fmt_seconds(bot[step][-1])} vs {fmt_seconds(base[step][-1])}"
                            for step in STEPS
                        )
                    )
        destroy_everything(rt)
        rt.db.dispose()
    rows = []
    for step in STEPS:
        value = ratio(median(bot[step]), median(base[step]))
        baseline = {"create": "init+apply", "update": "init+apply", "destroy": "init+destroy"}
        rows.append(
            Row(
                NAME,
                f"{step}: webhook → comment + URL",
                fmt_seconds(median(bot[step])),
                f"{fmt_seconds(median(base[step]))} ({baseline[step]})",
                value,
                "<= 1.10" if step == "create" else "-",
                check(value, 1.10) if step == "create" else None,
                details={"bot": bot[step], "direct": base[step]},
            )
        )
    # runbot skips `init` for a new PR's environment once its template has been initialised
    # (app/engine/initcache.py), so its create is also shown against `apply` alone: what the bot
    # adds on top of the engine run it cannot avoid.
    value = ratio(median(bot["create"]), median(base["apply"]))
    rows.insert(
        1,
        Row(
            NAME,
            "create: webhook → comment + URL, against apply alone",
            fmt_seconds(median(bot["create"])),
            f"{fmt_seconds(median(base['apply']))} (apply)",
            value,
            details={"bot": bot["create"], "direct": base["apply"]},
        ),
    )
    ctx.notes.append(
        "lifecycle: runbot's own engine runs (its run table, claim to release) take, in"
        " medians, "
        + ", ".join(f"{step} {fmt_seconds(median(inside.get(step, [])))}" for step in STEPS)
    )
    ctx.notes.append(
        "lifecycle: the direct engine alone takes, in medians, init "
        f"{fmt_seconds(median(base['init']))}, apply {fmt_seconds(median(base['apply']))},"
        f" re-apply {fmt_seconds(median(base['update_apply']))},"
        f" destroy {fmt_seconds(median(base['destroy_only']))}"
    )
    return rows
