"""Secrets drill: a sensitive silo output and a provider credential never appear anywhere shown.

The `leaky` stack deliberately echoes both into its engine log. runbot must scrub them from stored
logs, comments, CLI output, API responses and dashboard pages.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlmodel import select
from typer.testing import CliRunner

from app.cli.main import cli
from app.db.models import Environment, OutboxMessage, RunLogChunk, Silo
from app.lifecycle.states import Status
from tests.apphost import (
    REPO,
    AppServer,
    app_settings,
    open_pull_and_wait,
    seed_repo,
)
from tests.fakegithub.server import FakeGitHub
from tests.helpers import wait_for

pytest_plugins = ["tests.fakegithub.pytest_plugin"]
pytestmark = pytest.mark.engine

LEAKY = Path(__file__).parent / "fixtures" / "stacks-leaky"
DB_PASSWORD = "s3cr3t-db-pa55word-7d41"
PROVIDER_TOKEN = "prov-cred-9f8e7d6c5b4a"
SECRETS = (DB_PASSWORD, PROVIDER_TOKEN)


def assert_clean(where: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{where} shows a secret"


def test_secrets_never_appear(
    tmp_path: Path, fake_github: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The operator's provider credential, given to the silo's runs (never runbot's environment).
    silo_env = tmp_path / "silo-env"
    silo_env.mkdir()
    (silo_env / "leaky.env").write_text(f"MY_PROVIDER_TOKEN={PROVIDER_TOKEN}\n")
    fake = fake_github
    seed_repo(fake, "stack: leaky\nsilo: leaky\n")
    fake.add_pull(REPO, 1, "a" * 40, "feature")
    settings = app_settings(
        tmp_path,
        fake,
        templates_dir=LEAKY,
        api_token="t0ken-for-automation",
        silo_env_dir=silo_env,
    )
    with AppServer(settings) as server:
        open_pull_and_wait(server, fake)
        rt = server.runtime
        with rt.db.session() as session:
            logs = "".join(c.text for c in session.exec(select(RunLogChunk)))
            silo = session.get(Silo, "leaky")
            env = session.exec(select(Environment)).one()
            outbox = session.exec(select(OutboxMessage)).all()
        # The secret really went through the engine (the test would prove nothing otherwise).
        assert silo is not None and silo.outputs["db_password"]["value"] == DB_PASSWORD
        assert "password=*** token=***" in logs
        assert_clean("the stored run logs", logs)
        assert outbox == []
        wait_for(lambda: bool(fake.comments(REPO, 1)), timeout=60)
        for comment in fake.comments(REPO, 1):
            assert_clean("a PR comment", comment["body"])
        for request in fake.requests:
            assert_clean(f"a request to GitHub ({request.path})", str(request.body))

        runner = CliRunner()
        for args in (["silo", "show", "leaky"], ["env", "show", env.id], ["env", "logs", env.id]):
            monkeypatch.setenv("RUNBOT_DATA_DIR", str(settings.data_dir))
            monkeypatch.setenv("RUNBOT_TEMPLATES_DIR", str(LEAKY))
            result = runner.invoke(cli, args)
            assert result.exit_code == 0, result.output
            assert_clean(f"`runbot {' '.join(args)}`", result.output)
        assert "(sensitive)" in runner.invoke(cli, ["silo", "show", "leaky"]).output

        headers = {"Authorization": "Bearer t0ken-for-automation"}
        pages = [
            "/api/silos",
            "/api/silos/leaky",
            "/api/environments",
            f"/api/environments/{env.id}",
            f"/api/environments/{env.id}/runs",
            "/",
            f"/environments/{env.id}",
            "/silos",
            "/silos/leaky",
            "/metrics",
        ]
        for path in pages:
            response = httpx.get(server.url + path, headers=headers, timeout=30)
            if response.status_code == 404 and path.startswith(("/silos/", "/api/silos/")):
                continue
            assert response.status_code == 200, (path, response.status_code)
            assert_clean(path, response.text)
        runs = httpx.get(f"{server.url}/api/environments/{env.id}/runs", headers=headers).json()
        items = runs["items"] if isinstance(runs, dict) else runs
        for run in items:
            log = httpx.get(f"{server.url}/api/runs/{run['id']}/log", headers=headers, timeout=30)
            assert log.status_code == 200
            assert_clean("the run log API", log.text)
        rt.lifecycle.destroy_environment(env.id)
        wait_for(lambda: rt.lifecycle.get_environment(env.id).status == Status.DESTROYED, 60)
