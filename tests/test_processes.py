"""Real `runbot serve` / `runbot worker` processes: killed mid-apply, and sharing PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from app.db.models import Environment, Run
from app.github.comment import MARKER
from app.lifecycle.states import Status
from app.runtime import Runtime, build_runtime
from tests.apphost import INSTALLATION, REPO, WEBHOOK_SECRET, free_port, seed_repo
from tests.conftest import TEMPLATES, make_settings
from tests.fakegithub.server import FakeGitHub
from tests.fakegithub.webhooks import deliver
from tests.helpers import converge_sync, fetch, processes_matching, silo_ready, wait_for

pytest_plugins = ["tests.fakegithub.pytest_plugin"]
pytestmark = pytest.mark.engine


def process_env(tmp_path: Path, fake: FakeGitHub, database_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOT_")}
    env.update(
        RUNBOT_GITHUB_APP_ID=str(fake.app_id),
        RUNBOT_GITHUB_PRIVATE_KEY=fake.private_key_pem,
        RUNBOT_GITHUB_WEBHOOK_SECRET=WEBHOOK_SECRET,
        RUNBOT_GITHUB_API_URL=fake.url,
        RUNBOT_DATA_DIR=str(tmp_path / "data"),
        RUNBOT_TEMPLATES_DIR=str(TEMPLATES),
        RUNBOT_ENGINE="embedded",
        RUNBOT_LEASE_SECONDS="3",
        RUNBOT_WORKER_POLL_INTERVAL="0.2",
        RUNBOT_MAX_CONCURRENT_RUNS="4",
        RUNBOT_WORKER_CONCURRENCY="2",
        RUNBOT_ENGINE_CANCEL_GRACE="5",
    )
    if database_url:
        env["RUNBOT_DATABASE_URL"] = database_url
    return env


@contextmanager
def runbot(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-X", "faulthandler", "-m", "app.cli", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGABRT)
                proc.wait()
                print("HUNG", args, log.read_text()[-6000:])


def wait_healthy(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("runbot exited:\n" + log.read_text()[-3000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("runbot never became healthy:\n" + log.read_text()[-3000:])


def pr_event(fake: FakeGitHub, action: str, number: int) -> dict:
    """A `pull_request` payload for the fake's PR, from the App's installation."""
    payload = fake.pull_request_event(action, REPO, number)
    payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
    return payload


def opened(fake: FakeGitHub, number: int) -> dict:
    return pr_event(fake, "opened", number)


def one_pr_on_a_ready_silo(tmp_path: Path, fake: FakeGitHub, port_base: int) -> Runtime:
    """PR #1 at commit a…a, a repository configured for the silo `procs`, and that silo ready."""
    seed_repo(fake, "stack: local\nsilo: procs\n")
    fake.add_pull(REPO, 1, "a" * 40, "feature")
    rt = build_runtime(make_settings(tmp_path))
    rt.lifecycle.create_silo("procs", "local", {"port_base": port_base})
    converge_sync(rt, silo_ready(rt, "procs"))
    return rt


def kill_during_the_apply_of(serve: subprocess.Popen[bytes], target: str, root: Path) -> None:
    """Kill -9 the process group at the moment the engine is applying `target`, in a working
    copy under `root` (this test's own: other runs on the machine apply targets named alike)."""
    wait_for(
        lambda: any(
            "apply" in line and f"{root}" in line and f"/work/{target}" in line
            for line in processes_matching("app.engine.embedded")
        ),
        timeout=60,
        interval=0.01,
    )
    os.killpg(serve.pid, signal.SIGKILL)
    serve.wait()


def test_serve_killed_while_an_update_runs_then_restarted(
    tmp_path: Path, fake_github: FakeGitHub, port_base: int
) -> None:
    """A crash mid-update leaves the row `updating`; the apply that takes over after the restart
    must carry on from there (it once tried `updating -> creating` and failed the environment)."""
    fake = fake_github
    rt = one_pr_on_a_ready_silo(tmp_path, fake, port_base)
    port = free_port()
    url = f"http://127.0.0.1:{port}/webhooks/github"
    env_vars, log = process_env(tmp_path, fake, None), tmp_path / "serve.log"
    with runbot(["serve", "--port", str(port)], env_vars, log) as serve:
        wait_healthy(port, serve, log)
        assert deliver(url, "pull_request", opened(fake, 1), WEBHOOK_SECRET).status_code == 202
        wait_for(lambda: [e.status for e in rt.lifecycle.list_environments()] == ["ready"], 60)
        env_id = rt.lifecycle.list_environments()[0].id
        fake.update_pull(REPO, 1, head_sha="b" * 40)
        push = pr_event(fake, "synchronize", 1)
        assert deliver(url, "pull_request", push, WEBHOOK_SECRET).status_code == 202
        kill_during_the_apply_of(serve, f"env-{env_id}", tmp_path)
    assert rt.lifecycle.get_environment(env_id).status == Status.UPDATING

    with runbot(["serve", "--port", str(port)], env_vars, log) as serve:
        wait_healthy(port, serve, log)

        def converged() -> bool:
            env = rt.lifecycle.get_environment(env_id)
            return env.status in (Status.READY, Status.FAILED) and env.lease_owner is None

        wait_for(converged, timeout=90)
        env = rt.lifecycle.get_environment(env_id)
        assert env.status == Status.READY, env.reason
        assert env.deployed_sha == "b" * 40 and "b" * 40 in fetch(env.url or "").text
        assert len(processes_matching(f"--instance-id {env.id}")) == 1
        rt.lifecycle.destroy_environment(env.id)
        wait_for(lambda: rt.lifecycle.get_environment(env.id).status == Status.DESTROYED, 60)
    assert processes_matching(env_id) == []


def test_serve_killed_while_an_apply_runs_then_restarted(
    tmp_path: Path, fake_github: FakeGitHub, port_base: int
) -> None:
    fake = fake_github
    rt = one_pr_on_a_ready_silo(tmp_path, fake, port_base)

    env_vars, log, port = process_env(tmp_path, fake, None), tmp_path / "serve.log", free_port()
    with runbot(["serve", "--port", str(port)], env_vars, log) as serve:
        wait_healthy(port, serve, log)
        assert (
            deliver(
                f"http://127.0.0.1:{port}/webhooks/github",
                "pull_request",
                opened(fake, 1),
                WEBHOOK_SECRET,
            ).status_code
            == 202
        )
        kill_during_the_apply_of(serve, "env-pr-1-", tmp_path)
    env_row = rt.lifecycle.list_environments()[0]
    # The kill lands mid-apply; whether the row already said "creating" is incidental.
    assert env_row.status in (Status.PENDING, Status.CREATING, Status.READY)

    with runbot(["serve", "--port", str(port)], env_vars, log) as serve:
        wait_healthy(port, serve, log)

        def converged() -> bool:
            env = rt.lifecycle.get_environment(env_row.id)
            return env.status == Status.READY and env.observed_generation == env.generation

        wait_for(converged, timeout=90)
        env = rt.lifecycle.get_environment(env_row.id)
        assert "a" * 40 in fetch(env.url or "").text
        assert len(processes_matching(f"--instance-id {env.id}")) == 1  # one copy
        wait_for(
            lambda: any(
                env.url in c["body"] for c in fake.comments(REPO, 1) if c["body"].startswith(MARKER)
            ),
            timeout=60,
        )
        assert len([c for c in fake.comments(REPO, 1) if c["body"].startswith(MARKER)]) == 1
        rt.lifecycle.destroy_environment(env.id)
        wait_for(
            lambda: rt.lifecycle.get_environment(env.id).status == Status.DESTROYED, timeout=60
        )
    assert processes_matching(env_row.id) == []


@pytest.mark.postgres
def test_two_processes_on_postgres_apply_each_change_once(
    tmp_path: Path, fake_github: FakeGitHub, postgres_url: str, port_base: int
) -> None:
    fake = fake_github
    seed_repo(fake, "stack: local\nsilo: shared\n")
    rt = build_runtime(make_settings(tmp_path, postgres_url))
    rt.lifecycle.create_silo("shared", "local", {"port_base": port_base})
    converge_sync(rt, silo_ready(rt, "shared"))
    numbers = list(range(1, 9))
    for number in numbers:
        fake.add_pull(REPO, number, f"{number:040x}", f"branch-{number}")

    env_vars, port = process_env(tmp_path, fake, postgres_url), free_port()
    with (
        runbot(["serve", "--port", str(port)], env_vars, tmp_path / "serve.log") as serve,
        runbot(["worker"], env_vars, tmp_path / "worker.log"),
    ):
        wait_healthy(port, serve, tmp_path / "serve.log")
        for number in numbers:
            deliver(
                f"http://127.0.0.1:{port}/webhooks/github",
                "pull_request",
                opened(fake, number),
                WEBHOOK_SECRET,
            )

        def all_ready() -> bool:
            envs = rt.lifecycle.list_environments()
            return len(envs) == len(numbers) and all(e.status == Status.READY for e in envs)

        wait_for(all_ready, timeout=180)
        with rt.db.session() as session:
            runs = list(session.exec(select(Run).where(Run.target_kind == "environment")))
            envs = list(session.exec(select(Environment)))
        per_change = Counter((r.target_id, r.generation, r.operation) for r in runs)
        assert set(per_change.values()) == {1}, per_change  # nothing applied twice
        assert len({e.slot for e in envs}) == len(numbers)  # distinct slots
        workers = Counter(r.worker.split(":")[1] for r in runs)
        assert len(workers) == 2, (
            f"only one process did the work: {workers}\n"
            + (tmp_path / "worker.log").read_text()[-3000:]
        )
        for env in envs:
            assert env.id in fetch(env.url or "").text
        for env in envs:
            rt.lifecycle.destroy_environment(env.id)
        wait_for(lambda: not rt.lifecycle.list_environments(), timeout=180)
    for env in envs:
        assert processes_matching(env.id) == []
