"""The dashboard in a real browser: Debian Chromium driven by Playwright, against `runbot serve`.

`runbot serve` runs as a separate process, wired to the fake GitHub (App, webhooks, OAuth) and
the real local stack on the embedded engine. The stack gets a test-only step that prints a line a
second, so the browser can watch the log tail grow while the engine works. Screenshots go to
test-artifacts/browser/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.db.models import Silo
from app.db.session import Database
from tests.apphost import INSTALLATION, REPO, WEBHOOK_SECRET, free_port
from tests.conftest import ROOT, TEMPLATES
from tests.fakegithub.server import FakeGitHub
from tests.fakegithub.webhooks import deliver
from tests.helpers import fetch, refuses, wait_for

playwright_api = pytest.importorskip("playwright.sync_api")
if not Path("/usr/bin/chromium").exists():
    pytest.skip(
        "Debian Chromium is not installed (apt-get install chromium; .ci/run does it)",
        allow_module_level=True,
    )

pytest_plugins = ["tests.fakegithub.pytest_plugin"]
pytestmark = [pytest.mark.browser, pytest.mark.engine]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
SLOW_STEP = ROOT / "tests" / "fixtures" / "stacks-slow" / "instance" / "slow.tf"
HEAD = "d" * 40


class Serve:
    """`runbot serve` in its own process, configured through RUNBOT_* like an operator would."""

    def __init__(self, env: dict[str, str], cwd: Path, port: int) -> None:
        self.env, self.cwd, self.port = env, cwd, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, timeout: float = 120) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def start(self) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        log = (ARTIFACTS / "serve.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)],
            env=self.env,
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, "runbot serve exited; see test-artifacts/browser"
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "runbot serve did not come up"
            time.sleep(0.1)

    def stop(self) -> bool:
        """Ctrl-C; True when the server shut down by itself."""
        if self.proc is None or self.proc.poll() is not None:
            return True
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return False
        return True


@pytest.fixture
def serve(tmp_path: Path, fake_github: FakeGitHub, port_base: int) -> Iterator[Serve]:
    fake = fake_github
    fake.add_repo(REPO, files={"main": {".runbot.yml": "stack: local\nsilo: e2e\n"}})
    fake.add_installation(INSTALLATION, "octo-org", [REPO])
    fake.set_permission(REPO, "alice", "write")
    fake.oauth_login = "alice"
    fake.add_pull(REPO, 1, HEAD, "feature/dashboard", author="alice")

    catalog = tmp_path / "catalog"
    shutil.copytree(TEMPLATES / "local", catalog / "local")
    shutil.copy(SLOW_STEP, catalog / "local" / "instance" / "slow.tf")

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOT_")}
    env.update(
        RUNBOT_GITHUB_APP_ID=str(fake.app_id),
        RUNBOT_GITHUB_PRIVATE_KEY=fake.private_key_pem,
        RUNBOT_GITHUB_WEBHOOK_SECRET=WEBHOOK_SECRET,
        RUNBOT_GITHUB_API_URL=fake.url,
        RUNBOT_GITHUB_URL=fake.web_url,
        RUNBOT_GITHUB_APP_SLUG=fake.slug,
        RUNBOT_GITHUB_CLIENT_ID=fake.client_id,
        RUNBOT_GITHUB_CLIENT_SECRET=fake.client_secret,
        RUNBOT_PUBLIC_URL=f"http://127.0.0.1:{port}",
        RUNBOT_DATA_DIR=str(tmp_path / "data"),
        RUNBOT_TEMPLATES_DIR=str(catalog),
        RUNBOT_ENGINE="embedded",
        RUNBOT_WORKER_POLL_INTERVAL="0.2",
        RUNBOT_LEASE_SECONDS="10",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    server = Serve(env, tmp_path, port)
    server.cli(
        "silo", "create", "e2e", "--stack", "local", "--var", f"port_base={port_base}", "--no-wait"
    )
    server.start()
    try:
        yield server
    finally:
        graceful = server.stop()
        # Whatever happened, leave no environment server running on this machine.
        server.cli("silo", "destroy", "e2e", "--force", timeout=180)
    assert graceful, "runbot serve ignored Ctrl-C after running the engine"


def shot(page: object, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def header_status(page: object) -> str:
    return str(page.locator("h1 .badge").first.get_attribute("data-status"))  # type: ignore[attr-defined]


def test_sign_in_watch_a_run_extend_and_destroy(serve: Serve, fake_github: FakeGitHub) -> None:
    payload = fake_github.pull_request_event("opened", REPO, 1)
    payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
    assert (
        deliver(f"{serve.url}/webhooks/github", "pull_request", payload, WEBHOOK_SECRET).status_code
        == 202
    )

    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1366, "height": 860})
        page = context.new_page()
        page.set_default_timeout(20_000)
        # Every page runs under runbot's Content-Security-Policy: Chromium reports anything the
        # policy blocks (an inline script or style, a foreign source) on the console.
        blocked: list[str] = []
        page.on(
            "console",
            lambda message: (
                blocked.append(message.text) if "Content Security Policy" in message.text else None
            ),
        )
        try:
            # Sign in through the fake GitHub's OAuth endpoints.
            first = page.goto(serve.url)
            assert first is not None
            assert "default-src 'self'" in first.headers["content-security-policy"]
            assert "/login" in page.url
            shot(page, "01-sign-in")
            page.click("#sign-in")
            page.wait_for_url(f"{serve.url}/")
            assert page.locator(".who .login").inner_text().startswith("alice")

            # The opened PR's environment appears in the list.
            deadline = time.monotonic() + 60
            while page.locator("tr[data-env]").count() == 0:
                assert time.monotonic() < deadline, "the PR's environment never appeared"
                time.sleep(0.5)
                page.reload()
            row = page.locator("tr[data-env]").first
            env_id = str(row.get_attribute("data-env"))
            assert REPO in row.inner_text() and "#1" in row.inner_text()
            shot(page, "02-environments")

            # Its detail page tails the run's log while the engine works.
            page.click(f"a.env-link[href='/environments/{env_id}']")
            page.wait_for_url(f"**/environments/{env_id}")
            log = page.locator("#live-log")
            first_seen = _wait_for_log(page, "slow step 2 of 8", timeout=90)
            page.evaluate("window.__sameDocument = true")  # set once; a reload would clear it
            # Wait for a step after the last one this page has shown: a slow machine may open
            # it several steps in, and waiting for a fixed step then proved nothing.
            shown = max(int(n) for n in re.findall(r"slow step (\d) of 8", first_seen))
            assert shown < 8, "the page opened after the run ended: no tail left to watch"
            _wait_for_log(page, f"slow step {shown + 1} of 8", timeout=20)
            grown = log.inner_text()
            assert page.evaluate("window.__sameDocument === true"), "log grew by reload, not tail"
            assert len(grown) > len(first_seen) and grown.startswith(first_seen[:40])
            assert page.locator("#tailing").count() == 1
            shot(page, "03-live-log")

            # The page follows the environment to ready, with its URL.
            wait_for(lambda: header_status(page) == "ready", timeout=60, interval=0.3)
            url = page.locator("#env-url").inner_text()
            assert HEAD in fetch(url).text
            assert "slow step 8 of 8" in page.locator("#live-log").inner_text()
            shot(page, "04-ready")

            # Extend: the expiry moves a day later, shown relative with the absolute on hover.
            expiry = page.locator("#expiry time").first
            before = datetime.fromisoformat(str(expiry.get_attribute("datetime")))
            page.select_option("select[name=by]", "1d")
            page.click("#extend")
            page.wait_for_selector(".flash.notice")
            assert "extend: expires in" in page.locator(".flash.notice").inner_text()
            expiry = page.locator("#expiry time").first
            after = datetime.fromisoformat(str(expiry.get_attribute("datetime")))
            assert after - before > timedelta(hours=23)
            assert expiry.inner_text().startswith("in ")
            assert "UTC" in str(expiry.get_attribute("title"))

            # No sensitive silo output in any page or API answer the browser can reach.
            secret = _admin_token(serve)
            for path in ("/silos", "/silos/e2e", f"/environments/{env_id}", "/usage", "/"):
                page.goto(serve.url + path)
                assert secret not in page.content(), path
            page.goto(f"{serve.url}/silos")
            shot(page, "05-silos")
            bar = page.locator(".capacity .bar rect").first  # drawn without an inline style
            assert 0 <= int(str(bar.get_attribute("width"))) <= 100
            for path in (
                "/api/silos",
                "/api/silos/e2e",
                "/api/silos/e2e/runs",
                f"/api/environments/{env_id}",
                "/api/environments",
                "/api/usage",
            ):
                assert secret not in context.request.get(serve.url + path).text(), path
            for run in context.request.get(f"{serve.url}/api/silos/e2e/runs").json()["items"]:
                text = context.request.get(f"{serve.url}/api/runs/{run['id']}/log").text()
                assert secret not in text
            page.goto(f"{serve.url}/usage")
            shot(page, "06-usage")

            # Destroy: confirm, watch it go, and the URL is dead afterwards.
            page.goto(f"{serve.url}/environments/{env_id}")
            page.once("dialog", lambda dialog: dialog.accept())
            page.click("#destroy")
            page.wait_for_selector(".flash.notice")
            wait_for(lambda: header_status(page) == "destroyed", timeout=60, interval=0.3)
            assert refuses(url)
            shot(page, "07-destroyed")

            # The worker's runs were counted once each, by operation, stack and result.
            metrics = {
                (sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(httpx.get(f"{serve.url}/metrics").text)
                for sample in family.samples
            }
            run = (("operation", "apply"), ("result", "succeeded"), ("stack", "local"))
            assert metrics[("runbot_runs_total", run)] == 2  # the silo and the environment
            gone = (("operation", "destroy"), ("result", "succeeded"), ("stack", "local"))
            assert metrics[("runbot_runs_total", gone)] == 1
            hook = (("event", "pull_request"), ("outcome", "accepted"))
            assert metrics[("runbot_deliveries_total", hook)] == 1
            assert metrics[("runbot_environments", (("status", "ready"),))] == 0

            # Off a terminal, runbot serve logs JSON lines carrying the ids they are about.
            lines = (ARTIFACTS / "serve.log").read_text().splitlines()
            assert lines[0].startswith("runbot serving on")  # the banner, on stdout
            records = [json.loads(line) for line in lines[1:] if line.strip()]
            assert any(r.get("delivery_id") for r in records)
            runs = [r for r in records if r.get("run_id") and r.get("environment_id") == env_id]
            assert any(r["message"].endswith("apply succeeded") for r in runs), runs
            assert any(f"GET /environments/{env_id}" in r["message"] for r in records)
            assert blocked == [], f"the CSP blocked part of a page: {blocked}"
        finally:
            shot(page, "99-last")
            browser.close()


def _wait_for_log(page: object, text: str, timeout: float) -> str:
    """The live log's text once it contains `text` (the page may reload as the status moves)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            log = page.locator("#live-log")  # type: ignore[attr-defined]
            if log.count():
                content = str(log.inner_text())
                if text in content:
                    return content
        except playwright_api.Error:
            pass  # navigated mid-read
        assert time.monotonic() < deadline, f"the log never showed {text!r}"
        time.sleep(0.2)


def _admin_token(serve: Serve) -> str:
    db = Database(f"sqlite:///{Path(serve.env['RUNBOT_DATA_DIR']) / 'runbot.db'}")
    try:
        with db.session() as session:
            silo = session.get(Silo, "e2e")
            assert silo is not None and silo.outputs["admin_token"]["sensitive"]
            value = str(silo.outputs["admin_token"]["value"])
    finally:
        db.dispose()
    assert len(value) >= 32
    return value
