"""The engine killed or timed out mid-apply: state kept, status says so, a retry converges."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from app.engine.runner import (
    EngineCancelled,
    EngineJob,
    EngineMissing,
    EngineRunner,
    resolve_engine,
)
from app.lifecycle.states import Status
from app.runtime import build_runtime
from tests.conftest import make_settings
from tests.helpers import (
    converge,
    converge_sync,
    env_settled,
    fetch,
    processes_matching,
    silo_ready,
)

pytestmark = pytest.mark.engine
FIXTURES = Path(__file__).parent / "fixtures" / "engine"


def engine_pids(target: str) -> list[int]:
    return [
        int(line.split()[0])
        for line in processes_matching("-chdir=")
        if f"/work/{target}/" in line and "app.engine.embedded" in line
    ]


async def kill_engine_when_server_starts(env_id: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server_up = any("--instance-id" in line for line in processes_matching(env_id))
        pids = engine_pids(f"env-{env_id}")
        if server_up and pids:
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the engine never reached the point of starting the server")


def test_engine_killed_mid_apply_then_retry_converges_with_one_copy(
    tmp_path: Path, port_base: int
) -> None:
    rt = build_runtime(make_settings(tmp_path))
    rt.lifecycle.create_silo("local-default", "local", {"port_base": port_base})
    converge_sync(rt, silo_ready(rt, "local-default"))
    env = rt.lifecycle.create_environment("local-default", "octo/app", 7, "abcdef1")

    async def scenario() -> None:
        killer = asyncio.create_task(kill_engine_when_server_starts(env.id))
        await converge(rt, env_settled(rt, env.id))
        await killer

    asyncio.run(scenario())
    failed = rt.lifecycle.get_environment(env.id)
    assert failed.status == Status.FAILED
    assert "exit code" in (failed.reason or "")
    assert failed.slot is not None  # partial state keeps its slot until destroyed

    rt.lifecycle.retry(failed.id)
    converge_sync(rt, env_settled(rt, env.id))
    ready = rt.lifecycle.get_environment(env.id)
    assert ready.status == Status.READY, ready.reason
    assert "abcdef1" in fetch(ready.url or "").text
    assert len(processes_matching(f"--instance-id {env.id}")) == 1  # exactly one copy

    rt.lifecycle.destroy_environment(env.id)
    converge_sync(rt, env_settled(rt, env.id))
    assert processes_matching(env.id) == []


def test_engine_timeout_sends_sigint_and_keeps_state(tmp_path: Path) -> None:
    """A run past its timeout is interrupted; the engine releases its lock and a retry works."""
    runner = EngineRunner("embedded", tmp_path / "data", timeout=3, cancel_grace=10)
    lines: list[str] = []
    job = EngineJob("env-slow", FIXTURES / "slow", "apply", {"delay": 30, "marker": "one"})
    started = time.monotonic()
    with pytest.raises(EngineCancelled):
        asyncio.run(runner.execute(job, lines.append))
    assert time.monotonic() - started < 20
    assert any("SIGINT" in line for line in lines)
    assert any("Interrupt received" in line or "execution halted" in line for line in lines), lines[
        -10:
    ]
    # The state lock was released: the next run proceeds instead of waiting on a stale lock.
    quick = EngineJob("env-slow", FIXTURES / "slow", "apply", {"delay": 0, "marker": "two"})
    result = asyncio.run(runner.execute(quick, lines.append))
    assert result.outputs["marker"]["value"] == "two"


def test_engine_missing_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(EngineMissing) as info:
        resolve_engine("tofu-does-not-exist")
    assert "Install OpenTofu" in str(info.value) and "RUNBOT_ENGINE=embedded" in str(info.value)
    with pytest.raises(EngineMissing) as info:
        resolve_engine(str(tmp_path / "nope"))
    assert "not an executable" in str(info.value)


def test_engine_missing_fails_the_environment_with_that_message(
    tmp_path: Path, port_base: int
) -> None:
    rt = build_runtime(make_settings(tmp_path))
    rt.lifecycle.create_silo("local-default", "local", {"port_base": port_base})
    converge_sync(rt, silo_ready(rt, "local-default"))
    rt.runner.engine = "/nonexistent/tofu"
    env = rt.lifecycle.create_environment("local-default", "octo/app", 8, "abcdef1")
    converge_sync(rt, env_settled(rt, env.id))
    failed = rt.lifecycle.get_environment(env.id)
    assert failed.status == Status.FAILED
    assert "not an executable" in (failed.reason or "")
    rt.runner.engine = "embedded"
    rt.lifecycle.destroy_silo("local-default", force=True)
    converge_sync(rt, silo_ready(rt, "local-default"))
    assert rt.lifecycle.get_silo("local-default").status == Status.DESTROYED
