"""The operator policy in a process: the store's reloads, `runbot policy check/explain` (typer's
runner and a real `runbot`), the doctor's row, the API, and a real `runbot serve` that refuses a
bad file at start, and on SIGHUP or a changed file keeps the old policy when the new one is bad.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from app.cli.main import cli
from app.doctor.checks import run_checks
from app.doctor.report import State
from app.policy.load import PolicyError
from app.policy.store import PolicyStore, Reload
from app.server import create_app
from app.settings import load_settings
from tests.apphost import INSTALLATION, REPO, app_settings, free_port
from tests.conftest import TEMPLATES
from tests.fakegithub.server import FakeGitHub
from tests.helpers import wait_for
from tests.test_processes import runbot
from tests.webtools import WebServer, sign_in

pytest_plugins = ["tests.fakegithub.pytest_plugin"]

GOOD = 'default:\n  max_ttl: 2d\nrepos:\n  "octo-org/*":\n    repo_stacks: true\n'
BETTER = 'default:\n  max_ttl: 3d\nrepos:\n  "octo-org/*":\n    repo_stacks: true\n'
BAD = 'default:\n  max_ttl: 2d\nrepos:\n  "octo-org/*":\n    max_ttl: 1 year\n'
BAD_ERROR = 'line 5: repos."octo-org/*".max_ttl: "1 year" is not a duration'


def write(path: Path, text: str) -> Path:
    """Replace the file the way a ConfigMap update or an editor does: a new inode."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
    return path


# ----- the store -----------------------------------------------------------------------------


def test_the_store_keeps_the_old_policy_when_the_new_one_is_bad(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "policy.yml", GOOD)
    store = PolicyStore.open(path)
    first = store.current.digest
    assert store.reload_if_changed() is None, "nothing changed yet"

    write(path, BAD)
    with caplog.at_level(logging.INFO, logger="runbot.policy"):
        result = store.reload_if_changed()
        assert result is not None and result.outcome is Reload.KEPT
        assert result.error is not None and BAD_ERROR in result.error
        assert store.reload_if_changed() is None, "a bad version is logged once, not every look"
    assert store.current.digest == first
    assert store.policy_for("octo-org/web").max_ttl.days == 2
    kept = [record for record in caplog.records if "policy not reloaded" in record.getMessage()]
    assert len(kept) == 1 and kept[0].levelno == logging.ERROR
    assert BAD_ERROR in kept[0].getMessage()

    write(path, BETTER)
    result = store.reload_if_changed()
    assert result is not None and result.outcome is Reload.LOADED
    assert store.policy_for("octo-org/web").max_ttl.days == 3
    assert store.reload().outcome is Reload.UNCHANGED

    path.unlink()
    assert store.reload().outcome is Reload.KEPT, "a vanished file keeps the policy in force"
    assert store.policy_for("octo-org/web").max_ttl.days == 3


def test_the_store_refuses_a_bad_file_at_start(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="line 5"):
        PolicyStore.open(write(tmp_path / "policy.yml", BAD))
    assert PolicyStore.open(None).current.describe() == "defaults (no RUNBOT_POLICY_FILE)"
    assert PolicyStore.open(None).reload().outcome is Reload.UNCHANGED


# ----- the CLI, through typer's runner -------------------------------------------------------


def test_policy_check(tmp_path: Path) -> None:
    runner = CliRunner()
    good = runner.invoke(cli, ["policy", "check", str(write(tmp_path / "good.yml", GOOD))])
    assert good.exit_code == 0, good.output
    assert "ok (default and 1 repos entry)" in good.output
    bad = runner.invoke(cli, ["policy", "check", str(write(tmp_path / "bad.yml", BAD))])
    assert bad.exit_code == 1
    assert f"bad.yml {BAD_ERROR}" in bad.output
    missing = runner.invoke(cli, ["policy", "check", str(tmp_path / "none.yml")])
    assert missing.exit_code == 1 and "cannot read it" in missing.output


def test_policy_explain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    defaults = runner.invoke(cli, ["policy", "explain", "octo-org/web"])
    assert defaults.exit_code == 0, defaults.output
    assert "defaults (no RUNBOT_POLICY_FILE)" in defaults.output
    assert "repo_stacks       false" in defaults.output

    monkeypatch.setenv("RUNBOT_POLICY_FILE", str(write(tmp_path / "policy.yml", GOOD)))
    explained = runner.invoke(cli, ["policy", "explain", "octo-org/web"])
    assert explained.exit_code == 0, explained.output
    lines = explained.output.splitlines()
    assert any(
        line.split()[:2] == ["repo_stacks", "true"] and 'repos."octo-org/*" (line 5)' in line
        for line in lines
    ), explained.output
    assert any(line.split()[:2] == ["max_ttl", '"2d"'] and "(line 2)" in line for line in lines)

    other = runner.invoke(cli, ["policy", "explain", "else/web", "--file", str(tmp_path / "x")])
    assert other.exit_code == 1 and "cannot read it" in other.output
    untrusted = runner.invoke(cli, ["policy", "explain", "not a repo"])
    assert untrusted.exit_code == 1 and "is not owner/name" in untrusted.output


def test_policy_check_as_a_real_process(tmp_path: Path) -> None:
    bad = write(tmp_path / "policy.yml", BAD)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOT_")}
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "policy", "check", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"error: {bad} {BAD_ERROR}" in done.stderr
    write(bad, GOOD)
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "policy", "explain", "octo-org/x", "-f", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert 'repos."octo-org/*" (line 5)' in done.stdout


# ----- doctor --------------------------------------------------------------------------------


def test_doctor_shows_the_policy_in_force(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOT_TEMPLATES_DIR", str(TEMPLATES))
    monkeypatch.setenv("RUNBOT_ENGINE", "embedded")
    monkeypatch.setenv("RUNBOT_DATA_DIR", str(tmp_path / "data"))

    def row() -> tuple[State, str, str]:
        rows = {row.check: row for row in run_checks(load_settings())}
        return rows["policy"].state, rows["policy"].detail, rows["policy"].fix

    assert row()[:2] == (State.OK, "defaults (no RUNBOT_POLICY_FILE)")
    path = write(tmp_path / "policy.yml", GOOD)
    monkeypatch.setenv("RUNBOT_POLICY_FILE", str(path))
    state, detail, _ = row()
    digest = PolicyStore.open(path).current.digest
    assert state is State.OK and detail.startswith(f"{path} (sha256 {digest[:12]})")
    write(path, BAD)
    state, detail, fix = row()
    assert state is State.FAIL and BAD_ERROR in detail and "runbot policy check" in fix


# ----- the API -------------------------------------------------------------------------------


def test_the_api_shows_the_policy_to_operators_only(
    tmp_path: Path, fake_github: FakeGitHub
) -> None:
    fake_github.add_repo(REPO, files={"main": {".runbot.yml": "stack: local\n"}})
    fake_github.add_installation(INSTALLATION, "octo-org", [REPO])
    fake_github.set_permission(REPO, "rita", "admin")
    fake_github.oauth_login = "rita"
    port = free_port()
    settings = app_settings(
        tmp_path,
        fake_github,
        github_client_id=fake_github.client_id,
        github_client_secret=fake_github.client_secret,
        api_token="policy-api-token-0123456789",
        public_url=f"http://127.0.0.1:{port}",
        policy_file=write(tmp_path / "policy.yml", GOOD),
    )
    with WebServer(create_app(settings, background=False), port) as server:
        url = f"/api/policy/{REPO}"
        anonymous = httpx.get(server.url + url, timeout=20, trust_env=False)
        assert anonymous.status_code == 401
        # An admin of the repository is still not an operator: the policy is the operator's.
        assert sign_in(server.url).get(url).status_code == 403
        token = {"Authorization": "Bearer policy-api-token-0123456789"}
        answer = httpx.get(server.url + url, headers=token, timeout=20, trust_env=False)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["policy"]["repo_stacks"] is True
        assert body["origins"]["repo_stacks"] == 'repos."octo-org/*" (line 5)'
        assert body["matched"] == ["octo-org/*"] and body["source"] == str(tmp_path / "policy.yml")


# ----- a real `runbot serve` -----------------------------------------------------------------


def serve_env(tmp_path: Path, policy: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOT_")}
    env.update(
        RUNBOT_DATA_DIR=str(tmp_path / "data"),
        RUNBOT_TEMPLATES_DIR=str(TEMPLATES),
        RUNBOT_ENGINE="embedded",
        RUNBOT_POLICY_FILE=str(policy),
        RUNBOT_WORKER_POLL_INTERVAL="0.2",
    )
    return env


@contextmanager
def serve(tmp_path: Path, policy: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    args = ["serve", "--port", str(port)]
    with runbot(args, serve_env(tmp_path, policy), tmp_path / "serve.log") as proc:
        yield proc


def test_serve_refuses_to_start_with_a_bad_policy(tmp_path: Path) -> None:
    policy = write(tmp_path / "policy.yml", BAD)
    with serve(tmp_path, policy, free_port()) as proc:
        assert proc.wait(timeout=120) == 1
    assert f"error: {policy} {BAD_ERROR}" in (tmp_path / "serve.log").read_text()


def test_serve_keeps_the_old_policy_on_a_bad_reload(tmp_path: Path) -> None:
    """SIGHUP with a bad file keeps the policy in force and logs why; a good one replaces it,
    and so does a changed file without any signal."""
    policy = write(tmp_path / "policy.yml", GOOD)
    port = free_port()
    log = tmp_path / "serve.log"
    api = f"http://127.0.0.1:{port}/api/policy/octo-org/web"

    def in_force() -> str | None:
        try:
            answer = httpx.get(api, timeout=5, trust_env=False)
        except httpx.HTTPError:
            return None
        assert answer.status_code == 200, answer.text
        return str(answer.json()["policy"]["max_ttl"])

    def messages() -> list[str]:
        lines = log.read_text().splitlines()
        return [json.loads(line)["message"] for line in lines if line.startswith("{")]

    def log_count(words: str) -> int:
        return sum(words in message for message in messages())

    with serve(tmp_path, policy, port) as proc:
        wait_for(lambda: proc.poll() is not None or in_force() is not None, timeout=120)
        assert proc.poll() is None, log.read_text()
        assert in_force() == "2d"

        write(policy, BAD)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: log_count("policy not reloaded") >= 1, timeout=60)
        assert proc.poll() is None, "SIGHUP must not stop runbot"
        assert in_force() == "2d"
        (kept,) = [message for message in messages() if "policy not reloaded" in message]
        assert BAD_ERROR in kept and f"keeping {policy} (sha256 " in kept

        write(policy, BETTER)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: in_force() == "3d", timeout=60)
        assert log_count("policy reloaded") >= 1

        # No signal: the watcher sees the file change.
        write(policy, GOOD)
        wait_for(lambda: in_force() == "2d", timeout=60)
        write(policy, BAD)
        wait_for(lambda: log_count("policy not reloaded") >= 2, timeout=60)
        assert in_force() == "2d"
