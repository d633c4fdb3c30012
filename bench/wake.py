"""Wake: the first request on a sleeping environment, against the wake command, to the app.

One environment of the local stack in one real `runbot serve`, reached through its silo's
ingress. Each round puts it to sleep (the API's `sleep` action, what `/runbot sleep` runs) and
wakes it one of two ways, alternating:

- traffic: a GET on the environment's ingress URL (the waking page, 503), and the ingress asks
  runbot's silo API to wake it; timed from that first request;
- command: the API's `wake` action (`POST /api/environments/{id}/wake`, the Lifecycle call
  `/runbot wake` makes, without GitHub's comment round trip); timed from that request.

Both end when a GET on the same ingress URL answers 200 with the app's page (polled every
20 ms; the ingress's own wake for the command round finds it awake already and changes
nothing). The ratio traffic/command is the cost of waking through the ingress: target <= 1.2.
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx

from bench.harness import (
    OWNER,
    URL_IN_COMMENT,
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
    refuses,
    runtime_for,
    seed_repo,
    status_comment,
    wait_until,
)
from bench.stats import Row, check, fmt_seconds, median, ratio

NAME = "wake"
TARGET = 1.2
TOKEN = "bench-operator-token-0123456789"
SILO = "wake"


def _api(serve: Serve, env_id: str, action: str) -> None:
    response = httpx.post(
        f"{serve.url}/api/environments/{env_id}/{action}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    if response.status_code != 200:
        raise RuntimeError(f"{action} refused: {response.status_code} {response.text}")


def _page(url: str, sha: str) -> bool:
    return answers(url, sha, timeout=5.0)


def _asleep(rt: Any, env_id: str, direct: str) -> bool:
    env = rt.lifecycle.get_environment(env_id)
    return (
        env.status == "sleeping" and env.observed_generation >= env.generation and refuses(direct)
    )


def run(ctx: Context) -> list[Row]:
    rounds = 3 if ctx.quick else 7
    root = ctx.scratch(NAME)
    base = free_port_base(8)
    traffic: list[float] = []
    command: list[float] = []
    with fake_github() as fake:
        repo = f"{OWNER}/wake"
        seed_repo(fake, repo, f"stack: local\nsilo: {SILO}\n")
        install(fake, [repo])
        data = root / "data"
        env_vars = process_env(data, fake, api_token=TOKEN)
        serve = Serve(env_vars, root / "serve.log")
        env_vars["RUNBOT_PUBLIC_URL"] = serve.url  # the silo's runbot_api_url
        rt = runtime_for(data, public_url=serve.url)
        # port_base + 1: the ingress takes port_base - 1, inside the range checked free.
        apply_silo(rt, SILO, "local", {"port_base": base + 1, "capacity": 4})
        with serve:
            sha = os.urandom(20).hex()
            fake.add_pull(repo, 1, sha, "feature/wake")
            post_event(serve.webhook_url, pr_event(fake, "opened", repo, 1))
            found: dict[str, str] = {}

            def ready() -> bool:
                match = URL_IN_COMMENT.search(status_comment(fake, repo, 1) or "")
                if match:
                    found["url"] = match.group(1)
                return bool(match) and _page(found["url"], sha)

            wait_until(ready, 180, 0.05, "the environment to be ready")
            url = found["url"]
            env = rt.lifecycle.list_environments()[0]
            direct = env.outputs["direct_url"]["value"]
            ctx.log(f"wake: {env.id} at {url} (app on {direct})")
            for index in range(rounds * 2):
                _api(serve, env.id, "sleep")
                wait_until(lambda: _asleep(rt, env.id, direct), 120, 0.02, "sleep")
                time.sleep(0.5)  # let the sleep's own writes settle
                by_traffic = index % 2 == 0
                started = time.perf_counter()
                if by_traffic:
                    first = httpx.get(url, timeout=10)
                    if first.status_code != 503 or "Waking up" not in first.text:
                        raise RuntimeError(
                            f"no waking page: {first.status_code} {first.text[:200]}"
                        )
                else:
                    _api(serve, env.id, "wake")
                done = wait_until(lambda: _page(url, sha), 120, 0.02, "the app to answer")
                (traffic if by_traffic else command).append(done - started)
                ctx.log(
                    f"wake round {index // 2 + 1} by {'traffic' if by_traffic else 'command'}:"
                    f" {fmt_seconds(done - started)}"
                )
            woken = rt.lifecycle.get_environment(env.id)
            if woken.desired != "present":
                raise RuntimeError(f"{env.id} ended {woken.desired}")
        destroy_everything(rt)
        rt.db.dispose()
    value = ratio(median(traffic), median(command))
    ctx.notes.append(
        f"wake: first request on a sleeping environment to the app answering through the"
        f" ingress, median {fmt_seconds(median(traffic))}, against the wake command's"
        f" {fmt_seconds(median(command))} ({rounds} rounds each, alternating)"
    )
    return [
        Row(
            NAME,
            "wake by first request vs wake command (to the app answering)",
            fmt_seconds(median(traffic)),
            fmt_seconds(median(command)),
            value,
            f"<= {TARGET}",
            check(value, TARGET),
            details={"traffic": traffic, "command": command},
        )
    ]
