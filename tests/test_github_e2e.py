"""End to end over real HTTP: webhooks → runbot (uvicorn) → embedded engine → fake GitHub."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.github.comment import MARKER
from app.lifecycle.states import Status
from tests.apphost import INSTALLATION, REPO, WEBHOOK_SECRET, AppServer, app_settings, seed_repo
from tests.fakegithub.server import FakeGitHub
from tests.fakegithub.webhooks import deliver
from tests.helpers import fetch, processes_matching, refuses, wait_for

pytest_plugins = ["tests.fakegithub.pytest_plugin"]
pytestmark = pytest.mark.engine

# The silo's ingress and the environment's id (the local stack), or a slot's own port.
URL_IN_COMMENT = re.compile(r"\((http://127\.0\.0\.1:\d+/(?:[a-z0-9-]+/)?)\)")


def status_comments(fake: FakeGitHub, number: int = 1) -> list[dict]:
    return [c for c in fake.comments(REPO, number) if c["body"].startswith(MARKER)]


def comment_url(fake: FakeGitHub, number: int = 1) -> str | None:
    comments = status_comments(fake, number)
    if not comments:
        return None
    match = URL_IN_COMMENT.search(comments[-1]["body"])
    return match.group(1) if match else None


def send(server: AppServer, fake: FakeGitHub, action: str, number: int = 1, **kw: object) -> None:
    payload = fake.pull_request_event(action, REPO, number, **kw)
    payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
    response = deliver(server.webhook_url, "pull_request", payload, WEBHOOK_SECRET)
    assert response.status_code == 202, response.text


def prepare(server: AppServer, port_base: int) -> None:
    """The silo named in .runbot.yml exists already, on a port range free for this test."""
    server.runtime.lifecycle.create_silo("e2e", "local", {"port_base": port_base})


def test_pr_lifecycle_comment_deployment_and_url(
    tmp_path: Path, fake_github: FakeGitHub, database_url: str, port_base: int
) -> None:
    fake = fake_github
    seed_repo(fake, "stack: local\nsilo: e2e\nvars: {greeting: Hello reviewers}\n")
    first, second = "a" * 40, "b" * 40
    fake.add_pull(REPO, 1, first, "feature/login", author="alice")
    with AppServer(app_settings(tmp_path, fake, database_url)) as server:
        prepare(server, port_base)
        send(server, fake, "opened")

        wait_for(lambda: comment_url(fake) is not None, timeout=90)
        url = comment_url(fake)
        assert url is not None
        page = fetch(url).text
        assert first in page and "Hello reviewers" in page
        ready = status_comments(fake)[-1]["body"]
        # How long it took, and where the time went (issue 18, phase timings).
        assert re.search(r"\| \*\*Ready in\*\* \| [0-9.]+ s \(queue [0-9.]+ s · init ", ready), (
            ready
        )

        fake.update_pull(REPO, 1, head_sha=second)
        send(server, fake, "synchronize")
        wait_for(
            lambda: (
                second[:7] in status_comments(fake)[-1]["body"]
                and "ready" in status_comments(fake)[-1]["body"].lower()
            ),
            timeout=90,
        )
        assert second in fetch(url).text

        fake.update_pull(REPO, 1, state="closed")
        send(server, fake, "closed")
        wait_for(lambda: "destroyed" in status_comments(fake)[-1]["body"].lower(), timeout=90)
        assert refuses(url)
        env_rows = server.runtime.lifecycle.list_environments(include_destroyed=True)
        assert [e.status for e in env_rows] == [Status.DESTROYED]
        assert processes_matching(env_rows[0].id) == []

        deployments = fake.deployments(REPO)
        assert deployments, "no deployment was created"
        for deployment in deployments:
            assert deployment["environment"] == "pr-1"
            assert deployment["transient_environment"] is True
            assert deployment["production_environment"] is False

        def last_states() -> list[str]:
            return [
                fake.deployment_statuses(REPO, d["id"])[-1]["state"] for d in fake.deployments(REPO)
            ]

        wait_for(lambda: set(last_states()) == {"inactive"}, timeout=30)
        first_statuses = [s["state"] for s in fake.deployment_statuses(REPO, deployments[0]["id"])]
        assert first_statuses[:2] == ["in_progress", "success"]
        success = next(
            s
            for s in fake.deployment_statuses(REPO, deployments[0]["id"])
            if s["state"] == "success"
        )
        assert success["environment_url"] == url

    assert len(status_comments(fake)) == 1  # one comment, edited in place


def test_repo_without_config_gets_no_comment_and_no_environment(
    tmp_path: Path, fake_github: FakeGitHub
) -> None:
    fake = fake_github
    fake.add_repo(REPO, files={"main": {"README.md": "hi"}})
    fake.add_installation(INSTALLATION, "octo-org", [REPO])
    fake.add_pull(REPO, 1, "c" * 40, "feature")
    with AppServer(app_settings(tmp_path, fake)) as server:
        send(server, fake, "opened")
        wait_for(lambda: _delivery_states(server) == {"processed"}, timeout=30)
        assert server.runtime.lifecycle.list_environments(include_destroyed=True) == []
    assert fake.comments(REPO, 1) == []


def _delivery_states(server: AppServer) -> set[str]:
    from sqlmodel import select

    from app.db.models import Delivery

    with server.runtime.db.session() as session:
        return {d.status for d in session.exec(select(Delivery))}
