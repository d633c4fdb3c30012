"""Sandbox: what the engine sandbox costs, sandboxed apply against unsandboxed apply.

The same local-stack instance is created (init skipped after the first, as in production) in a
silo applied once per runner, by two `EngineRunner`s alike but for the sandbox, trials
alternating; each trial is then destroyed, so every apply is a create. Timed from `execute`
to its result: the sandbox's cost is the launcher and its init (a Python start, namespaces,
the mounts) before each engine phase. 9 trials (3 with `--quick`). Target: at most 1.10.

Both runs get the same `PATH`, without the directories under runbot's home, which the sandbox
hides: otherwise the provisioners' `python3` would be a pyenv shim (~0.15 s a call here)
outside the sandbox and `/usr/bin/python3` inside it, and the sandbox would look faster.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from app.engine.runner import EngineJob, EngineRunner
from app.engine.sandbox import Sandbox
from bench.harness import TEMPLATES, Context, free_port_base
from bench.stats import Row, fmt_seconds, median, ratio

NAME = "sandbox"
TARGET = 1.10


def _silo(runner: EngineRunner, data: Path, port_base: int) -> dict[str, Any]:
    workspace = data / "workspace" / "silo-bench"
    workspace.mkdir(parents=True, exist_ok=True)
    job = EngineJob(
        "silo-bench",
        TEMPLATES / "local" / "silo",
        "apply",
        {
            "runbot_silo_name": "bench",
            "runbot_workspace_dir": str(workspace),
            "port_base": port_base,
        },
        workspaces=(workspace,),
        silo="bench",
    )
    result = asyncio.run(runner.execute(job, lambda _line: None))
    return {name: item["value"] for name, item in result.outputs.items()}


def _instance(runner: EngineRunner, data: Path, silo: dict[str, Any], trial: int) -> float:
    target = f"env-bench-{trial}"
    variables = {
        "runbot_instance_id": f"bench-{trial}",
        "runbot_slot": 0,
        "runbot_pr_number": trial,
        "runbot_head_sha": "a" * 40,
        "runbot_head_ref": "bench",
        "runbot_repository": "octo/bench",
        "port_base": silo["port_base"],
        "shared_dir": silo["shared_dir"],
        "bind_host": silo["bind_host"],
    }
    workspaces = (data / "workspace" / target, data / "workspace" / "silo-bench")
    for path in workspaces:
        path.mkdir(parents=True, exist_ok=True)
    template = TEMPLATES / "local" / "instance"
    apply = EngineJob(target, template, "apply", variables, workspaces=workspaces, silo="bench")
    started = time.perf_counter()
    asyncio.run(runner.execute(apply, lambda _line: None))
    elapsed = time.perf_counter() - started
    destroy = EngineJob(target, template, "destroy", variables, workspaces=workspaces)
    asyncio.run(runner.execute(destroy, lambda _line: None))
    runner.forget(target)
    return elapsed


def _same_path() -> None:
    home = str(Path.home()).rstrip("/") + "/"
    dirs = os.environ.get("PATH", os.defpath).split(os.pathsep)
    kept = [d for d in dirs if not d.startswith(home)]
    os.environ["PATH"] = os.pathsep.join(kept)


def run(ctx: Context) -> list[Row]:
    trials = 3 if ctx.quick else 9
    _same_path()
    runners = {}
    for name, sandbox in (("plain", None), ("sandboxed", Sandbox())):
        data = ctx.root / f"sandbox-{name}"
        runner = EngineRunner("embedded", data, sandbox=sandbox)
        runners[name] = (runner, data, _silo(runner, data, free_port_base(4)))
    sandbox = runners["sandboxed"][0].sandbox
    if sandbox is not None:
        ctx.notes.append(f"sandbox: engine runs in {sandbox.describe()}")
    times: dict[str, list[float]] = {"plain": [], "sandboxed": []}
    for trial in range(trials + 1):  # the first of each warms the init cache; not counted
        for name in ("plain", "sandboxed") if trial % 2 else ("sandboxed", "plain"):
            runner, data, silo = runners[name]
            elapsed = _instance(runner, data, silo, trial)
            if trial:
                times[name].append(elapsed)
        ctx.log(f"sandbox trial {trial}/{trials}")
    plain, sandboxed = median(times["plain"]), median(times["sandboxed"])
    value = ratio(sandboxed, plain)
    return [
        Row(
            NAME,
            "sandboxed apply / unsandboxed apply",
            fmt_seconds(sandboxed),
            fmt_seconds(plain),
            value=value,
            target=f"<= {TARGET:.2f}",
            passed=value <= TARGET,
            details={
                "trials": trials,
                "plain_s": times["plain"],
                "sandboxed_s": times["sandboxed"],
            },
        )
    ]
