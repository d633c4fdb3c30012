"""`runbot engine exec`, the pod's PID 1, run for real: without Kubernetes around it.

The command runs as PID 1 of its own PID namespace (`unshare --pid --fork`), as in a pod,
against a real runbot serving the run-token API on loopback, the embedded engine and real
PostgreSQL. The ticket is minted by the kubernetes executor itself. tests/kubelite's tests put
a Job around the same command.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from app.db.session import Database
from app.engine.backends import libpq_url, schema_name
from app.engine.runner import EngineJob
from app.executor import tickets
from app.executor.kubernetes import KubernetesConfig, KubernetesExecutor
from app.executor.spec import pack
from app.server import create_app
from tests.apphost import free_port
from tests.conftest import make_settings
from tests.webtools import WebServer

pytestmark = [pytest.mark.engine, pytest.mark.postgres]
SLOW = Path(__file__).parent / "fixtures" / "engine" / "slow"
RUNBOT = Path(sys.executable).parent / "runbot"


@dataclass
class Site:
    url: str
    db: Database
    database_url: str
    executor: KubernetesExecutor


@pytest.fixture
def site(tmp_path: Path, postgres_url: str) -> Iterator[Site]:
    port = free_port()
    settings = make_settings(
        tmp_path, postgres_url, public_url=f"http://127.0.0.1:{port}", engine_cancel_grace=10.0
    )
    app = create_app(settings, background=False)
    db = app.state.runtime.db
    config = KubernetesConfig(
        namespace="runbot",
        image="runbot:test",
        service_account="sa",
        callback_url="",
        kubeconfig=None,
    )
    executor = KubernetesExecutor(
        db, config, "embedded", tmp_path / "data", postgres_url, timeout=120, cancel_grace=10
    )
    with WebServer(app, port) as server:
        yield Site(server.url, db, postgres_url, executor)


def start_pod(site: Site, run_id: int, token: str, *extra: str) -> subprocess.Popen[bytes]:
    env = {
        "PATH": f"{RUNBOT.parent}:{os.environ['PATH']}",
        "HOME": os.environ.get("HOME", "/root"),
        "RUNBOT_RUN_CALLBACK": site.url,
        "RUNBOT_RUN_TOKEN": token,
    }
    command = [str(RUNBOT), "engine", "exec", "--run", str(run_id)]
    if extra:  # a mutant of the pod's command, for the checks that a test can fail
        command = [sys.executable, "-c", extra[0], str(run_id)]
    return subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", *command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def pid1(pod: subprocess.Popen[bytes]) -> int:
    """The pod's PID 1 (the command unshare forked), as the kubelet would signal it."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = Path(f"/proc/{pod.pid}/task/{pod.pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.02)
    raise AssertionError("the pod's command never started")


def mint(site: Site, run_id: int, variables: dict[str, object]) -> str:
    job = EngineJob("env-slow", SLOW, "apply", variables, run_id=run_id)
    return asyncio.run(site.executor.mint(job, run_id, pack(SLOW), rotate=False))


def lines(site: Site, run_id: int) -> list[str]:
    return [text for _, text in tickets.lines_after(site.db, run_id, 0, limit=100000)]


def wait_for_line(site: Site, run_id: int, fragment: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(fragment in line for line in lines(site, run_id)):
            return
        time.sleep(0.1)
    raise AssertionError(f"no line with {fragment!r}: {lines(site, run_id)[-10:]}")


def advisory_locks(database_url: str) -> list[tuple[object, ...]]:
    with psycopg.connect(libpq_url(database_url)) as conn:
        # pg_locks is the whole server's: only this test's database counts.
        return conn.execute(
            "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND database ="
            " (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchall()


def saved_state(database_url: str) -> str | None:
    with psycopg.connect(libpq_url(database_url)) as conn:
        row = conn.execute(
            f'SELECT data FROM "{schema_name("env-slow")}".states WHERE name = %s', ("default",)
        ).fetchone()
    return None if row is None else str(row[0])


def test_the_pod_runs_its_job_and_pushes_log_and_result(site: Site) -> None:
    token = mint(site, 1, {"delay": 0, "marker": "one"})
    pod = start_pod(site, 1, token)
    out, _ = pod.communicate(timeout=180)
    assert pod.returncode == 0, out.decode()
    progress = tickets.progress(site.db, 1)
    assert progress is not None and progress.result is not None, out.decode()
    assert progress.result["status"] == "succeeded"
    assert progress.result["outputs"]["marker"]["value"] == "one"
    log = lines(site, 1)
    assert any("Apply complete" in line for line in log), log[-10:]
    assert token not in "\n".join(log)
    assert "PG_CONN_STR" not in "\n".join(log)
    assert saved_state(site.database_url) is not None


def test_sigterm_to_the_pod_interrupts_the_engine_which_saves_state(site: Site) -> None:
    token = mint(site, 2, {"delay": 60, "marker": "slow"})
    pod = start_pod(site, 2, token)
    wait_for_line(site, 2, "terraform_data.slow: Creating...")
    os.kill(pid1(pod), signal.SIGTERM)
    out, _ = pod.communicate(timeout=60)
    progress = tickets.progress(site.db, 2)
    assert progress is not None and progress.result is not None, out.decode()
    assert progress.result["status"] == "cancelled"
    log = "\n".join(lines(site, 2))
    assert "sending SIGINT" in log
    assert "Interrupt received" in log or "execution halted" in log, log[-2000:]
    assert saved_state(site.database_url) is not None  # the engine wrote state before leaving
    assert advisory_locks(site.database_url) == []  # and released its lock


NO_HANDLER = (
    "import asyncio, os, sys\n"
    "from app.executor import pod\n"
    "run_id = int(sys.argv[1])\n"
    "token = os.environ.pop('RUNBOT_RUN_TOKEN')\n"
    "cb = os.environ['RUNBOT_RUN_CALLBACK']\n"
    "sys.exit(asyncio.run(pod.run(run_id, cb, token, install_handlers=False)))\n"
)


def test_mutant_without_the_sigterm_handler_ignores_sigterm_and_loses_the_run(
    site: Site,
) -> None:
    """Why the handler matters: as PID 1 an unhandled SIGTERM is ignored, the kubelet's later
    SIGKILL kills the engine mid-apply, and no result or saved state comes back."""
    token = mint(site, 3, {"delay": 60, "marker": "slow"})
    pod = start_pod(site, 3, token, NO_HANDLER)
    wait_for_line(site, 3, "terraform_data.slow: Creating...")
    os.kill(pid1(pod), signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        pod.wait(timeout=5)  # still running: SIGTERM did nothing
    os.kill(pid1(pod), signal.SIGKILL)  # the kubelet, at the end of the grace period
    pod.wait(timeout=30)
    progress = tickets.progress(site.db, 3)
    assert progress is not None and progress.result is None
    assert not any("Interrupt received" in line for line in lines(site, 3))
    assert saved_state(site.database_url) is None
