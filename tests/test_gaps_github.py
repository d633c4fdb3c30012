"""A stack stored in the repository, config read from the default branch only, `runbot receive`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from app.cli.main import cli
from app.db.models import Delivery, PullRequest
from app.lifecycle.states import Status
from tests.apphost import INSTALLATION, REPO, WEBHOOK_SECRET, AppServer, app_settings, write_policy
from tests.conftest import TEMPLATES
from tests.fakegithub.server import FakeGitHub
from tests.fakegithub.webhooks import deliver
from tests.helpers import fetch, processes_matching, wait_for

pytest_plugins = ["tests.fakegithub.pytest_plugin"]


def opened(fake: FakeGitHub, number: int = 1) -> dict:
    payload = fake.pull_request_event("opened", REPO, number)
    payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
    return payload


@pytest.mark.engine
def test_stack_stored_in_the_repository_is_read_at_the_default_branch(
    tmp_path: Path, fake_github: FakeGitHub, port_base: int
) -> None:
    fake = fake_github
    files = {".runbot.yml": "stack: {path: .runbot/stacks/web}\nsilo: repo-web\n"}
    for path in (TEMPLATES / "local").rglob("*"):
        if path.is_file() and path.suffix in (".tf", ".py"):
            relative = path.relative_to(TEMPLATES / "local")
            text = path.read_text()
            if relative.as_posix() == "silo/variables.tf":
                text = text.replace("47100", str(port_base))  # a free port range for this test
            files[f".runbot/stacks/web/{relative.as_posix()}"] = text
    # The PR's own branch carries a tampered stack: it must never be what deploys the PR.
    tampered = dict(files)
    tampered[".runbot/stacks/web/instance/main.tf"] = "this is not HCL {"
    fake.add_repo(REPO, files={"main": files, "feature": tampered})
    fake.add_installation(INSTALLATION, "octo-org", [REPO])
    fake.add_pull(REPO, 1, "a" * 40, "feature")
    allowed = write_policy(tmp_path, f'repos:\n  "{REPO}":\n    repo_stacks: true\n')
    with AppServer(app_settings(tmp_path, fake, policy_file=allowed)) as server:
        assert (
            deliver(server.webhook_url, "pull_request", opened(fake), WEBHOOK_SECRET).status_code
            == 202
        )
        rt = server.runtime

        def ready() -> bool:
            envs = rt.lifecycle.list_environments()
            return bool(envs) and envs[0].status in (Status.READY, Status.FAILED)

        wait_for(ready, timeout=120)
        env = rt.lifecycle.list_environments()[0]
        assert env.status == Status.READY, env.reason
        assert (
            env.stack_source["kind"] == "repo" and env.stack_source["path"] == ".runbot/stacks/web"
        )
        assert env.url == f"http://127.0.0.1:{port_base - 1}/{env.id}/"  # the silo's ingress
        assert "a" * 40 in fetch(env.url).text
        rt.lifecycle.destroy_silo("repo-web", force=True)
        wait_for(lambda: rt.lifecycle.get_silo("repo-web").status == Status.DESTROYED, timeout=120)
        assert processes_matching(env.id) == []


def test_config_only_on_the_head_branch_is_ignored(tmp_path: Path, fake_github: FakeGitHub) -> None:
    fake = fake_github
    fake.add_repo(
        REPO, files={"main": {"README.md": "hi"}, "feature": {".runbot.yml": "stack: local\n"}}
    )
    fake.add_installation(INSTALLATION, "octo-org", [REPO])
    fake.add_pull(REPO, 1, "a" * 40, "feature")
    with AppServer(app_settings(tmp_path, fake)) as server:
        deliver(server.webhook_url, "pull_request", opened(fake), WEBHOOK_SECRET)

        def handled() -> bool:
            with server.runtime.db.session() as session:
                pull = session.get(PullRequest, f"{REPO}#1")
                delivered = session.exec(select(Delivery).where(Delivery.status == "processed"))
                return pull is not None and not pull.enabled and bool(delivered.all())

        wait_for(handled, timeout=30)
        assert server.runtime.lifecycle.list_environments(include_destroyed=True) == []
    reads = [r.path for r in fake.requests if "/contents/" in r.path]
    assert reads, "the config was never read"
    assert fake.comments(REPO, 1) == []


def test_runbot_receive_signs_and_posts_a_payload(
    tmp_path: Path, fake_github: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload_file = tmp_path / "ping.json"
    payload_file.write_text(json.dumps({"zen": "Design for failure.", "hook_id": 1}))
    with AppServer(app_settings(tmp_path, fake_github)) as server:
        monkeypatch.setenv("RUNBOT_GITHUB_WEBHOOK_SECRET", WEBHOOK_SECRET)
        result = CliRunner().invoke(
            cli, ["receive", "-e", "ping", "-p", str(payload_file), "--url", server.webhook_url]
        )
        assert result.exit_code == 0, result.output
        assert result.output.startswith("200") and "pong" in result.output
        monkeypatch.setenv("RUNBOT_GITHUB_WEBHOOK_SECRET", "some-other-secret-000000000000000")
        refused = CliRunner().invoke(
            cli, ["receive", "-e", "ping", "-p", str(payload_file), "--url", server.webhook_url]
        )
        assert refused.exit_code == 1 and refused.output.startswith("401")
