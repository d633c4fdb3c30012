"""`runbot setup`: the GitHub App manifest flow, driven over real HTTP against the fake GitHub.

No browser: the test plays the browser's part. It GETs the setup page, reads its form, POSTs the
manifest to the fake's "new App" page and follows the redirect back to the setup server, whose
callback exchanges the code at POST /app-manifests/{code}/conversions.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from typer.testing import CliRunner

from app.cli.main import cli
from app.doctor.checks import run_checks
from app.doctor.report import State
from app.github.intake import HANDLED_EVENTS
from app.settings import load_settings
from app.setup import (
    AUTOMATIC_EVENTS,
    EVENTS,
    PERMISSIONS,
    ManifestFlow,
    SetupError,
    build_manifest,
    read_env_keys,
    write_env,
)
from tests.fakegithub.server import FakeGitHub

pytest_plugins = ["tests.fakegithub.pytest_plugin"]

PUBLIC_URL = "https://runbot.example.com"


class _Form(HTMLParser):
    """The one form of the setup page: its action and hidden fields."""

    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.method = ""
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.action, self.method = values["action"], values["method"]
        elif tag == "input" and values.get("type") == "hidden":
            self.fields[values["name"]] = values["value"]


def play_browser(local_url: str) -> tuple[httpx.Response, _Form]:
    """Open the setup page, submit its form, follow GitHub's redirect back to the callback."""
    page = httpx.get(local_url, timeout=10)
    assert page.status_code == 200
    form = _Form()
    form.feed(page.text)
    assert form.method == "post"
    answer = httpx.post(form.action, data=form.fields, follow_redirects=True, timeout=30)
    return answer, form


def test_manifest_asks_for_the_minimal_permissions_and_events() -> None:
    manifest = build_manifest("runbot-acme", PUBLIC_URL + "/", "http://127.0.0.1:5555/callback")
    assert manifest["url"] == PUBLIC_URL
    assert manifest["hook_attributes"] == {"url": f"{PUBLIC_URL}/webhooks/github", "active": True}
    assert manifest["redirect_url"] == "http://127.0.0.1:5555/callback"
    assert manifest["default_permissions"] == {
        "contents": "read",
        "metadata": "read",
        "pull_requests": "write",
        "issues": "write",
        "deployments": "write",
        "checks": "write",
        "statuses": "read",
    }
    assert manifest["default_events"] == ["pull_request", "issue_comment", "check_suite", "status"]
    # GitHub rejects installation events in default_events; it sends them to every App anyway.
    assert not set(AUTOMATIC_EVENTS) & set(manifest["default_events"])
    # ...and runbot handles every event it subscribes to or is sent.
    assert set(EVENTS) | set(AUTOMATIC_EVENTS) <= HANDLED_EVENTS
    assert manifest["public"] is False


def test_write_env_merges_keeps_other_lines_and_is_private(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text(
        "# my settings\n"
        "RUNBOT_ENGINE=embedded\n"
        "RUNBOT_GITHUB_APP_ID=1\n"
        'RUNBOT_GITHUB_PRIVATE_KEY="-----BEGIN OLD-----\n'
        "abc\n"
        '-----END OLD-----"\n'
        "export OTHER='x y'\n"
    )
    env.chmod(0o644)
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    write_env(
        env,
        {
            "RUNBOT_GITHUB_APP_ID": "42",
            "RUNBOT_GITHUB_PRIVATE_KEY": pem.decode(),
            "RUNBOT_GITHUB_WEBHOOK_SECRET": "s3cr3t with spaces & #hash",
            "RUNBOT_GITHUB_PRIVATE_KEY_PATH": None,
        },
        header="written by a test",
    )
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    text = env.read_text()
    assert text.startswith("# my settings\nRUNBOT_ENGINE=embedded\nRUNBOT_GITHUB_APP_ID=42\n")
    assert "OLD" not in text and "export OTHER='x y'" in text
    assert text.count("RUNBOT_GITHUB_APP_ID") == 1
    assert read_env_keys(env) == {
        "RUNBOT_ENGINE",
        "RUNBOT_GITHUB_APP_ID",
        "RUNBOT_GITHUB_PRIVATE_KEY",
        "OTHER",
        "RUNBOT_GITHUB_WEBHOOK_SECRET",
    }
    settings = load_settings(_env_file=env)
    assert settings.github_app_id == 42
    assert settings.private_key is not None
    assert settings.private_key.strip() == pem.decode().strip()
    assert settings.github_webhook_secret == "s3cr3t with spaces & #hash"
    assert settings.engine == "embedded"
    assert not list(tmp_path.glob(".env.*")), "no temporary file is left behind"


def test_runbot_setup_end_to_end(fake_github: FakeGitHub, tmp_path: Path) -> None:
    """The real command in its own process: page, GitHub, callback, exchange, .env, link."""
    env_file = tmp_path / "conf" / ".env"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.cli",
            "setup",
            "--github-url",
            fake_github.web_url,
            "--github-api-url",
            fake_github.url,
            "--public-url",
            PUBLIC_URL,
            "--org",
            "acme",
            "--port",
            "0",
            "--no-browser",
            "--env-file",
            str(env_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=tmp_path,
    )
    try:
        first = proc.stdout.readline() if proc.stdout else ""
        assert first.startswith("Open http://127.0.0.1:"), first + (
            proc.stderr.read() if proc.stderr else ""
        )
        local_url = first.split()[1]
        answer, form = play_browser(local_url)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    install_url = f"{fake_github.web_url}/apps/{fake_github.slug}/installations/new"

    # The browser landed on the callback page, which links to the installation.
    assert answer.status_code == 200
    assert urlsplit(str(answer.url)).path == "/callback"
    assert f'href="{install_url}"' in answer.text

    # GitHub got the manifest on the organization's page, with the page's state.
    posted = urlsplit(form.action)
    assert posted.path == "/organizations/acme/settings/apps/new"
    [recorded] = fake_github.manifests
    assert recorded["org"] == "acme"
    assert recorded["state"] == parse_qs(posted.query)["state"][0]
    manifest = recorded["manifest"]
    assert manifest == json.loads(form.fields["manifest"])
    assert manifest["name"] == "runbot-acme"
    assert manifest["hook_attributes"]["url"] == f"{PUBLIC_URL}/webhooks/github"
    assert manifest["redirect_url"] == local_url.rstrip("/") + "/callback"
    assert manifest["default_permissions"] == {k: v for k, (v, _) in PERMISSIONS.items()}

    # The code was exchanged exactly once.
    assert len(fake_github.requests_for("POST", "/app-manifests/*/conversions")) == 1

    # The credentials are in the env file, readable by nobody else.
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    settings = load_settings(_env_file=env_file)
    assert settings.github_app_id == fake_github.app_id
    assert settings.github_app_slug == fake_github.slug
    assert settings.private_key is not None
    assert settings.private_key.strip() == fake_github.private_key_pem.strip()
    assert settings.github_webhook_secret == fake_github.webhook_secret
    assert settings.github_client_id == fake_github.client_id
    assert settings.github_client_secret == fake_github.client_secret
    assert settings.public_url == PUBLIC_URL
    assert settings.github_url == fake_github.web_url
    assert settings.github_api_url == fake_github.url
    assert not settings.local_mode

    # The terminal says where to install it.
    assert f"Install it on your repositories: {install_url}" in out
    assert fake_github.private_key_pem.splitlines()[1] not in out + err, "no secret is printed"

    # What setup wrote is enough for runbot to authenticate as the App.
    rows = {row.check: row for row in run_checks(settings)}
    assert rows["github app"].state is State.OK, rows["github app"]
    assert rows["app permissions"].state is State.OK
    assert rows["app events"].state is State.OK
    assert rows["webhook secret"].state is State.OK


def test_setup_refuses_to_replace_a_configured_app(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    original = "RUNBOT_GITHUB_APP_ID=7\nRUNBOT_GITHUB_WEBHOOK_SECRET=keep-me\n"
    env.write_text(original)
    result = CliRunner().invoke(
        cli, ["setup", "--no-browser", "--env-file", str(env), "--timeout", "1"]
    )
    assert result.exit_code == 1
    assert "already configures a GitHub App" in result.output and "--force" in result.output
    assert env.read_text() == original


def test_callback_checks_state_and_works_once(fake_github: FakeGitHub, tmp_path: Path) -> None:
    env = tmp_path / ".env"
    flow = ManifestFlow(
        github_url=fake_github.web_url,
        api_url=fake_github.url,
        public_url=PUBLIC_URL,
        env_file=env,
        name="runbot",
    ).start()
    try:
        fake_github.add_manifest_code("c0de")
        forged = httpx.get(f"{flow.redirect_url}?code=c0de&state=not-ours", timeout=10)
        assert forged.status_code == 400
        assert not flow.finished.is_set() and not env.exists()
        good = httpx.get(f"{flow.redirect_url}?code=c0de&state={flow.state}", timeout=30)
        assert good.status_code == 200
        result = flow.wait(1)
        assert (
            result.install_url == f"{fake_github.web_url}/apps/{fake_github.slug}/installations/new"
        )
        again = httpx.get(f"{flow.redirect_url}?code=c0de&state={flow.state}", timeout=10)
        assert again.status_code == 410
        assert len(fake_github.requests_for("POST", "/app-manifests/*/conversions")) == 1
        # The page posts to the user's own "new App" page when no org is given.
        page = httpx.get(flow.local_url, timeout=10)
        form = _Form()
        form.feed(page.text)
        assert urlsplit(form.action).path == "/settings/apps/new"
    finally:
        flow.close()


def test_a_failed_exchange_is_reported_and_writes_nothing(
    fake_github: FakeGitHub, tmp_path: Path
) -> None:
    env = tmp_path / ".env"
    flow = ManifestFlow(
        github_url=fake_github.web_url,
        api_url=fake_github.url,
        public_url=PUBLIC_URL,
        env_file=env,
        name="runbot",
    ).start()
    try:
        answer = httpx.get(f"{flow.redirect_url}?code=expired&state={flow.state}", timeout=30)
        assert answer.status_code == 502
        with pytest.raises(SetupError, match="settings/apps"):
            flow.wait(1)
        assert not env.exists()
    finally:
        flow.close()


def test_manifest_callback_is_the_dashboards_sign_in_callback(tmp_path: Path) -> None:
    """The App must allow the redirect URI the dashboard's "Sign in with GitHub" sends."""
    import asyncio

    from app.web.auth import Authenticator

    settings = load_settings(data_dir=tmp_path / "data", public_url=PUBLIC_URL)
    auth = Authenticator(settings, lambda: None)
    try:
        manifest = build_manifest("runbot", PUBLIC_URL, "http://127.0.0.1:1/callback")
        assert manifest["callback_urls"] == [auth.redirect_uri]
    finally:
        asyncio.run(auth.aclose())
