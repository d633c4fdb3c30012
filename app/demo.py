"""`runbot demo`: the whole product on one machine, with no GitHub App.

Makes a git repository from `examples/hello-app`, points runbot's local source
(`RUNBOT_LOCAL_REPO`) at it, starts the server in local mode, then plays a PR through webhooks
(opened, pushed, closed) on the real local stack: the environment URL serves the PR's own app
with each commit's text, and is gone after close. The GitHub writes the App would have made are
shown from the outbox; runbot's own log goes to a file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TextIO

import httpx
import uvicorn
from fastapi import FastAPI
from sqlmodel import col, select

from app.db.models import Environment, OutboxMessage, PullRequest
from app.github.intake import sign_body
from app.github.samples import pull_request_payload
from app.lifecycle.service import LifecycleError
from app.lifecycle.states import HoldKind, Status
from app.logging import configure_logging
from app.runtime import Runtime
from app.server import create_app, webhook_secret
from app.settings import Settings

REPO = "demo/hello"
HELLO_APP = Path(__file__).resolve().parents[1] / "examples" / "hello-app"
FIRST_TEXT = "Hello from pull request #1"
SECOND_TEXT = "Pull request #1, second push"


def say(text: str) -> None:
    print(f"\033[1;36m▶ {text}\033[0m", flush=True)


class DemoError(Exception):
    """A demo step failed; the message says which and where to look."""


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        check=False,
        env={
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_AUTHOR_NAME": "runbot demo",
            "GIT_AUTHOR_EMAIL": "demo@runbot.invalid",
            "GIT_COMMITTER_NAME": "runbot demo",
            "GIT_COMMITTER_EMAIL": "demo@runbot.invalid",
        },
    )
    if done.returncode != 0:
        raise DemoError(f"git {args[0]} failed in {repo}: {done.stderr.strip()}")
    return done.stdout.strip()


def _commit(repo: Path, message: str) -> str:
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", message)
    return _git(repo, "rev-parse", "HEAD")


@contextmanager
def hello_repository() -> Iterator[Path]:
    """A throwaway git repository holding examples/hello-app on `main`."""
    if shutil.which("git") is None:
        raise DemoError("the demo needs `git` on PATH to make its repository; install git")
    if not (HELLO_APP / "Procfile").is_file():
        raise DemoError(f"{HELLO_APP} is missing: run the demo from a runbot checkout")
    root = Path(tempfile.mkdtemp(prefix="runbot-demo-"))
    repo = root / "hello"
    try:
        shutil.copytree(HELLO_APP, repo)
        _git(repo, "init", "-q", "-b", "main")
        _commit(repo, "hello-app")
        yield repo
    finally:
        shutil.rmtree(root, ignore_errors=True)


def push_message(repo: Path, branch: str, text: str) -> str:
    """A commit on `branch` that changes message.txt to `text`; its SHA."""
    if _git(repo, "branch", "--show-current") != branch:
        _git(repo, "checkout", "-q", "-b", branch)
    (repo / "message.txt").write_text(text + "\n", encoding="utf-8")
    return _commit(repo, f"message.txt: {text}")


async def _post(
    client: httpx.AsyncClient, base: str, secret: str, event: str, payload: Mapping[str, object]
) -> None:
    body = json.dumps(payload).encode()
    response = await client.post(
        f"{base}/webhooks/github",
        content=body,
        headers={
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": sign_body(secret, body),
            "Content-Type": "application/json",
        },
    )
    if response.status_code >= 300:
        raise DemoError(f"webhook refused: {response.status_code} {response.text}")


async def _shows(client: httpx.AsyncClient, url: str, text: str) -> None:
    try:
        page = (await client.get(url)).text
    except httpx.HTTPError as exc:
        raise DemoError(f"{url} does not answer: {exc}") from exc
    if text not in page:
        raise DemoError(
            f"{url} does not show {text!r}: is RUNBOT_LOCAL_REPO's source reaching the local"
            f" stack? It answered: {page[:300]!r}"
        )


def _latest(rt: Runtime, number: int) -> Environment | None:
    with rt.db.session() as session:
        return session.exec(
            select(Environment)
            .where(Environment.repository == REPO, Environment.pr_number == number)
            .order_by(col(Environment.created_at).desc())
        ).first()


def _held(rt: Runtime, number: int) -> str | None:
    """Why runbot holds the PR back (a missing templates directory, say), if it does."""
    with rt.db.session() as session:
        pull = session.get(PullRequest, f"{REPO}#{number}")
    if pull is None or not pull.hold_kind or pull.hold_kind == HoldKind.CLOSED:
        return None
    return pull.hold_reason or pull.hold_kind


async def _until(
    rt: Runtime, number: int, check: Callable[[Environment], bool], what: str, timeout: float = 180
) -> Environment:
    deadline = time.monotonic() + timeout
    last_status = ""
    while time.monotonic() < deadline:
        env = _latest(rt, number)
        if env is None and (held := _held(rt, number)):
            raise DemoError(f"PR #{number} was not deployed: {held}")
        if env is not None:
            if env.status != last_status:
                print(f"    {env.id}: {env.status}" + (f" ({env.reason})" if env.reason else ""))
                last_status = env.status
            if env.status == Status.FAILED:
                raise DemoError(f"{env.id} failed: {env.reason}; see `runbot env logs {env.id}`")
            if check(env):
                return env
        await asyncio.sleep(0.2)
    raise DemoError(f"timed out waiting for {what}")


def _show_outbox(rt: Runtime, since: int) -> int:
    with rt.db.session() as session:
        rows = list(session.exec(select(OutboxMessage).where(col(OutboxMessage.id) > since)))
    for row in rows:
        print(f"    outbox: {row.method} {row.path}")
    last = rows[-1].id if rows else None  # a stored row always has its id
    return since if last is None else last


def _log_to(stream: TextIO, level: str) -> None:
    """runbot's INFO lines go to a file, so the screen shows only the demo's steps."""
    configure_logging(level, stream=stream)
    logging.getLogger("uvicorn.error").handlers = [logging.StreamHandler(stream)]


async def run_demo(settings: Settings, port: int = 8000, keep: bool = True) -> int:
    """The demo; 0 when every step did what it says, 1 with the reason otherwise."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log_path = (settings.data_dir / "demo.log").absolute()
    with log_path.open("a", encoding="utf-8") as log:
        _log_to(log, settings.log_level)
        say(f"runbot's own log: {log_path}")
        try:
            with hello_repository() as repo:
                # `local_repo` is RUNBOT_LOCAL_REPO: PR sources come from `git archive` of it.
                demo_settings = settings.model_copy(update={"local_repo": repo})
                app = create_app(demo_settings)
                _log_to(log, settings.log_level)  # create_app set up its own handler
                return await _serve_and_play(
                    app.state.runtime, app, demo_settings, repo, port, keep
                )
        except DemoError as exc:
            print(f"demo failed: {exc}", flush=True)
            print(f"runbot's log: {log_path}", flush=True)
            return 1


async def _serve_and_play(
    rt: Runtime, app: FastAPI, settings: Settings, repo: Path, port: int, keep: bool
) -> int:
    with socket.socket() as probe:  # uvicorn would exit the process on a taken port
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise DemoError(
                f"the server could not start on port {port}: {exc.strerror}; pass --port"
            ) from None
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()
            raise DemoError(f"the server could not start on port {port}")
        await asyncio.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    mode = "local mode: GitHub writes go to the outbox" if settings.local_mode else "App mode"
    say(f"runbot is serving on {base} ({mode}, engine: {settings.engine_name})")
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            play = _Play(rt, client, base, webhook_secret(settings))
            try:
                await play.lifecycle(repo)
                if keep:
                    await play.keep_one(repo, base)
            except DemoError:
                await play.close_open()  # a failed step leaves no environment running
                raise
            finally:
                await play.close_silos()
        return 0
    finally:
        server.should_exit = True
        await serving


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: Ctrl-C must cancel the demo, which then closes
    its PR on the still running server, rather than stop the server under it."""

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class _Play:
    """The demo's steps, against one running server."""

    def __init__(self, rt: Runtime, client: httpx.AsyncClient, base: str, secret: str) -> None:
        self.rt, self.client, self.base, self.secret = rt, client, base, secret
        self.seen = 0
        self.open: dict[int, tuple[str, str]] = {}

    async def pull_request(self, action: str, number: int, sha: str, branch: str) -> None:
        payload = pull_request_payload(action, REPO, number, sha, branch)
        await _post(self.client, self.base, self.secret, "pull_request", payload)
        if action == "closed":
            self.open.pop(number, None)
        else:
            self.open[number] = (sha, branch)

    async def close_open(self) -> None:
        """Best effort after a failure: close the PRs still open and wait for their destroy."""
        for number, (sha, branch) in list(self.open.items()):
            say(f"closing PR #{number} after the failure")
            try:
                await self.pull_request("closed", number, sha, branch)
                if _latest(self.rt, number) is not None:  # a held PR has nothing to destroy
                    await _until(self.rt, number, lambda e: e.status == Status.DESTROYED, "destroy")
            except DemoError as exc:
                print(f"    could not clean up PR #{number}: {exc}", flush=True)

    async def close_silos(self, timeout: float = 120) -> None:
        """The silos the demo used go too: their ingress is the last process left running."""
        lifecycle = self.rt.lifecycle
        names = [s.name for s in lifecycle.list_silos() if s.status != Status.DESTROYED]
        for name in names:
            say(f"destroying silo {name}: nothing is left running")
            with suppress(LifecycleError):
                lifecycle.destroy_silo(name, force=True)
        deadline = time.monotonic() + timeout
        while any(lifecycle.get_silo(n).status != Status.DESTROYED for n in names):
            if time.monotonic() > deadline:
                print("    the silos are still being destroyed: `runbot silo list`", flush=True)
                return
            await asyncio.sleep(0.2)

    def outbox(self) -> None:
        self.seen = _show_outbox(self.rt, self.seen)

    async def lifecycle(self, repo: Path) -> None:
        say(f"a git repository made from examples/hello-app: {repo}")
        first = push_message(repo, "feature/demo", FIRST_TEXT)
        say(f"PR #1 opened at {first[:7]}, which sets message.txt to {FIRST_TEXT!r}")
        await self.pull_request("opened", 1, first, "feature/demo")
        env = await _until(self.rt, 1, lambda e: e.status == Status.READY, "the environment")
        url = env.url or ""
        await _shows(self.client, url, FIRST_TEXT)
        say(f"{url} serves the PR's own app: {FIRST_TEXT!r}")
        self.outbox()

        second = push_message(repo, "feature/demo", SECOND_TEXT)
        say(f"a push to PR #1: {second[:7]} sets message.txt to {SECOND_TEXT!r}")
        await self.pull_request("synchronize", 1, second, "feature/demo")
        env = await _until(
            self.rt,
            1,
            lambda e: e.deployed_sha == second and e.status == Status.READY,
            "the update",
        )
        url = env.url or ""
        await _shows(self.client, url, SECOND_TEXT)
        say(f"{url} now serves {SECOND_TEXT!r}")
        self.outbox()

        say("PR #1 closed: the environment is destroyed")
        await self.pull_request("closed", 1, second, "feature/demo")
        await _until(self.rt, 1, lambda e: e.status == Status.DESTROYED, "the destroy")
        try:
            gone = await self.client.get(url, timeout=2)
        except httpx.ConnectError:
            say(f"{url} refuses connections: nothing is left behind")
        else:
            # Behind the silo's ingress the port stays open: it knows no such environment.
            if gone.status_code != 404 or not gone.headers.get("server", "").startswith(
                "runbot-ingress/"
            ):
                raise DemoError(f"{url} still answers after destroy ({gone.status_code})")
            say(f"{url} answers 404 from the silo's ingress: nothing is left behind")
        self.outbox()
        await asyncio.sleep(1.5)  # let the notifier post the final status
        self.outbox()

    async def keep_one(self, repo: Path, base: str) -> None:
        sha = push_message(repo, "feature/look", "Look around: this is PR #2")
        say("PR #2 opened: kept running so you can look around (Ctrl-C to stop)")
        await self.pull_request("opened", 2, sha, "feature/look")
        env = await _until(self.rt, 2, lambda e: e.status == Status.READY, "the environment")
        say(f"environment: {env.url}   dashboard: {base}/")
        try:
            await asyncio.Event().wait()
        finally:
            say("closing PR #2 before exit")
            await self.pull_request("closed", 2, sha, "feature/look")
            await _until(self.rt, 2, lambda e: e.status == Status.DESTROYED, "the destroy")
