"""Issue 18: the warm pool, over real `runbot serve` workers, real engine runs and the fake
GitHub: a PR takes a ready instance and only its change is applied, the pool refills in the
background, a claim that fails to update falls back to a fresh create, and a claimed instance
goes with its PR, never back to the pool.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from app.db.models import Environment
from app.github.comment import MARKER
from app.lifecycle.states import Status
from tests.apphost import INSTALLATION, REPO, AppServer, app_settings, seed_repo
from tests.fakegithub.server import FakeGitHub
from tests.fakegithub.webhooks import deliver
from tests.helpers import wait_for
from tests.test_trust import WEBHOOK_SECRET
from tests.test_web_metrics import value

pytest_plugins = ["tests.fakegithub.pytest_plugin"]
pytestmark = pytest.mark.engine

POOLED = Path(__file__).parent / "fixtures" / "stacks-pool"
CONFIG = "stack: pooled\nsilo: pool\n"
CLAIMED = (
    "This environment was taken from the warm pool of silo `pool`; "
    "only this PR's change was applied."
)
CLAIMED_ROW = f"| **Warm pool** | {CLAIMED} |"
FALLBACK_ROW = (
    "| **Warm pool** | The warm instance failed to take this PR's change; "
    "runbot made a fresh one. |"
)


@contextmanager
def pooled(
    tmp_path: Path,
    fake: FakeGitHub,
    size: int = 2,
    database_url: str | None = None,
    **overrides: Any,
) -> Iterator[AppServer]:
    """runbot serving the `pooled` stack, its silo `pool` asking for ``size`` warm ones
    (``overrides``: more settings, e.g. an API token)."""
    seed_repo(fake, CONFIG)
    settings = app_settings(
        tmp_path, fake, database_url, templates_dir=POOLED, scheduler_interval=1.0, **overrides
    )
    with AppServer(settings) as server:
        lifecycle = server.runtime.lifecycle
        lifecycle.create_silo("pool", "pooled", {"pool_size": size})
        wait_for(lambda: lifecycle.get_silo("pool").status == Status.READY, timeout=60)
        try:
            yield server
        finally:
            lifecycle.destroy_silo("pool", force=True)
            wait_for(lambda: lifecycle.get_silo("pool").status == Status.DESTROYED, 120)


def open_pull(server: AppServer, fake: FakeGitHub, number: int, sha: str) -> None:
    fake.add_pull(REPO, number, sha, f"feature-{number}")
    send(server, fake, "opened", number)


def send(server: AppServer, fake: FakeGitHub, action: str, number: int) -> None:
    payload = fake.pull_request_event(action, REPO, number)
    payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
    assert deliver(server.webhook_url, "pull_request", payload, WEBHOOK_SECRET).status_code == 202


def warm_ready(server: AppServer) -> list[Environment]:
    members = server.runtime.lifecycle.pool_members("pool", REPO)
    return [
        env
        for env in members
        if env.status == Status.READY and env.generation == env.observed_generation
    ]


def status_comment(fake: FakeGitHub, number: int) -> str:
    bodies = [c["body"] for c in fake.comments(REPO, number) if c["body"].startswith(MARKER)]
    return bodies[-1] if bodies else ""


def check_summary(fake: FakeGitHub, sha: str) -> str:
    runs = [run for run in fake.check_runs(REPO, sha) if run["name"] == "runbot"]
    return runs[-1]["output"]["summary"] if runs else ""


def fallback_claims(server: AppServer) -> float:
    """`runbot_pool_claims_total{outcome="fallback"}` on the server's /metrics."""
    text = httpx.get(f"{server.url}/metrics", trust_env=False, timeout=20).text
    return value(text, "runbot_pool_claims_total", outcome="fallback")


def live(server: AppServer, number: int) -> Environment | None:
    return server.runtime.lifecycle.live_environment_for(REPO, number)


def ready_with(server: AppServer, number: int, sha: str) -> bool:
    env = live(server, number)
    return (
        env is not None
        and env.status == Status.READY
        and env.generation == env.observed_generation
        and env.outputs.get("head_sha", {}).get("value") == sha
    )


def test_a_pr_takes_a_warm_instance_and_the_pool_refills(
    tmp_path: Path, fake_github: FakeGitHub, database_url: str
) -> None:
    fake = fake_github
    with pooled(tmp_path, fake, database_url=database_url) as server:
        # The repository's first PR is created cold; it tells runbot what the pool is made of.
        open_pull(server, fake, 1, "1" * 40)
        wait_for(lambda: ready_with(server, 1, "1" * 40), timeout=90)
        first = live(server, 1)
        assert first is not None and first.pool_state is None and first.id.startswith("pr-1-")
        wait_for(lambda: len(warm_ready(server)) == 2, timeout=90)
        pool = warm_ready(server)
        default_head = fake.branch_sha(REPO, "main")
        for env in pool:
            assert env.pr_number == 0 and env.id.startswith("warm-")
            assert env.outputs["pr_number"]["value"] == 0  # no PR number: neutral values
            assert env.head_sha == default_head
        warm_ids = {env.id for env in pool}

        open_pull(server, fake, 2, "2" * 40)
        wait_for(lambda: ready_with(server, 2, "2" * 40), timeout=90)
        taken = live(server, 2)
        assert taken is not None and taken.id in warm_ids  # the same id, now the PR's
        assert taken.pool_state == "claimed" and taken.outputs["pr_number"]["value"] == 2
        assert taken.claimed_at is not None
        # The PR is told where its environment came from, in its comment and its check run.
        wait_for(lambda: CLAIMED_ROW in status_comment(fake, 2), timeout=30)
        assert "Preview environment ready" in status_comment(fake, 2)
        wait_for(lambda: CLAIMED in check_summary(fake, "2" * 40), timeout=30)
        assert "Warm pool" not in status_comment(fake, 1)  # created cold, for its PR

        # Refilled in the background, with a new instance: the claimed one never goes back.
        wait_for(lambda: len(warm_ready(server)) == 2, timeout=90)
        assert taken.id not in {env.id for env in warm_ready(server)}

        fake.update_pull(REPO, 2, state="closed")
        send(server, fake, "closed", 2)
        lifecycle = server.runtime.lifecycle
        wait_for(lambda: lifecycle.get_environment(taken.id).status == Status.DESTROYED, 90)
        assert taken.id not in {env.id for env in lifecycle.pool_members("pool", REPO)}


def test_a_claim_that_fails_to_update_falls_back_to_a_fresh_create(
    tmp_path: Path, fake_github: FakeGitHub, database_url: str
) -> None:
    fake = fake_github
    with pooled(tmp_path, fake, size=1, database_url=database_url) as server:
        fallbacks = fallback_claims(server)
        open_pull(server, fake, 1, "1" * 40)
        wait_for(lambda: ready_with(server, 1, "1" * 40), timeout=90)
        wait_for(lambda: len(warm_ready(server)) == 1, timeout=90)
        (warm,) = warm_ready(server)
        bad = "bad" + "0" * 37  # the fixture stack cannot update a warm instance to it

        open_pull(server, fake, 2, bad)
        wait_for(lambda: ready_with(server, 2, bad), timeout=120)
        fresh = live(server, 2)
        assert fresh is not None and fresh.id != warm.id and fresh.pool_state == "fallback"
        gone = server.runtime.lifecycle.get_environment(warm.id)
        assert gone.desired == "absent" and gone.trigger == "pool-fallback"
        assert (gone.reason or "").startswith("the warm instance could not take this PR's")
        assert "apply failed" in (gone.reason or "")  # the run's log holds the rest
        wait_for(lambda: FALLBACK_ROW in status_comment(fake, 2), timeout=30)
        comment = status_comment(fake, 2)
        assert f"`{fresh.id}`" in comment and CLAIMED not in comment

        assert fallback_claims(server) == fallbacks + 1


def test_the_pool_is_made_again_when_the_default_branch_moves(
    tmp_path: Path, fake_github: FakeGitHub
) -> None:
    fake = fake_github
    with pooled(tmp_path, fake, size=1) as server:
        open_pull(server, fake, 1, "1" * 40)
        wait_for(lambda: len(warm_ready(server)) == 1, timeout=90)
        (before,) = warm_ready(server)
        # A new default-branch head: seen with the next PR event.
        fake.set_branch(REPO, "main", "4" * 40)
        fake.update_pull(REPO, 1, head_sha="3" * 40)
        send(server, fake, "synchronize", 1)

        def remade() -> bool:
            now = warm_ready(server)
            return len(now) == 1 and now[0].id != before.id

        wait_for(remade, timeout=120)
        lifecycle = server.runtime.lifecycle
        retired = lifecycle.get_environment(before.id)
        assert retired.desired == "absent" and "pool refresh" in (retired.reason or "")
        with server.runtime.db.session() as session:
            rows = session.exec(select(Environment).where(Environment.pool_state == "warm"))
            assert all(env.pr_number == 0 for env in rows)
