"""TTL and comment commands for real: runbot under uvicorn, the embedded engine on the local
stack, webhooks over HTTP from the fake GitHub, and the scheduler ticking every second."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from app.db.models import Environment
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


def status_body(fake: FakeGitHub) -> str:
    bodies = [c["body"] for c in fake.comments(REPO, 1) if c["body"].startswith(MARKER)]
    return bodies[-1] if bodies else ""


def other_comments(fake: FakeGitHub) -> list[str]:
    """What runbot posted on the PR besides its status comment (warnings, replies)."""
    return [
        c["body"]
        for c in fake.comments(REPO, 1)
        if c["user"]["login"] == f"{fake.slug}[bot]" and not c["body"].startswith(MARKER)
    ]


def send_pull(server: AppServer, fake: FakeGitHub, action: str) -> None:
    payload = fake.pull_request_event(action, REPO, 1)
    payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
    assert deliver(server.webhook_url, "pull_request", payload, WEBHOOK_SECRET).status_code == 202


def send_comment(server: AppServer, fake: FakeGitHub, body: str, author: str) -> int:
    payload = fake.issue_comment_event(REPO, 1, body, author=author)
    payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
    response = deliver(server.webhook_url, "issue_comment", payload, WEBHOOK_SECRET)
    assert response.status_code == 202, response.text
    return int(payload["comment"]["id"])


@contextlib.contextmanager
def running(
    tmp_path: Path,
    fake: FakeGitHub,
    port_base: int,
    config: str,
    database_url: str | None = None,
    **settings: Any,
) -> Iterator[AppServer]:
    """runbot serving a repo with `config` and PR #1 by alice; every environment (and its
    server process) destroyed afterwards."""
    seed_repo(fake, config)
    fake.add_pull(REPO, 1, "a" * 40, "feature/ttl", author="alice")
    fake.set_permission(REPO, "wendy", "write")
    with AppServer(app_settings(tmp_path, fake, database_url, **settings)) as server:
        lifecycle = server.runtime.lifecycle
        lifecycle.create_silo("cmd", "local", {"port_base": port_base})
        wait_for(lambda: lifecycle.get_silo("cmd").status == Status.READY, timeout=60)
        try:
            yield server
        finally:
            for env in lifecycle.list_environments():
                lifecycle.destroy_environment(env.id)
            wait_for(lambda: not lifecycle.list_environments(), timeout=60)


def the_env(server: AppServer) -> Environment:
    [env] = server.runtime.lifecycle.list_environments(include_destroyed=True)
    return env


def test_short_ttl_warns_then_reaps_on_the_local_stack(
    tmp_path: Path, fake_github: FakeGitHub, port_base: int, database_url: str
) -> None:
    fake = fake_github
    # Room for a slow apply on a loaded machine: the environment is created at the PR's
    # opening, and its lifetime counts from there, apply included.
    config = "stack: local\nsilo: cmd\nttl: {idle: 16s, max: 40s, warn_before: 8s}\n"
    with running(tmp_path, fake, port_base, config, database_url, scheduler_interval=1.0) as server:
        send_pull(server, fake, "opened")
        wait_for(lambda: URL_IN_COMMENT.search(status_body(fake)) is not None, timeout=30)
        match = URL_IN_COMMENT.search(status_body(fake))
        assert match is not None
        url = match.group(1)
        env = the_env(server)
        assert env.expires_at is not None
        assert env.id in fetch(url).text
        assert len(processes_matching(env.id)) == 1

        # The warning: one short comment mentioning the author, before the expiry...
        wait_for(lambda: any("@alice" in body for body in other_comments(fake)), timeout=40)
        [warning] = other_comments(fake)
        assert "/runbot extend" in warning and env.id in warning
        [posted] = [c["created_at"] for c in fake.comments(REPO, 1) if c["body"] == warning]
        assert datetime.fromisoformat(posted.replace("Z", "+00:00")) < env.expires_at
        # ...and the status comment showed it.
        wait_for(
            lambda: any(
                "expires soon" in str((r.body or {}).get("body", ""))
                for r in fake.requests_for("PATCH", f"/repos/{REPO}/issues/comments/*")
            ),
            timeout=40,  # paced writes on a loaded machine; delivery, not a TTL bound
        )

        # Reaped: destroyed with reason expired, within about one tick of the expiry.
        wait_for(lambda: the_env(server).status == Status.DESTROYED, timeout=30)
        gone = the_env(server)
        assert (gone.reason, gone.trigger) == ("expired", "ttl")
        assert gone.destroyed_at is not None
        lag = (gone.destroyed_at - env.expires_at).total_seconds()
        print(f"destroyed {lag:.2f}s after the expiry (tick every 1s)")
        assert 0 <= lag < 6, f"destroyed {lag:.1f}s after the expiry"
        assert processes_matching(env.id) == []
        assert refuses(url)
        wait_for(lambda: "expired and was destroyed" in status_body(fake), timeout=40)
        assert "/runbot redeploy" in status_body(fake)
        time.sleep(2)  # a few more ticks: nothing warns or comes back
        assert len(other_comments(fake)) == 1
        assert server.runtime.lifecycle.live_environment_for(REPO, 1) is None

        # `/runbot redeploy` brings it back.
        cid = send_comment(server, fake, "/runbot redeploy", "wendy")
        wait_for(lambda: [r["content"] for r in fake.reactions(cid)] == ["eyes", "+1"], timeout=15)
        fresh = server.runtime.lifecycle.live_environment_for(REPO, 1)
        assert fresh is not None and fresh.id != env.id


def test_sleep_and_wake_stop_and_start_the_server(
    tmp_path: Path, fake_github: FakeGitHub, port_base: int
) -> None:
    fake = fake_github
    with running(tmp_path, fake, port_base, "stack: local\nsilo: cmd\n") as server:
        send_pull(server, fake, "opened")
        wait_for(lambda: the_env_ready(server), timeout=30)
        env = the_env(server)
        assert env.url is not None
        url = env.url
        assert fetch(url).status_code == 200
        assert len(processes_matching(env.id)) == 1

        cid = send_comment(server, fake, "/runbot status", "bob")  # anyone may ask
        wait_for(lambda: len(other_comments(fake)) == 1, timeout=15)
        [status] = other_comments(fake)
        assert f"({url})" in status and env.head_sha[:7] in status and "Ready" in status
        assert env.expires_at is not None and env.expires_at.strftime("%H:%M UTC") in status
        assert f"run `{env.last_run_id}`: `apply`, succeeded, finished" in status
        # bob is below triage on someone else's PR: one reaction, no 👀 (app.commands.limits)
        wait_for(lambda: [r["content"] for r in fake.reactions(cid)] == ["+1"], timeout=10)

        cid = send_comment(server, fake, "/runbot sleep", "alice")  # the PR's author
        wait_for(lambda: the_env(server).status == Status.SLEEPING, timeout=30)
        assert processes_matching(env.id) == []
        assert refuses(env.outputs["direct_url"]["value"])  # the ingress URL would wake it
        slept = the_env(server)
        assert slept.expires_at == env.expires_at  # sleeping keeps the expiry
        wait_for(lambda: [r["content"] for r in fake.reactions(cid)] == ["eyes", "+1"], timeout=10)
        wait_for(lambda: "Sleeping" in status_body(fake), timeout=15)

        cid = send_comment(server, fake, "/runbot wake", "alice")
        wait_for(lambda: the_env(server).status == Status.READY, timeout=30)
        assert len(processes_matching(env.id)) == 1
        assert fetch(url).status_code == 200
        woke = the_env(server)
        assert woke.id == env.id and woke.expires_at is not None and env.expires_at is not None
        assert woke.expires_at > env.expires_at  # waking is activity
        wait_for(lambda: [r["content"] for r in fake.reactions(cid)] == ["eyes", "+1"], timeout=10)
        assert len(other_comments(fake)) == 1  # no replies to sleep and wake: nothing to say


def the_env_ready(server: AppServer) -> bool:
    envs = server.runtime.lifecycle.list_environments()
    return len(envs) == 1 and envs[0].status == Status.READY
