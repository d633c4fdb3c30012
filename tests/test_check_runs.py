"""Issue 20 must 3: the `runbot` check run on a PR's head commit, over real processes:
webhooks → runbot (uvicorn, real workers) → the embedded engine → the fake GitHub's Checks API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.lifecycle.states import Status
from tests.apphost import INSTALLATION, REPO, AppServer, app_settings, seed_repo
from tests.fakegithub.server import DEFAULT_INSTALLATION_PERMISSIONS, FakeGitHub
from tests.fakegithub.webhooks import deliver
from tests.helpers import wait_for
from tests.test_trust import WEBHOOK_SECRET, pull_event, serving, the_pull

pytest_plugins = ["tests.fakegithub.pytest_plugin"]
pytestmark = pytest.mark.engine

A, B = "a" * 40, "b" * 40


def runs(fake: FakeGitHub, sha: str) -> list[dict[str, Any]]:
    return [run for run in fake.check_runs(REPO, sha) if run["name"] == "runbot"]


def last_run(fake: FakeGitHub, sha: str) -> dict[str, Any] | None:
    found = runs(fake, sha)
    return found[-1] if found else None


def concluded(fake: FakeGitHub, sha: str, conclusion: str) -> bool:
    run = last_run(fake, sha)
    return run is not None and run["status"] == "completed" and run["conclusion"] == conclusion


def test_check_run_mirrors_the_environment_and_a_superseded_commit_ends_neutral(
    tmp_path: Path, fake_github: FakeGitHub, port_base: int
) -> None:
    """Queued or in progress while creating, success with the URL in its summary; a push
    completes the old commit's run as neutral; closing leaves nothing pending."""
    fake = fake_github
    with serving(tmp_path, fake, "stack: local\nsilo: trust\n", port_base) as server:
        fake.add_pull(REPO, 1, A, "feature")
        pull_event(server, fake, "opened")
        wait_for(lambda: concluded(fake, A, "success"), timeout=90)
        env = server.runtime.lifecycle.live_environment_for(REPO, 1)
        assert env is not None and env.url
        run = last_run(fake, A)
        assert run is not None and env.url in run["output"]["summary"]
        created = [
            r.body
            for r in fake.requests
            if r.method == "POST" and r.path.endswith("/check-runs") and r.body["head_sha"] == A
        ]
        assert created[0]["status"] in ("queued", "in_progress")

        fake.update_pull(REPO, 1, head_sha=B)
        pull_event(server, fake, "synchronize")
        wait_for(lambda: concluded(fake, B, "success"), timeout=90)
        assert all(r["status"] == "completed" for r in runs(fake, A))
        assert runs(fake, A)[0]["conclusion"] in ("success", "neutral")

        fake.update_pull(REPO, 1, state="closed")
        pull_event(server, fake, "closed")
        wait_for(lambda: server.runtime.lifecycle.live_environment_for(REPO, 1) is None, 90)
        wait_for(lambda: the_pull(server).synced_version == the_pull(server).sync_version, 30)
        assert all(r["status"] == "completed" for r in fake.check_runs(REPO))


def test_a_push_while_creating_completes_the_superseded_check_run_as_neutral(
    tmp_path: Path, fake_github: FakeGitHub, port_base: int
) -> None:
    """The commit a push replaced keeps no pending check run: it ends `neutral`."""
    fake = fake_github
    config = "stack: local\nsilo: trust\nwait_for_ci: true\n"
    with serving(tmp_path, fake, config, port_base) as server:
        fake.add_pull(REPO, 1, A, "feature")
        fake.set_check_suites(REPO, A, [("in_progress", None)])
        pull_event(server, fake, "opened")
        wait_for(lambda: (last_run(fake, A) or {}).get("status") == "queued", timeout=30)
        fake.update_pull(REPO, 1, head_sha=B)
        fake.set_check_suites(REPO, B, [("in_progress", None)])
        pull_event(server, fake, "synchronize")
        wait_for(lambda: concluded(fake, A, "neutral"), timeout=30)
        run = last_run(fake, A)
        assert run is not None and run["output"]["title"] == "Superseded"
        wait_for(lambda: (last_run(fake, B) or {}).get("status") == "queued", timeout=30)
        fake.update_pull(REPO, 1, state="closed")
        pull_event(server, fake, "closed")
        wait_for(lambda: concluded(fake, B, "neutral"), timeout=30)
        assert all(r["status"] == "completed" for r in fake.check_runs(REPO))


def test_wait_for_ci_does_not_wait_for_runbots_own_check_suite(
    tmp_path: Path, fake_github: FakeGitHub, port_base: int
) -> None:
    """runbot's queued check run puts a queued suite of its own App on the commit; CI passing
    must still deploy (waiting for its own suite would wait forever)."""
    fake = fake_github
    config = "stack: local\nsilo: trust\nwait_for_ci: true\n"
    with serving(tmp_path, fake, config, port_base) as server:
        fake.add_pull(REPO, 1, A, "feature")
        fake.set_check_suites(REPO, A, [("in_progress", None)])
        pull_event(server, fake, "opened")
        wait_for(lambda: (last_run(fake, A) or {}).get("status") == "queued", timeout=30)
        fake.set_check_suites(REPO, A, [("completed", "success")])
        suite = {
            "action": "completed",
            "check_suite": {"head_sha": A, "status": "completed", "conclusion": "success"},
            "repository": {"full_name": REPO},
            "installation": {"id": INSTALLATION},
        }
        assert deliver(server.webhook_url, "check_suite", suite, WEBHOOK_SECRET).status_code < 300
        lifecycle = server.runtime.lifecycle
        wait_for(
            lambda: (
                (env := lifecycle.live_environment_for(REPO, 1)) is not None
                and env.status == Status.READY
            ),
            timeout=90,
        )
        wait_for(lambda: concluded(fake, A, "success"), timeout=30)


def test_an_installation_without_checks_permission_still_gets_its_deployment(
    tmp_path: Path, fake_github: FakeGitHub, port_base: int
) -> None:
    """An installation that has not accepted `checks: write` answers 403 to check runs: the
    comment and the deployment still reach their outcome, not held behind the refused write."""
    fake = fake_github
    seed_repo(fake, "stack: local\nsilo: trust\n")
    permissions = {k: v for k, v in DEFAULT_INSTALLATION_PERMISSIONS.items() if k != "checks"}
    fake.add_installation(INSTALLATION, REPO.split("/")[0], [REPO], permissions=permissions)
    with AppServer(app_settings(tmp_path, fake)) as server:
        lifecycle = server.runtime.lifecycle
        lifecycle.create_silo("trust", "local", {"port_base": port_base})
        fake.add_pull(REPO, 1, A, "feature")
        pull_event(server, fake, "opened")

        def deployed() -> bool:
            deployments = fake.deployments(REPO)
            return bool(deployments) and any(
                s["state"] == "success"
                for s in fake.deployment_statuses(REPO, deployments[-1]["id"])
            )

        wait_for(deployed, timeout=90)
        assert fake.check_runs(REPO) == []
        refused = [r for r in fake.requests if r.path.endswith("/check-runs")]
        assert 1 <= len(refused) <= 2, f"{len(refused)} refused check-run writes: a retry loop"
        env = lifecycle.live_environment_for(REPO, 1)
        assert env is not None and env.status == Status.READY
        lifecycle.destroy_environment(env.id)
        wait_for(lambda: not lifecycle.list_environments(), timeout=90)


def test_a_create_whose_answer_was_lost_is_adopted_not_repeated(
    tmp_path: Path, fake_github: FakeGitHub, port_base: int
) -> None:
    """GitHub made the deployment and the check run, but runbot never heard back (its answer
    lost, as when the process is killed just after the request): the next attempt finds and
    adopts each, so the PR has one of each and neither stays pending."""
    fake = fake_github
    fake.lose_next_response(1, match=r"^POST /repos/[^/]+/[^/]+/deployments$")
    fake.lose_next_response(1, match=r"^POST /repos/[^/]+/[^/]+/check-runs$")
    with serving(tmp_path, fake, "stack: local\nsilo: trust\n", port_base) as server:
        fake.add_pull(REPO, 1, A, "feature")
        pull_event(server, fake, "opened")
        wait_for(lambda: concluded(fake, A, "success"), timeout=90)
        wait_for(lambda: the_pull(server).synced_version == the_pull(server).sync_version, 30)
        assert len(runs(fake, A)) == 1, runs(fake, A)
        deployments = fake.deployments(REPO)
        assert len(deployments) == 1, deployments
        states = [s["state"] for s in fake.deployment_statuses(REPO, deployments[0]["id"])]
        assert states and states[-1] == "success", states
        pull = the_pull(server)
        assert pull.deployment_creating is None and pull.check_run_creating is None
        lost = [r for r in fake.requests if r.method == "POST" and r.path.endswith("/check-runs")]
        assert len(lost) == 1  # adopted by a PATCH, never created twice
