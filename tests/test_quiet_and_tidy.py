"""Issue 20 musts 4 and 5: `comments: quiet`, and a tidy GitHub after a PR closes, over real
processes: webhooks → runbot (uvicorn, real workers) → the embedded engine → the fake GitHub.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app.github.comment import MARKER
from app.lifecycle.states import Status
from tests.apphost import INSTALLATION, REPO
from tests.fakegithub.server import DEFAULT_INSTALLATION_PERMISSIONS, FakeGitHub
from tests.helpers import wait_for
from tests.test_check_runs import concluded
from tests.test_trust import comment, pull_event, serving, the_pull

pytest_plugins = ["tests.fakegithub.pytest_plugin"]
pytestmark = pytest.mark.engine

A = "a" * 40


def ready(server: object) -> bool:
    env = server.runtime.lifecycle.live_environment_for(REPO, 1)  # type: ignore[attr-defined]
    return env is not None and env.status == Status.READY


def last_state(fake: FakeGitHub, deployment_id: int) -> str:
    statuses = fake.deployment_statuses(REPO, deployment_id)
    return str(statuses[-1]["state"]) if statuses else ""


def test_quiet_mode_posts_no_status_comment_but_answers_commands(
    tmp_path: Path, fake_github: FakeGitHub, port_base: int
) -> None:
    """`comments: quiet`: the check run and the deployment carry the status; a command still
    gets its answer."""
    fake = fake_github
    config = "stack: local\nsilo: trust\ncomments: quiet\n"
    with serving(tmp_path, fake, config, port_base) as server:
        fake.add_pull(REPO, 1, A, "feature")
        pull_event(server, fake, "opened")
        wait_for(lambda: concluded(fake, A, "success"), timeout=90)
        wait_for(
            lambda: any(last_state(fake, d["id"]) == "success" for d in fake.deployments(REPO)),
            timeout=30,
        )
        comment(server, fake, "/runbot status", "wendy")
        wait_for(lambda: len(fake.comments(REPO, 1)) >= 2, timeout=30)
        wait_for(lambda: the_pull(server).synced_version == the_pull(server).sync_version, 30)
        bodies = [c["body"] for c in fake.comments(REPO, 1)]
        assert not [b for b in bodies if b.startswith(MARKER)], bodies
        assert the_pull(server).comment_id is None


def test_a_closed_pr_has_its_inactive_deployments_deleted(
    tmp_path: Path, fake_github: FakeGitHub, port_base: int
) -> None:
    """After close and destroy, the PR's deployments are gone; the GitHub environment is
    deleted too when the operator opted in (`administration: write`)."""
    fake = fake_github
    permissions = {**DEFAULT_INSTALLATION_PERMISSIONS, "administration": "write"}
    with serving(
        tmp_path, fake, "stack: local\nsilo: trust\n", port_base, github_delete_environments=True
    ) as server:
        fake.add_installation(INSTALLATION, REPO.split("/")[0], [REPO], permissions=permissions)
        fake.add_pull(REPO, 1, A, "feature")
        pull_event(server, fake, "opened")
        wait_for(lambda: ready(server), timeout=90)
        wait_for(lambda: bool(fake.deployments(REPO)), timeout=30)
        fake.update_pull(REPO, 1, state="closed")
        pull_event(server, fake, "closed")
        wait_for(lambda: fake.deployments(REPO) == [], timeout=90)
        wait_for(lambda: (REPO, "pr-1") in fake.deleted_environments, timeout=30)
        # The notifier records the tidy after GitHub's answer arrives, so wait for the row.
        wait_for(lambda: the_pull(server).tidied_env is not None, timeout=30)
        assert the_pull(server).tidied_env.startswith("pr-1-")


def test_deployments_keep_leaves_a_closed_prs_deployments(
    tmp_path: Path, fake_github: FakeGitHub, port_base: int
) -> None:
    fake = fake_github
    config = "stack: local\nsilo: trust\ndeployments: keep\n"
    with serving(tmp_path, fake, config, port_base) as server:
        fake.add_pull(REPO, 1, A, "feature")
        pull_event(server, fake, "opened")
        wait_for(lambda: ready(server), timeout=90)
        fake.update_pull(REPO, 1, state="closed")
        pull_event(server, fake, "closed")
        wait_for(
            lambda: [last_state(fake, d["id"]) for d in fake.deployments(REPO)] == ["inactive"],
            timeout=90,
        )
        wait_for(lambda: the_pull(server).synced_version == the_pull(server).sync_version, 30)
        assert len(fake.deployments(REPO)) == 1 and fake.deleted_environments == []
