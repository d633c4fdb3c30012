"""Run the real runbot app under uvicorn on loopback, wired to the fake GitHub."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from app.runtime import Runtime
from app.server import create_app
from app.settings import Settings
from tests.conftest import make_settings
from tests.fakegithub.server import FakeGitHub

WEBHOOK_SECRET = "test-webhook-secret-0123456789abcdef"
REPO = "octo-org/hello"
INSTALLATION = 4242


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def app_settings(
    tmp_path: Path, fake: FakeGitHub, database_url: str | None = None, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "github_app_id": fake.app_id,
        "github_private_key": fake.private_key_pem,
        "github_webhook_secret": WEBHOOK_SECRET,
        "github_api_url": fake.url,
        "github_url": fake.web_url,
        "github_app_slug": fake.slug if hasattr(fake, "slug") else "runbot-test",
        "public_url": "http://runbot.example.test",
        "worker_poll_interval": 0.2,
    }
    values.update(overrides)
    return make_settings(tmp_path, database_url, **values)


def sign_in_settings(
    tmp_path: Path, fake: FakeGitHub, database_url: str | None, port: int, **overrides: Any
) -> Settings:
    """`app_settings` with GitHub sign-in through the fake (its OAuth client), for a runbot
    served on `port` (the OAuth callback names it)."""
    return app_settings(
        tmp_path,
        fake,
        database_url,
        github_client_id=fake.client_id,
        github_client_secret=fake.client_secret,
        public_url=f"http://127.0.0.1:{port}",
        **overrides,
    )


class AppServer:
    """`runbot serve`, in a background thread of the test process."""

    def __init__(self, settings: Settings, port: int | None = None) -> None:
        """`port`: one chosen up front, e.g. so `public_url` (the OAuth callback) can name it."""
        self.settings = settings
        self.port = port or free_port()
        self.app = create_app(settings)
        self.runtime: Runtime = self.app.state.runtime
        self.server = uvicorn.Server(
            uvicorn.Config(
                self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
            )
        )
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.server.serve()

    def call(self, make: Any, timeout: float = 120) -> Any:
        """Run a coroutine on the server's own event loop (e.g. a resync tick) and wait."""
        return asyncio.run_coroutine_threadsafe(make(), self.loop).result(timeout)

    @property
    def workers(self) -> Any:
        return self.app.state.workers[0]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/webhooks/github"

    def __enter__(self) -> AppServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("runbot did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=120)


def write_policy(tmp_path: Path, text: str) -> Path:
    """An operator policy file (`RUNBOT_POLICY_FILE`) for a test."""
    path = tmp_path / "policy.yml"
    path.write_text(text)
    return path


def seed_repo(fake: FakeGitHub, config: str, repo: str = REPO) -> None:
    fake.add_repo(repo, files={"main": {".runbot.yml": config}})
    fake.add_installation(INSTALLATION, repo.split("/")[0], [repo])


def open_pull_and_wait(server: AppServer, fake: FakeGitHub, timeout: float = 120) -> None:
    """Deliver `pull_request.opened` for PR 1 and wait until its environment is ready."""
    from app.lifecycle.states import Status
    from tests.fakegithub.webhooks import deliver
    from tests.helpers import wait_for

    payload = fake.pull_request_event("opened", REPO, 1)
    payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
    deliver(server.webhook_url, "pull_request", payload, WEBHOOK_SECRET)

    def ready() -> bool:
        envs = server.runtime.lifecycle.list_environments()
        return bool(envs) and envs[0].status == Status.READY

    wait_for(ready, timeout=timeout)
