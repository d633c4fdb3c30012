"""Trust boundaries (issue 15), each finding tried the way a user would, over real HTTP:
webhooks → runbot (uvicorn, real workers and scheduler) → the embedded engine → fake GitHub.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from app.db.models import PullRequest, utcnow
from app.github.comment import MARKER
from app.lifecycle.service import pull_id
from app.lifecycle.states import Status
from tests.apphost import INSTALLATION, REPO, WEBHOOK_SECRET, AppServer, app_settings, seed_repo
from tests.fakegithub.server import FakeGitHub
from tests.fakegithub.webhooks import deliver
from tests.helpers import fetch, wait_for

pytest_plugins = ["tests.fakegithub.pytest_plugin"]
pytestmark = pytest.mark.engine

A, B, C = "a" * 40, "b" * 40, "c" * 40


@contextmanager
def serving(
    tmp_path: Path,
    fake: FakeGitHub,
    config: str,
    port_base: int,
    database_url: str | None = None,
    **settings: Any,
) -> Iterator[AppServer]:
    """runbot on `config`, its silo `trust` ready; every environment destroyed afterwards."""
    seed_repo(fake, config)
    fake.set_permission(REPO, "wendy", "write")
    with AppServer(app_settings(tmp_path, fake, database_url, **settings)) as server:
        lifecycle = server.runtime.lifecycle
        lifecycle.create_silo("trust", "local", {"port_base": port_base})
        wait_for(lambda: lifecycle.get_silo("trust").status == Status.READY, timeout=60)
        try:
            yield server
        finally:
            for env in lifecycle.list_environments():
                lifecycle.destroy_environment(env.id)
            wait_for(lambda: not lifecycle.list_environments(), timeout=90)


def pull_event(server: AppServer, fake: FakeGitHub, action: str, number: int = 1) -> None:
    payload = fake.pull_request_event(action, REPO, number)
    payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
    assert deliver(server.webhook_url, "pull_request", payload, WEBHOOK_SECRET).status_code == 202


def comment(server: AppServer, fake: FakeGitHub, body: str, author: str, number: int = 1) -> None:
    payload = fake.issue_comment_event(REPO, number, body, author=author)
    payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
    assert deliver(server.webhook_url, "issue_comment", payload, WEBHOOK_SECRET).status_code == 202


def status_body(fake: FakeGitHub, number: int = 1) -> str:
    bodies = [c["body"] for c in fake.comments(REPO, number) if c["body"].startswith(MARKER)]
    return bodies[-1] if bodies else ""


def the_pull(server: AppServer, number: int = 1) -> PullRequest:
    with server.runtime.db.session() as session:
        pull = session.get(PullRequest, pull_id(REPO, number))
    assert pull is not None
    return pull


def served_commit(server: AppServer) -> str | None:
    """The commit the PR's live environment serves, read from its page."""
    env = server.runtime.lifecycle.live_environment_for(REPO, 1)
    if env is None or env.status != Status.READY or env.url is None:
        return None
    page = fetch(env.url).text
    return next((sha for sha in (A, B, C) if sha in page), None)


def test_finding_5_a_fork_approval_is_bound_to_the_commit_it_approved(
    tmp_path: Path, fake_github: FakeGitHub, port_base: int
) -> None:
    """`/runbot deploy` approves the commit the status comment showed; a later push keeps the
    approved commit running and waits for a new approval; an expiry withdraws the approval."""
    fake = fake_github
    config = "stack: local\nsilo: trust\nforks: approve\n"
    with serving(tmp_path, fake, config, port_base) as server:
        fake.add_pull(REPO, 1, A, "fork-branch", author="forky", fork=True)
        pull_event(server, fake, "opened")
        wait_for(lambda: "/runbot deploy" in status_body(fake), timeout=30)
        comment(server, fake, "/runbot deploy", "wendy")
        wait_for(lambda: served_commit(server) == A, timeout=90)

        # The fork pushes: the approved commit keeps running, the new one waits.
        fake.update_pull(REPO, 1, head_sha=B)
        pull_event(server, fake, "synchronize")
        wait_for(lambda: f"commit {B[:7]} waits" in status_body(fake), timeout=30)
        assert served_commit(server) == A
        env = server.runtime.lifecycle.live_environment_for(REPO, 1)
        assert env is not None and env.head_sha == A and env.deployed_sha == A

        # A maintainer approves what the comment now shows: B.
        comment(server, fake, "/runbot deploy", "wendy")
        wait_for(lambda: served_commit(server) == B, timeout=90)
        assert the_pull(server).approved_sha == B

        # The environment expires: the approval goes with it, and the next push waits.
        reaped = server.call(
            lambda: server.workers.ticks.reap_expired(utcnow() + timedelta(days=30))
        )
        assert reaped and the_pull(server).approved_sha is None
        wait_for(lambda: server.runtime.lifecycle.live_environment_for(REPO, 1) is None, 90)
        fake.update_pull(REPO, 1, head_sha=C)
        pull_event(server, fake, "synchronize")
        wait_for(lambda: the_pull(server).head_sha == C, timeout=30)
        wait_for(lambda: "wait for a maintainer" in (the_pull(server).hold_reason or ""), 30)
        assert server.runtime.lifecycle.live_environment_for(REPO, 1) is None
