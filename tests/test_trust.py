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
from sqlmodel import select

from app.db.models import PullRequest, Run, utcnow
from app.github.comment import MARKER
from app.lifecycle.service import pull_id
from app.lifecycle.states import Status
from tests.apphost import (
    INSTALLATION,
    REPO,
    WEBHOOK_SECRET,
    AppServer,
    app_settings,
    seed_repo,
    write_policy,
)
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


def shown(fake: FakeGitHub, number: int = 1) -> str:
    """The status comment as people read it (markdown escapes removed)."""
    return status_body(fake, number).replace("\\", "")


def status_of(server: AppServer, number: int = 1) -> str | None:
    env = server.runtime.lifecycle.live_environment_for(REPO, number)
    return env.status if env is not None else None


def stack_reads(fake: FakeGitHub, folder: str) -> list[str]:
    return [r.path for r in fake.requests if "/contents/" in r.path and folder in r.path]


def test_finding_1_repository_and_git_stacks_are_refused_by_default(
    tmp_path: Path, fake_github: FakeGitHub
) -> None:
    """Without a policy file, `stack: {path: ...}` and `stack: {git: ...}` are refused with a
    comment naming the rule and the key that would allow it; nothing is fetched or run."""
    fake = fake_github
    seed_repo(fake, "stack: {path: .runbot/stacks/x}\n")
    fake.set_file(REPO, "main", ".runbot/stacks/x/instance/main.tf", 'output "url" { value = "x" }')
    fake.add_pull(REPO, 1, A, "feature")
    with AppServer(app_settings(tmp_path, fake)) as server:
        pull_event(server, fake, "opened")
        wait_for(lambda: "repo_stacks" in shown(fake), timeout=30)
        body = shown(fake)
        assert "may not use stacks from its own tree" in body and "repo_stacks: true" in body
        assert the_pull(server).hold_kind == "policy"
        fake.set_file(REPO, "main", ".runbot.yml", "stack: {git: 'https://evil.example/x.git'}\n")
        pull_event(server, fake, "synchronize")
        wait_for(lambda: "git_stacks" in shown(fake), timeout=30)
        assert "https://evil.example/x.git" in shown(fake)
        lifecycle = server.runtime.lifecycle
        assert lifecycle.list_environments(include_destroyed=True) == []
        assert lifecycle.list_silos() == []
    assert stack_reads(fake, ".runbot/stacks/x") == []


def test_finding_2_config_comes_only_from_the_default_branch_at_a_recorded_commit(
    tmp_path: Path, fake_github: FakeGitHub, port_base: int
) -> None:
    """A PR into another branch is refused unless `base_branches` allows it, and then deploys
    with the default branch's `.runbot.yml` (never the base's), read at a commit recorded on
    the PR, its environment and its run."""
    fake = fake_github
    config = "stack: local\nsilo: trust\nvars: {greeting: from-main}\n"
    policy = write_policy(tmp_path, 'default:\n  base_branches: [default, "release/*"]\n')
    with serving(tmp_path, fake, config, port_base, policy_file=policy) as server:
        # Branch `x` carries a config of its own choosing: a repository stack.
        fake.set_file(REPO, "x", ".runbot.yml", "stack: {path: evil}\nvars: {greeting: from-x}\n")
        fake.add_pull(REPO, 1, A, "feature", base_ref="x")
        pull_event(server, fake, "opened")
        wait_for(lambda: "base_branches" in shown(fake), timeout=30)
        assert "pull requests into the branch `x` get no environment" in shown(fake)
        assert server.runtime.lifecycle.list_environments() == []

        # `release/*` is allowed: the PR deploys, with main's configuration.
        fake.set_file(REPO, "release/1", ".runbot.yml", "stack: local\nvars: {greeting: rel}\n")
        fake.add_pull(REPO, 2, B, "feature-2", base_ref="release/1")
        pull_event(server, fake, "opened", number=2)
        lifecycle = server.runtime.lifecycle
        wait_for(lambda: status_of(server, 2) == Status.READY, timeout=90)
        env = lifecycle.live_environment_for(REPO, 2)
        assert env is not None and env.url is not None and env.silo_name == "trust"
        assert "from-main" in fetch(env.url).text
        main_sha = fake.branch_sha(REPO, "main")
        assert the_pull(server, 2).config_sha == main_sha and env.config_sha == main_sha
        with server.runtime.db.session() as session:
            runs = list(session.exec(select(Run).where(Run.target_id == env.id)))
        assert runs and all(run.config_sha == main_sha for run in runs)
