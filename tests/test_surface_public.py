"""What the bot says in public (issue 21, must 5), over real HTTP: webhooks → runbot (uvicorn,
real workers, the embedded engine) → the fake GitHub, whose comments anyone could read.

"A failed run's last 30 log lines go into the comment, which anyone can read on a public
repository. The redactor does not know sensitive outputs created in the same run. Error
messages post host paths and the catalog listing." The `selfleak` stack's apply creates a
sensitive output, prints its value, then fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import select

from app.db.models import Environment, PullRequest, RunLogChunk
from app.engine.backends import local_state_file
from app.github.comment import MARKER
from app.github.public import HOST_PATH, public_text
from app.lifecycle.service import pull_id
from app.lifecycle.states import Status
from tests.apphost import INSTALLATION, WEBHOOK_SECRET, AppServer, app_settings
from tests.fakegithub.server import FakeGitHub
from tests.fakegithub.webhooks import deliver
from tests.helpers import wait_for

pytest_plugins = ["tests.fakegithub.pytest_plugin"]

STACKS = Path(__file__).parent / "fixtures" / "stacks-public"
PUBLIC, PRIVATE, OPTED_IN, TYPO = (
    "octo-org/hello",
    "octo-org/secret",
    "octo-org/docs",
    "octo-org/typo",
)
CONFIG = "stack: selfleak\nsilo: selfleak\n"


def open_pull(server: AppServer, fake: FakeGitHub, repo: str) -> None:
    fake.add_pull(repo, 1, "a" * 40, "feature")
    payload = fake.pull_request_event("opened", repo, 1)
    payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
    assert deliver(server.webhook_url, "pull_request", payload, WEBHOOK_SECRET).status_code == 202


def status_body(fake: FakeGitHub, repo: str) -> str:
    bodies = [c["body"] for c in fake.comments(repo, 1) if c["body"].startswith(MARKER)]
    return str(bodies[-1]) if bodies else ""


def failed_env(server: AppServer, repo: str) -> Environment | None:
    with server.runtime.db.session() as session:
        env = session.exec(select(Environment).where(Environment.repository == repo)).first()
    return env if env is not None and env.status == Status.FAILED else None


def token_of(server: AppServer, env: Environment) -> str:
    """The sensitive value the failed apply created, read from its state."""
    state = json.loads(local_state_file(server.settings.data_dir, f"env-{env.id}").read_text())
    [token] = [
        instance["attributes"]["id"]
        for resource in state["resources"]
        if resource["name"] == "token"
        for instance in resource["instances"]
    ]
    return str(token)


def run_log(server: AppServer, env: Environment) -> str:
    with server.runtime.db.session() as session:
        chunks = session.exec(select(RunLogChunk).where(RunLogChunk.run_id == env.last_run_id))
        return "".join(chunk.text for chunk in chunks)


@pytest.mark.engine
def test_case_public_repos_link_the_log_and_no_comment_shows_a_secret_or_a_host_path(
    tmp_path: Path, fake_github: FakeGitHub
) -> None:
    """A public repository's failure comment links to the run page instead of quoting; a
    private one (and a public one the policy opts in with `quote_logs`) quotes it. No comment
    and no stored log shows the sensitive output the failing run created; no comment names a
    host path or the catalog's stacks, which the operator's view keeps."""
    fake = fake_github
    for repo, private in ((PUBLIC, False), (PRIVATE, True), (OPTED_IN, False), (TYPO, False)):
        config = "stack: nope\n" if repo == TYPO else CONFIG
        fake.add_repo(repo, files={"main": {".runbot.yml": config}}, private=private)
    fake.add_installation(INSTALLATION, "octo-org", [PUBLIC, PRIVATE, OPTED_IN, TYPO])
    policy = tmp_path / "policy.yml"
    policy.write_text(
        f'repos:\n  "{OPTED_IN}":\n    quote_logs: true\n  "*/*":\n    max_silos: 5\n'
    )
    settings = app_settings(tmp_path, fake, templates_dir=STACKS, policy_file=policy)
    with AppServer(settings) as server:
        for repo in (PUBLIC, PRIVATE, OPTED_IN, TYPO):
            open_pull(server, fake, repo)
        for repo in (PUBLIC, PRIVATE, OPTED_IN):
            wait_for(lambda r=repo: failed_env(server, r) is not None, timeout=120)
            wait_for(lambda r=repo: "Failed" in status_body(fake, r), timeout=60)
        wait_for(lambda: "unknown stack" in status_body(fake, TYPO), timeout=60)

        host_paths = (str(tmp_path), str(settings.data_dir.absolute()), str(STACKS))
        for repo in (PUBLIC, PRIVATE, OPTED_IN):
            env = failed_env(server, repo)
            assert env is not None
            body, log = status_body(fake, repo), run_log(server, env)
            token = token_of(server, env)
            # The value really went through the engine's output, and was scrubbed after.
            assert "handing out token ***" in log, log
            assert token not in log
            assert token not in body
            for comment in fake.comments(repo, 1):
                assert token not in comment["body"]
                assert not any(path in comment["body"] for path in host_paths), comment["body"]
            quoted = "```text" in body
            assert quoted is (repo != PUBLIC), (repo, body)
            if not quoted:
                assert "is not quoted here" in body
                assert f"http://runbot.example.test/environments/{env.id}#run-" in body
            else:
                assert "handing out token ***" in body
                assert HOST_PATH in body  # the `$ embedded apply -var-file=...` line

        typo = status_body(fake, TYPO)
        assert "selfleak" not in typo and "operator's stack catalog" in typo
        with server.runtime.db.session() as session:
            pull = session.get(PullRequest, pull_id(TYPO, 1))
        assert pull is not None and "selfleak" in (pull.hold_reason or "")  # operators: detail

        for env in server.runtime.lifecycle.list_environments():
            server.runtime.lifecycle.destroy_environment(env.id)
        wait_for(lambda: not server.runtime.lifecycle.list_environments(), timeout=120)


def test_case_error_text_loses_host_paths_and_the_catalog_listing() -> None:
    text = (
        "cannot deploy: unknown stack 'nope': the catalog at /srv/runbot/templates has: aws, "
        "internal-db, local. Copy /var/lib/runbot/work/env-pr-1/x.json, see https://h.example/a/b"
    )
    shown = public_text(text, ["/var/lib/runbot"])
    assert "internal-db" not in shown and "/srv/runbot" not in shown
    assert "/var/lib/runbot" not in shown and "https://h.example/a/b" in shown
    assert shown.startswith("cannot deploy: unknown stack 'nope': it is not in the operator's")
