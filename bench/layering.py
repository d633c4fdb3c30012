"""Layering: a PR's environment in an existing silo, against silo + instance from scratch.

Both are timed from the webhook until the URL in the status comment answers, through a real
`runbot serve`; from scratch, the silo is created on the PR's first use. 5 trials (2 with
`--quick`).

Two stacks, both copies of `infra-templates/local` (only the silo's default port moved to a free
range, since a silo created on first use gets no operator vars):

- `bench-local`: the local stack as shipped;
- `bench-slow`: the same, plus one silo resource that sleeps 60 s (`SLOW_SILO_SECONDS`), standing
  in for the cloud resources a real silo creates; not run with `--quick`. The figure is AWS's
  own: the shipped aws silo creates a Route 53 record, and the provider waits for it to reach
  INSYNC; "Changes generally propagate to all Route 53 name servers within 60 seconds" (Amazon
  Route 53 Developer Guide, "Editing records"). It is a floor for that silo (it also creates an
  ALB, an ECS cluster...), and small next to a silo holding a Kubernetes cluster: EKS control
  plane creation "currently averages 15 minutes" (aws/containers-roadmap#1227).

The instance template is identical in both stacks, so the in-existing-silo time measured with
`bench-local` is the numerator of both ratios.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

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
    refuses,
    runtime_for,
    seed_repo,
    status_comment,
    wait_until,
)
from bench.stats import Row, fmt_seconds, median, ratio
from tests.fakegithub.server import FakeGitHub

NAME = "layering"
SLOW_SILO_SECONDS = 60
SOURCE = (
    "Route 53 change propagation, 'generally within 60 seconds' (Amazon Route 53 Developer"
    " Guide); EKS control planes average 15 min (aws/containers-roadmap#1227)"
)
SLEEP_RESOURCE = """
# bench: stands in for the cloud resources of a real silo (see bench/layering.py).
resource "terraform_data" "simulated_cloud" {
  provisioner "local-exec" {
    command = "sleep %d"
  }
}
"""


def make_catalog(root: Path, port_base: int) -> Path:
    catalog = root / "templates"
    for name, sleep in (("bench-local", 0), ("bench-slow", SLOW_SILO_SECONDS)):
        target = catalog / name
        shutil.copytree(TEMPLATES / "local", target)
        variables = target / "silo" / "variables.tf"
        text, count = re.subn(
            r"default\s*=\s*47100", f"default     = {port_base}", variables.read_text()
        )
        if count != 1:
            raise RuntimeError("could not move the local silo's default port")
        variables.write_text(text)
        if sleep:
            with (target / "silo" / "main.tf").open("a") as handle:
                handle.write(SLEEP_RESOURCE % sleep)
    return catalog


def open_and_wait(
    fake: FakeGitHub, serve: Serve, rt: Runtime, repo: str, number: int
) -> tuple[float, str]:
    github_idle(fake, rt)
    sha = os.urandom(20).hex()
    fake.add_pull(repo, number, sha, f"feature/{number}")
    found: dict[str, str] = {}

    def ready() -> bool:
        body = status_comment(fake, repo, number) or ""
        match = URL_IN_COMMENT.search(body)
        if "Preview environment ready" not in body or not match:
            return False
        found["url"] = match.group(1)
        return answers(found["url"], sha)

    event = pr_event(fake, "opened", repo, number)  # ready before the clock, as GitHub's
    started = time.perf_counter()
    post_event(serve.webhook_url, event)
    elapsed = wait_until(ready, SLOW_SILO_SECONDS * 4, what=f"{repo}#{number}") - started
    return elapsed, found["url"]


def close_and_wait(fake: FakeGitHub, serve: Serve, repo: str, number: int, url: str) -> None:
    fake.update_pull(repo, number, state="closed")
    post_event(serve.webhook_url, pr_event(fake, "closed", repo, number))

    def gone() -> bool:
        return "Preview environment destroyed" in (status_comment(fake, repo, number) or "")

    wait_until(gone, 120, 0.02, f"{repo}#{number} destroyed")
    wait_until(lambda: refuses(url), 30, 0.02, "the URL to close")


def run(ctx: Context) -> list[Row]:
    trials = 2 if ctx.quick else 5
    # The slow variant is a minute per trial: only the full run has it.
    slow_trials = 0 if ctx.quick else 2
    root = ctx.scratch(NAME)
    scratch_base = free_port_base(40)
    shared_base = scratch_base + 20  # both ranges were checked free
    catalog = make_catalog(root, scratch_base)
    existing: list[float] = []
    scratch: dict[str, list[float]] = {"bench-local": [], "bench-slow": []}
    with fake_github() as fake:
        shared_repo = f"{OWNER}/layered"
        seed_repo(fake, shared_repo, "stack: bench-local\nsilo: shared\n")
        repos = [shared_repo]
        plan = [("bench-local", i) for i in range(trials)]
        plan += [("bench-slow", i) for i in range(slow_trials)]
        for stack, index in plan:
            repo = f"{OWNER}/{stack}-{index}"
            seed_repo(fake, repo, f"stack: {stack}\nsilo: {stack}-{index}\n")
            repos.append(repo)
        install(fake, repos)
        data = root / "data"
        rt = runtime_for(data, templates_dir=catalog)
        apply_silo(rt, "shared", "bench-local", {"port_base": shared_base, "capacity": 5})
        env_vars = process_env(data, fake, templates=catalog)
        with Serve(env_vars, root / "serve.log") as serve:
            number = 0
            # Warm-up (not counted): first token, first engine start.
            number += 1
            _, url = open_and_wait(fake, serve, rt, shared_repo, number)
            close_and_wait(fake, serve, shared_repo, number, url)
            for stack, index in plan:
                if stack == "bench-local":
                    number += 1
                    elapsed, url = open_and_wait(fake, serve, rt, shared_repo, number)
                    existing.append(elapsed)
                    close_and_wait(fake, serve, shared_repo, number, url)
                repo = f"{OWNER}/{stack}-{index}"
                if stack == "bench-slow":
                    ctx.log(f"layering: silo from scratch sleeping {SLOW_SILO_SECONDS}s ({SOURCE})")
                elapsed, url = open_and_wait(fake, serve, rt, repo, 1)
                scratch[stack].append(elapsed)
                close_and_wait(fake, serve, repo, 1, url)
                # Free the scratch silo's ports for the next trial.
                rt.lifecycle.destroy_silo(f"{stack}-{index}")
                wait_until(
                    lambda s=f"{stack}-{index}": rt.lifecycle.get_silo(s).status == "destroyed",
                    120,
                    0.05,
                    "the scratch silo to go",
                )
                ctx.log(
                    f"layering {stack} #{index + 1}: from scratch {fmt_seconds(elapsed)}"
                    + (f", in the existing silo {fmt_seconds(existing[-1])}" if existing else "")
                )
        destroy_everything(rt)
        rt.db.dispose()
    in_silo = median(existing)
    rows = []
    for stack, label in (
        ("bench-local", "local stack"),
        ("bench-slow", f"silo sleeping {SLOW_SILO_SECONDS} s"),
    ):
        if not scratch[stack]:
            ctx.notes.append("layering: the 60 s silo variant runs without --quick only")
            continue
        value = ratio(in_silo, median(scratch[stack]))
        rows.append(
            Row(
                NAME,
                f"instance in existing silo vs from scratch ({label})",
                fmt_seconds(in_silo),
                fmt_seconds(median(scratch[stack])),
                value,
                "-",
                None,
                details={"existing": existing, "scratch": scratch[stack]},
            )
        )
    if scratch["bench-slow"]:
        ctx.notes.append(
            f"layering: the slow variant's silo sleeps {SLOW_SILO_SECONDS} s, from {SOURCE}."
            " A lower ratio is a bigger benefit."
        )
    return rows
