"""`runbot demo`: the whole product on one machine, with no GitHub App.

Starts the server in local mode, then plays a PR through webhooks (opened, pushed, closed), on
the real local stack: the environment URL answers with each commit, and is gone after close. The
GitHub writes the App would have made are shown from the outbox.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import Callable, Mapping

import httpx
import uvicorn
from sqlmodel import col, select

from app.db.models import Environment, OutboxMessage
from app.github.intake import sign_body
from app.github.samples import pull_request_payload
from app.lifecycle.states import Status
from app.runtime import Runtime
from app.server import create_app, webhook_secret
from app.settings import Settings

REPO = "demo/hello"


def say(text: str) -> None:
    print(f"\033[1;36m▶ {text}\033[0m", flush=True)


class DemoError(Exception):
    pass


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


def _latest(rt: Runtime, number: int) -> Environment | None:
    with rt.db.session() as session:
        return session.exec(
            select(Environment)
            .where(Environment.repository == REPO, Environment.pr_number == number)
            .order_by(col(Environment.created_at).desc())
        ).first()


async def _until(
    rt: Runtime, number: int, check: Callable[[Environment], bool], what: str, timeout: float = 180
) -> Environment:
    deadline = time.monotonic() + timeout
    last_status = ""
    while time.monotonic() < deadline:
        env = _latest(rt, number)
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


async def run_demo(settings: Settings, port: int = 8000, keep: bool = True) -> int:
    app = create_app(settings)
    rt: Runtime = app.state.runtime
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()
            raise DemoError(f"the server could not start on port {port}")
        await asyncio.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    secret = webhook_secret(settings)
    mode = "local mode: GitHub writes go to the outbox" if settings.local_mode else "App mode"
    say(f"runbot is serving on {base} ({mode}, engine: {settings.engine_name})")
    seen = 0
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            first, second = secrets.token_hex(20), secrets.token_hex(20)
            say(f"PR #1 opened on {REPO} at {first[:7]}: the silo is created on first use")
            await _post(
                client,
                base,
                secret,
                "pull_request",
                pull_request_payload("opened", REPO, 1, first, "feature/demo"),
            )
            env = await _until(rt, 1, lambda e: e.status == Status.READY, "the environment")
            page = (await client.get(env.url or "")).text
            assert first in page, "the page does not show the deployed commit"
            say(f"{env.url} answers and shows commit {first[:7]}")
            seen = _show_outbox(rt, seen)

            say(f"a push to PR #1: {second[:7]}")
            await _post(
                client,
                base,
                secret,
                "pull_request",
                pull_request_payload("synchronize", REPO, 1, second, "feature/demo"),
            )
            env = await _until(
                rt, 1, lambda e: e.deployed_sha == second and e.status == Status.READY, "the update"
            )
            page = (await client.get(env.url or "")).text
            assert second in page, "the page does not show the new commit"
            say(f"{env.url} now shows commit {second[:7]}")
            seen = _show_outbox(rt, seen)

            say("PR #1 closed: the environment is destroyed")
            url = env.url or ""
            await _post(
                client,
                base,
                secret,
                "pull_request",
                pull_request_payload("closed", REPO, 1, second, "feature/demo"),
            )
            await _until(rt, 1, lambda e: e.status == Status.DESTROYED, "the destroy")
            try:
                await client.get(url, timeout=2)
                raise DemoError(f"{url} still answers after destroy")
            except httpx.ConnectError:
                say(f"{url} refuses connections: nothing is left behind")
            seen = _show_outbox(rt, seen)
            await asyncio.sleep(1.5)  # let the notifier post the final status
            seen = _show_outbox(rt, seen)

            if not keep:
                return 0
            say("PR #2 opened: kept running so you can look around (Ctrl-C to stop)")
            await _post(
                client,
                base,
                secret,
                "pull_request",
                pull_request_payload("opened", REPO, 2, first, "feature/look"),
            )
            env = await _until(rt, 2, lambda e: e.status == Status.READY, "the environment")
            say(f"environment: {env.url}   dashboard: {base}/")
            try:
                await asyncio.Event().wait()
            finally:
                say("closing PR #2 before exit")
                await _post(
                    client,
                    base,
                    secret,
                    "pull_request",
                    pull_request_payload("closed", REPO, 2, first, "feature/look"),
                )
                await _until(rt, 2, lambda e: e.status == Status.DESTROYED, "the destroy")
        return 0
    except DemoError as exc:
        print(f"demo failed: {exc}", flush=True)
        return 1
    finally:
        server.should_exit = True
        await serving
