"""`runbot demo --check` as a real process: the PR's own app, served, updated and destroyed.

The source fetcher (`app/source`) turns `RUNBOT_LOCAL_REPO` into each PR's
`runbot_source_dir`; the template's part is proven on its own in tests/test_local_app.py.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.apphost import free_port
from tests.conftest import ROOT, TEMPLATES, free_port_range
from tests.helpers import processes_matching

pytestmark = pytest.mark.engine

DEFAULT_PORT_BASE = "default     = 47100"


def _demo_env(tmp_path: Path) -> dict[str, str]:
    """No RUNBOT_* of the caller's, and this checkout's `app` whatever the cwd."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOT_")}
    env.update(
        PYTHONPATH=str(ROOT), RUNBOT_DATA_DIR=str(tmp_path / "data"), RUNBOT_ENGINE="embedded"
    )
    return env


def _demo_check(env: dict[str, str], cwd: Path, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "demo", "--check", "--port", str(port)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _templates_on_free_ports(root: Path) -> Path:
    """The shipped templates with a free silo port range: the demo's silo takes the default."""
    copy = root / "infra-templates"
    shutil.copytree(TEMPLATES, copy)
    variables = copy / "local" / "silo" / "variables.tf"
    text = variables.read_text()
    assert DEFAULT_PORT_BASE in text
    variables.write_text(text.replace(DEFAULT_PORT_BASE, f"default     = {free_port_range(25)}"))
    return copy


def test_demo_check_serves_the_prs_own_text(tmp_path: Path, postgres_url: str) -> None:
    env = _demo_env(tmp_path)
    env.update(
        RUNBOT_TEMPLATES_DIR=str(_templates_on_free_ports(tmp_path)),
        RUNBOT_DATABASE_URL=postgres_url,
    )
    done = _demo_check(env, tmp_path, free_port())
    out = done.stdout
    log = tmp_path / "data" / "demo.log"
    assert done.returncode == 0, f"{out}\n{done.stderr}\n{log.read_text() if log.exists() else ''}"
    assert "serves the PR's own app: 'Hello from pull request #1'" in out
    assert "now serves 'Pull request #1, second push'" in out
    assert "answers 404 from the silo's ingress: nothing is left behind" in out
    assert f"runbot's own log: {log}" in out
    # The screen has the demo's steps only: runbot's log lines are in the file.
    assert '"level": "INFO"' not in out and '"level": "INFO"' in log.read_text()
    assert processes_matching(str(tmp_path / "data")) == []  # no app, supervisor or server


def test_demo_check_fails_with_a_reason(tmp_path: Path) -> None:
    """A step that cannot work (its port is taken) ends the demo non-zero, saying why."""
    env = _demo_env(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = _demo_check(env, tmp_path, port)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"demo failed: the server could not start on port {port}" in done.stdout
    assert "runbot's log:" in done.stdout


def test_demo_check_says_at_once_why_runbot_holds_the_pr(tmp_path: Path) -> None:
    """Run from a folder with no templates: the PR is held, and the demo says why instead of
    waiting minutes for an environment that will never come."""
    env = _demo_env(tmp_path)
    env["RUNBOT_TEMPLATES_DIR"] = str(tmp_path / "no-templates-here")
    done = _demo_check(env, tmp_path, free_port())
    assert done.returncode == 1, done.stdout + done.stderr
    assert "demo failed: PR #1 was not deployed" in done.stdout, done.stdout
    assert "templates directory" in done.stdout
    assert "timed out" not in done.stdout
