"""The secrets drill (issue 16 must 5): a hostile instance template, through the whole App.

The `probe` stack's `local-exec` scans `/proc` for every process's environment, reads the key
file any of them names, the data dir's secrets and database, runbot's `.env`, the per-silo
credential files and `PG_CONN_STR`, and prints all it finds into its run log. With the
sandbox on (the default), none of runbot's secrets may appear in that log, a comment, the API
or the dashboard, on SQLite and on PostgreSQL. The same drill with `RUNBOT_SANDBOX=off` shows
the probe does find them there, so the clean result is the sandbox's doing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from app.db.models import RunLogChunk
from tests.apphost import (
    REPO,
    WEBHOOK_SECRET,
    AppServer,
    app_settings,
    open_pull_and_wait,
    seed_repo,
)
from tests.fakegithub.server import FakeGitHub
from tests.helpers import wait_for

pytest_plugins = ["tests.fakegithub.pytest_plugin"]
pytestmark = pytest.mark.engine

PROBE = Path(__file__).parent / "fixtures" / "stacks-probe"
API_TOKEN = "api-t0ken-drill-5b1e0c"
SESSION_SECRET = "session-s3cret-drill-77aa0e1f"
ENV_FILE_SECRET = "dotenv-s3cret-drill-c0ffee"
SILO_CREDENTIAL = "silo-cred-drill-1f2e3d"


def _drill(
    tmp_path: Path,
    fake: FakeGitHub,
    database_url: str | None,
    sandbox: str,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Any]:
    """Run the probe through the App; what it printed and what every surface showed."""
    key_file = tmp_path / "app.pem"
    key_file.write_text(fake.private_key_pem)
    key_file.chmod(0o600)
    (tmp_path / ".env").write_text(f"RUNBOT_METRICS_TOKEN={ENV_FILE_SECRET}\n")
    silo_env = tmp_path / "silo-env"
    silo_env.mkdir()
    (silo_env / "other.env").write_text(f"OTHER_SILO_TOKEN={SILO_CREDENTIAL}\n")
    # runbot's own environment holds its secrets, as a deployment's would.
    monkeypatch.setenv("RUNBOT_GITHUB_PRIVATE_KEY_PATH", str(key_file))
    monkeypatch.setenv("RUNBOT_API_TOKEN", API_TOKEN)
    monkeypatch.setenv("RUNBOT_SESSION_SECRET", SESSION_SECRET)
    seed_repo(fake, "stack: probe\nsilo: probe\n")
    fake.add_pull(REPO, 1, "a" * 40, "feature")
    settings = app_settings(
        tmp_path,
        fake,
        database_url,
        templates_dir=PROBE,
        github_private_key=None,
        github_private_key_path=key_file,
        api_token=API_TOKEN,
        session_secret=SESSION_SECRET,
        silo_env_dir=silo_env,
        sandbox=sandbox,
    )
    with AppServer(settings) as server:
        open_pull_and_wait(server, fake)
        rt = server.runtime
        env = rt.lifecycle.list_environments()[0]
        with rt.db.session() as session:
            log = "\n".join(c.text for c in session.exec(select(RunLogChunk)))
        wait_for(lambda: bool(fake.comments(REPO, 1)), timeout=60)
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        shown = {"the run log": log}
        for comment in fake.comments(REPO, 1):
            shown[f"comment {comment['id']}"] = comment["body"]
        for path in (
            "/api/environments",
            f"/api/environments/{env.id}",
            "/",
            f"/environments/{env.id}",
        ):
            shown[path] = httpx.get(server.url + path, headers=headers, timeout=30).text
        runs = httpx.get(f"{server.url}/api/environments/{env.id}/runs", headers=headers).json()
        for run in runs["items"] if isinstance(runs, dict) else runs:
            url = f"{server.url}/api/runs/{run['id']}/log"
            shown[f"run {run['id']} log API"] = httpx.get(url, headers=headers, timeout=30).text
        secrets = {
            "the App key": fake.private_key_pem.strip().splitlines()[1],
            "the webhook secret": WEBHOOK_SECRET,
            "the API token": API_TOKEN,
            "the session secret": SESSION_SECRET,
            "runbot's .env": ENV_FILE_SECRET,
            "another silo's credential": SILO_CREDENTIAL,
        }
        if settings.data_dir.joinpath("session-secret").exists():
            secrets["the data dir's session secret"] = (
                settings.data_dir.joinpath("session-secret").read_text().strip()
            )
        return {"log": log, "shown": shown, "secrets": secrets}


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_hostile_template_finds_no_secret_anywhere(
    tmp_path: Path,
    fake_github: FakeGitHub,
    database: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = request.getfixturevalue("postgres_url") if database == "postgres" else None
    found = _drill(tmp_path, fake_github, url, "on", monkeypatch)
    log = found["log"]
    assert "probe: done" in log, log[-2000:]  # the probe ran to its end
    if os.geteuid() == 0:
        assert "probe: uid=65534" in log
    visible = int(log.split("probe: processes visible=")[1].split()[0])
    assert visible <= 12, log  # its own few: the init, the engine, the provider, the shells
    assert "probe environ: RUNBOT_" not in log and "probe key:" not in log
    for where, text in found["shown"].items():
        for name, secret in found["secrets"].items():
            assert secret not in text, f"{where} shows {name}"
    if url:
        assert "probe PG_CONN_STR=***" in log  # its own role's URL, redacted; never runbot's
    assert 'id="sandbox-banner"' not in found["shown"]["/"]


def test_the_same_probe_unsandboxed_does_find_secrets(
    tmp_path: Path, fake_github: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: with the sandbox off the probe reads the key file and runbot's `.env`, and
    sees every process, so the test above fails if the sandbox stops doing its job."""
    found = _drill(tmp_path, fake_github, None, "off", monkeypatch)
    log = found["log"]
    assert found["secrets"]["the App key"] in log
    assert ENV_FILE_SECRET in log
    assert int(log.split("probe: processes visible=")[1].split()[0]) > 12
    assert 'id="sandbox-banner"' in found["shown"]["/"]  # the dashboard says it is off
