"""Two `runbot worker` processes on one PostgreSQL database: every expiry warns once and
destroys once, however the two schedulers' ticks interleave.

The workers are the real CLI in separate processes, ticking every 0.2 s against the same rows,
and post to the fake GitHub running in this process. Each PR's status comment is left out
(the PRs are not `enabled`), so the only GitHub writes are the warnings and the count is exact.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from app.db.models import PullRequest
from app.lifecycle.service import pull_id
from app.lifecycle.states import Desired, Status
from app.runtime import build_runtime
from app.ttl.policy import TTLPolicy
from tests.apphost import INSTALLATION, REPO, WEBHOOK_SECRET, app_settings, seed_repo
from tests.conftest import ROOT, TEMPLATES
from tests.fakegithub.server import FakeGitHub
from tests.helpers import fail_every_silo, wait_for

pytest_plugins = ["tests.fakegithub.pytest_plugin"]
# Replicas race on a 0.2 s tick: run alone, after the parallel pass (`make test`).
pytestmark = [pytest.mark.postgres, pytest.mark.serial]

PULLS = range(1, 9)
# Warnings fall due 2 s after creation and are paced at one write per second per process, so
# the window leaves room for all eight even when one worker posts them all.
POLICY = TTLPolicy(
    idle=timedelta(seconds=12), max=timedelta(seconds=60), warn_before=timedelta(seconds=10)
)


def worker_env(tmp_path: Path, fake: FakeGitHub, database_url: str, name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOT_")}
    env.update(
        PYTHONPATH=str(ROOT),
        RUNBOT_DATABASE_URL=database_url,
        RUNBOT_DATA_DIR=str(tmp_path / name),
        RUNBOT_TEMPLATES_DIR=str(TEMPLATES),
        RUNBOT_ENGINE="embedded",
        RUNBOT_GITHUB_APP_ID=str(fake.app_id),
        RUNBOT_GITHUB_PRIVATE_KEY=fake.private_key_pem,
        RUNBOT_GITHUB_WEBHOOK_SECRET=WEBHOOK_SECRET,
        RUNBOT_GITHUB_API_URL=fake.url,
        RUNBOT_GITHUB_URL=fake.web_url,
        RUNBOT_GITHUB_APP_SLUG=fake.slug,
        RUNBOT_SCHEDULER_INTERVAL="0.2",
        RUNBOT_WORKER_POLL_INTERVAL="0.2",
        RUNBOT_LEASE_SECONDS="6",
    )
    return env


@pytest.fixture
def workers(tmp_path: Path, fake_github: FakeGitHub, postgres_url: str) -> Iterator[list[Path]]:
    """Two `runbot worker` processes; yields their log files (a file, not a pipe: a pipe nobody
    reads fills up and blocks the worker mid-tick)."""
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    procs = []
    for i, log in enumerate(logs):
        with log.open("w") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "app.cli", "worker"],
                    cwd=tmp_path,
                    env=worker_env(tmp_path, fake_github, postgres_url, f"w{i}"),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
    try:
        wait_for(lambda: all("running" in log.read_text() for log in logs), timeout=30)
        yield logs
        for proc, log in zip(procs, logs, strict=True):
            assert proc.poll() is None, f"a worker died:\n{log.read_text()[-3000:]}"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_each_expiry_warns_once_and_destroys_once(
    tmp_path: Path,
    fake_github: FakeGitHub,
    postgres_url: str,
    workers: list[Path],
) -> None:
    fake = fake_github
    seed_repo(fake, "stack: local\n")
    rt = build_runtime(app_settings(tmp_path, fake, postgres_url))
    try:
        # A silo that is not (and will not be) applied: environments wait on it as `queued`,
        # and an expired one is forgotten without an engine run.
        rt.lifecycle.create_silo("replicas", "local", {})
        fail_every_silo(rt)
        envs = []
        for number in PULLS:
            fake.add_pull(REPO, number, f"{number:040x}", f"feature/{number}", author="alice")
            with rt.db.session() as session:
                session.add(
                    PullRequest(
                        id=pull_id(REPO, number),
                        repository=REPO,
                        number=number,
                        installation_id=INSTALLATION,
                        author="alice",
                        head_sha=f"{number:040x}",
                    )
                )
                session.commit()
            envs.append(
                rt.lifecycle.create_environment(
                    "replicas",
                    REPO,
                    number,
                    f"{number:040x}",
                    author="alice",
                    installation_id=INSTALLATION,
                    ttl=POLICY,
                )
            )
        started = time.monotonic()

        def all_destroyed() -> bool:
            return all(
                rt.lifecycle.get_environment(env.id).status == Status.DESTROYED for env in envs
            )

        wait_for(all_destroyed, timeout=45, interval=0.2)
        elapsed = time.monotonic() - started
        time.sleep(1.0)  # a few more ticks on both workers

        bot = f"{fake.slug}[bot]"
        for env in envs:
            row = rt.lifecycle.get_environment(env.id)
            assert (row.desired, row.reason, row.trigger) == (Desired.ABSENT, "expired", "ttl")
            assert row.generation == env.generation + 1, "reaped more than once"
            assert row.warned_for == env.expires_at
            warnings = [
                c
                for c in fake.comments(REPO, env.pr_number)
                if c["user"]["login"] == bot and env.id in c["body"]
            ]
            assert len(warnings) == 1, f"{env.id}: {len(warnings)} warnings\n" + "\n".join(
                log.read_text()[-3000:] for log in workers
            )
            assert "@alice" in warnings[0]["body"]
        # Generous: the machine may be busy; test_commands_e2e measures the lag itself.
        assert elapsed < 12 + 15, f"reaping took {elapsed:.1f}s for a 12s TTL"
    finally:
        rt.db.dispose()
