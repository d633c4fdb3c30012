"""Issue 18, nothing stuck: `runbot serve` killed -9 while a claimed warm instance takes its
PR's values. After the restart the claim completes on the same instance (same id, the PR's
commit, `claimed`), the pool refills, nothing is doubled or left `claiming`, and the claimed
instance goes with its PR, never back to the pool. On SQLite and PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import select

from app.db.models import Environment
from app.lifecycle.states import Status
from app.runtime import Runtime, build_runtime
from tests.apphost import INSTALLATION, REPO, WEBHOOK_SECRET, free_port, seed_repo
from tests.conftest import make_settings
from tests.fakegithub.server import FakeGitHub
from tests.fakegithub.webhooks import deliver
from tests.helpers import converge_sync, settled, silo_ready, wait_for
from tests.test_pool import CONFIG, POOLED
from tests.test_processes import kill_during_the_apply_of, process_env, runbot, wait_healthy

pytest_plugins = ["tests.fakegithub.pytest_plugin"]
pytestmark = pytest.mark.engine

CLAIM_SHA = "5eed" + "0" * 36  # the fixture's PR part sleeps a second for it


def send(url: str, fake: FakeGitHub, action: str, number: int) -> None:
    payload = fake.pull_request_event(action, REPO, number)
    payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
    assert deliver(url, "pull_request", payload, WEBHOOK_SECRET).status_code == 202


def warm_ready(rt: Runtime) -> list[str]:
    return sorted(
        env.id
        for env in rt.lifecycle.pool_members("pool", REPO)
        if env.status == Status.READY and settled(env)
    )


def alive(rt: Runtime) -> list[Environment]:
    with rt.db.session() as session:
        query = select(Environment).where(Environment.status != Status.DESTROYED)
        return list(session.exec(query))


def test_serve_killed_while_a_claim_applies_then_restarted(
    tmp_path: Path, fake_github: FakeGitHub, database_url: str
) -> None:
    fake = fake_github
    seed_repo(fake, CONFIG)
    rt = build_runtime(make_settings(tmp_path, database_url, templates_dir=POOLED))
    rt.lifecycle.create_silo("pool", "pooled", {"pool_size": 2})
    converge_sync(rt, silo_ready(rt, "pool"))
    env_vars = process_env(tmp_path, fake, database_url)
    env_vars["RUNBOT_TEMPLATES_DIR"] = str(POOLED)
    env_vars["RUNBOT_SCHEDULER_INTERVAL"] = "1"
    port, log = free_port(), tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}/webhooks/github"

    with runbot(["serve", "--port", str(port)], env_vars, log) as serve:
        wait_healthy(port, serve, log)
        fake.add_pull(REPO, 1, "a" * 40, "feature-1")
        send(url, fake, "opened", 1)  # the first PR is cold, and tells the pool what to make
        wait_for(lambda: len(warm_ready(rt)) == 2, timeout=90)
        before = warm_ready(rt)
        fake.add_pull(REPO, 2, CLAIM_SHA, "feature-2")
        send(url, fake, "opened", 2)
        wait_for(lambda: rt.lifecycle.live_environment_for(REPO, 2) is not None, timeout=30)
        claimed = rt.lifecycle.live_environment_for(REPO, 2)
        assert claimed is not None and claimed.id in before
        kill_during_the_apply_of(serve, f"env-{claimed.id}", tmp_path)
    cut = rt.lifecycle.get_environment(claimed.id)
    assert (cut.pool_state, cut.pr_number) == ("claiming", 2), "the kill landed mid-claim"

    with runbot(["serve", "--port", str(port)], env_vars, log) as serve:
        wait_healthy(port, serve, log)

        def claim_done() -> bool:
            env = rt.lifecycle.get_environment(claimed.id)
            return settled(env) and env.status == Status.READY and env.pool_state == "claimed"

        wait_for(claim_done, timeout=90)
        done = rt.lifecycle.get_environment(claimed.id)
        assert done.deployed_sha == CLAIM_SHA and done.outputs["pr_number"]["value"] == 2
        wait_for(lambda: len(warm_ready(rt)) == 2, timeout=90)
        assert claimed.id not in warm_ready(rt)
        rows = alive(rt)
        assert sorted((e.pr_number, e.pool_state or "") for e in rows) == [
            (0, "warm"),
            (0, "warm"),
            (1, ""),
            (2, "claimed"),
        ], [(e.id, e.pr_number, e.pool_state, e.status) for e in rows]

        fake.update_pull(REPO, 2, state="closed")
        send(url, fake, "closed", 2)
        wait_for(lambda: rt.lifecycle.get_environment(claimed.id).status == Status.DESTROYED, 60)
        assert claimed.id not in [e.id for e in rt.lifecycle.pool_members("pool", REPO)]
        assert len(warm_ready(rt)) == 2
    rt.db.dispose()
