"""Uninstall is a kill switch (issue 15, finding 6), tried the way an organisation admin would:
uninstall, suspend, remove a repository, over real HTTP webhooks → runbot (uvicorn, real
workers) → the embedded engine → fake GitHub, whose state changes as GitHub's would.

Finding: removing a repository from the App, or uninstalling or suspending the App, left its
environments running until their TTL.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import httpx
import pytest
from sqlmodel import col, select

from app.db.models import Delivery, Environment
from app.github.installations import CUTOFF_REASONS, Cutoff
from app.lifecycle.states import HoldKind, Status
from tests.apphost import INSTALLATION, REPO, WEBHOOK_SECRET, AppServer
from tests.fakegithub.server import FakeGitHub
from tests.fakegithub.webhooks import deliver
from tests.helpers import fetch, refuses, wait_for
from tests.test_trust import A, B, pull_event, serving, status_body, the_pull

pytest_plugins = ["tests.fakegithub.pytest_plugin"]
pytestmark = pytest.mark.engine

CONFIG = "stack: local\nsilo: trust\n"
TOKEN = "t0ken-for-the-operator"


def admin(
    server: AppServer,
    fake: FakeGitHub,
    event: str,
    action: str,
    repos: Iterable[str] = (),
    installation: int = INSTALLATION,
) -> None:
    """An admin acts on the App in GitHub; GitHub changes and sends the webhook."""
    payload = fake.installation_event(event, action, installation, repos)
    assert deliver(server.webhook_url, event, payload, WEBHOOK_SECRET).status_code == 202


def deployed(server: AppServer, fake: FakeGitHub) -> Environment:
    """PR 1 opened and its environment answering."""
    fake.add_pull(REPO, 1, A, "feature", author="alice")
    pull_event(server, fake, "opened")
    wait_for(lambda: _ready(server) is not None, timeout=90)
    env = _ready(server)
    assert env is not None and env.url is not None
    assert A in fetch(env.url).text
    return env


def _ready(server: AppServer) -> Environment | None:
    env = server.runtime.lifecycle.live_environment_for(REPO, 1)
    return env if env is not None and env.status == Status.READY else None


def torn_down(server: AppServer, env: Environment, cut: Cutoff) -> None:
    """The environment is gone, and the dashboard and the API say why; the PR row stays."""
    lifecycle = server.runtime.lifecycle
    expected = HoldKind.SUSPENDED if cut is Cutoff.SUSPENDED else HoldKind.UNINSTALLED
    wait_for(lambda: lifecycle.get_environment(env.id).status == Status.DESTROYED, timeout=90)
    gone = lifecycle.get_environment(env.id)
    assert gone.reason == CUTOFF_REASONS[cut] and gone.trigger == expected
    assert env.url is not None
    assert refuses(env.url)  # the silo's ingress knows it no more
    headers = {"Authorization": f"Bearer {TOKEN}"}
    api = httpx.get(f"{server.url}/api/environments/{env.id}", headers=headers, timeout=30)
    assert api.status_code == 200 and api.json()["reason"] == CUTOFF_REASONS[cut]
    page = httpx.get(f"{server.url}/environments/{env.id}", headers=headers, timeout=30)
    assert page.status_code == 200 and "runbot App" in page.text
    pull = the_pull(server)
    assert pull.state == "open" and pull.hold_kind == expected
    assert pull.hold_reason == CUTOFF_REASONS[cut]


def quiet(fake: FakeGitHub, seconds: float = 2.0) -> list[str]:
    """The requests runbot sends GitHub over a few seconds (none, for a cut-off repository)."""
    fake.clear_records()
    time.sleep(seconds)
    return [f"{r.method} {r.path}" for r in fake.requests]


def last_delivery(server: AppServer) -> str:
    with server.runtime.db.session() as session:
        newest = session.exec(select(Delivery).order_by(col(Delivery.received_at).desc())).first()
    assert newest is not None
    return newest.status


def resync_requests(server: AppServer, fake: FakeGitHub) -> list[str]:
    fake.clear_records()
    server.call(server.workers.resync)
    return [f"{r.method} {r.path}" for r in fake.requests]


def test_finding_6_uninstall_destroys_the_installations_environments(
    tmp_path: Path, fake_github: FakeGitHub, port_base: int
) -> None:
    """Uninstalling destroys every environment of the installation; its GitHub writes, which
    can never land, are dropped rather than retried; resync skips it; a re-install (a new
    installation) gives the open PRs their environments back."""
    fake = fake_github
    with serving(tmp_path, fake, CONFIG, port_base, api_token=TOKEN) as server:
        admin(server, fake, "installation", "created", [REPO])
        env = deployed(server, fake)

        admin(server, fake, "installation", "deleted")
        torn_down(server, env, Cutoff.UNINSTALLED)
        wait_for(lambda: the_pull(server).synced_version == the_pull(server).sync_version, 30)
        assert quiet(fake) == []  # nothing retried against a token that cannot exist
        assert resync_requests(server, fake) == []
        assert server.runtime.lifecycle.live_environment_for(REPO, 1) is None
        # A push GitHub sent just before the uninstall, delivered after: recorded, not failed
        # on GitHub's refusals, and nothing deployed.
        fake.update_pull(REPO, 1, head_sha=B)
        pull_event(server, fake, "synchronize")
        wait_for(lambda: last_delivery(server) != "pending", timeout=30)
        assert last_delivery(server) == "processed" and the_pull(server).head_sha == B
        assert server.runtime.lifecycle.live_environment_for(REPO, 1) is None

        # Installed again: a new installation; the open PR is deployed again at once.
        admin(server, fake, "installation", "created", [REPO], installation=INSTALLATION + 1)
        wait_for(lambda: _ready(server) is not None, timeout=90)
        assert the_pull(server).installation_id == INSTALLATION + 1
        assert the_pull(server).hold_kind is None


def test_finding_6_a_repository_removed_from_the_app_loses_its_environments(
    tmp_path: Path, fake_github: FakeGitHub, port_base: int
) -> None:
    """Removing the repository from the installation destroys its environments; resync does
    not bring them back; adding it back does."""
    fake = fake_github
    with serving(tmp_path, fake, CONFIG, port_base, api_token=TOKEN) as server:
        admin(server, fake, "installation", "created", [REPO])
        env = deployed(server, fake)

        admin(server, fake, "installation_repositories", "removed", [REPO])
        torn_down(server, env, Cutoff.REMOVED)
        wait_for(lambda: the_pull(server).synced_version == the_pull(server).sync_version, 30)
        assert quiet(fake) == []
        # Resync asks GitHub which repositories the installation has, and lists no PRs of this.
        asked = resync_requests(server, fake)
        assert not [path for path in asked if f"/repos/{REPO}" in path], asked
        assert server.runtime.lifecycle.live_environment_for(REPO, 1) is None

        admin(server, fake, "installation_repositories", "added", [REPO])
        wait_for(lambda: _ready(server) is not None, timeout=90)
        assert the_pull(server).hold_kind is None


def test_finding_6_suspend_destroys_the_environments_and_its_writes_wait(
    tmp_path: Path, fake_github: FakeGitHub, port_base: int
) -> None:
    """Suspending destroys the installation's environments (docs/security.md says why not
    sleep); GitHub refuses the writes meanwhile, so they wait, without retrying; resync skips
    the installation."""
    fake = fake_github
    with serving(tmp_path, fake, CONFIG, port_base, api_token=TOKEN) as server:
        admin(server, fake, "installation", "created", [REPO])
        env = deployed(server, fake)
        wait_for(lambda: env.url is not None and env.url in status_body(fake), timeout=30)

        admin(server, fake, "installation", "suspend")
        torn_down(server, env, Cutoff.SUSPENDED)
        wait_for(lambda: the_pull(server).next_sync_at is not None, timeout=30)
        pull = the_pull(server)
        assert pull.synced_version < pull.sync_version  # owed, not dropped
        assert quiet(fake) == []  # parked: not retried against GitHub's refusal
        assert resync_requests(server, fake) == []
        assert server.runtime.lifecycle.live_environment_for(REPO, 1) is None


def test_finding_6_unsuspend_resumes(
    tmp_path: Path, fake_github: FakeGitHub, port_base: int
) -> None:
    """`unsuspend` gives the open PRs their environments back, and the writes that waited go
    out: the status comment shows the new environment."""
    fake = fake_github
    with serving(tmp_path, fake, CONFIG, port_base, api_token=TOKEN) as server:
        admin(server, fake, "installation", "created", [REPO])
        env = deployed(server, fake)
        admin(server, fake, "installation", "suspend")
        wait_for(
            lambda: server.runtime.lifecycle.get_environment(env.id).status == Status.DESTROYED,
            timeout=90,
        )
        wait_for(lambda: the_pull(server).next_sync_at is not None, timeout=30)

        admin(server, fake, "installation", "unsuspend")
        wait_for(lambda: _ready(server) is not None, timeout=90)
        again = _ready(server)
        assert again is not None and again.id != env.id and again.url is not None
        assert A in fetch(again.url).text
        assert the_pull(server).hold_kind is None
        wait_for(lambda: again.id in status_body(fake), timeout=30)
        wait_for(lambda: the_pull(server).synced_version == the_pull(server).sync_version, 30)
