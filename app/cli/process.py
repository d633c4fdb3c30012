"""`runbot serve`, `worker`, `receive` and `demo`: the long-running processes."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Annotated

import typer

from app.cli.common import EXPECTED_ERRORS, fail
from app.runtime import build_runtime, require_sandbox
from app.settings import load_settings


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8000,
) -> None:
    """Run the App: webhooks, dashboard, API, workers and scheduler in one process."""
    import uvicorn

    from app.server import create_app

    try:
        settings = load_settings()
    except EXPECTED_ERRORS as exc:
        fail(str(exc))
    open_local = settings.local_mode and not (
        settings.github_client_id and settings.github_client_secret
    )
    if open_local and not loopback_interface(host):
        fail(
            f"refusing --host {host}: in local mode without GitHub sign-in the dashboard gives"
            " operator rights to whoever reaches it, so runbot listens on loopback only. Use"
            " --host 127.0.0.1 (the default), or set RUNBOT_GITHUB_CLIENT_ID and"
            " RUNBOT_GITHUB_CLIENT_SECRET to require sign-in"
        )
    try:
        app = create_app(settings)
    except EXPECTED_ERRORS as exc:
        fail(str(exc))
    mode = "local mode (GitHub writes go to the outbox)" if settings.local_mode else "GitHub App"
    typer.echo(f"runbot serving on http://{host}:{port} in {mode}; engine {settings.engine_name}")
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info",
        log_config=None,  # uvicorn's records go through runbot's handler: JSON off a terminal
        timeout_graceful_shutdown=int(settings.engine_cancel_grace + 15),
    )


def loopback_interface(host: str) -> bool:
    """An address only this machine can reach: `localhost`, 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def worker() -> None:
    """Run extra reconcile workers and the scheduler (PostgreSQL only), without the web."""
    from app.workers import Workers, acquire_sqlite_lock

    try:
        settings = load_settings()
        if not settings.is_postgres:
            fail(
                "`runbot worker` needs PostgreSQL (RUNBOT_DATABASE_URL): SQLite supports exactly"
                " one runbot process, which `runbot serve` already is"
            )
        acquire_sqlite_lock(settings)
        rt = build_runtime(settings)
        require_sandbox(rt)
    except EXPECTED_ERRORS as exc:
        fail(str(exc))

    async def main_loop() -> None:
        import signal

        workers = Workers.build(rt)
        workers.start()
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopped.set)
        typer.echo(f"runbot worker {workers.reconciler.worker_id} running")
        await stopped.wait()
        await workers.shutdown()

    asyncio.run(main_loop())


def receive(
    event: Annotated[str, typer.Option("--event", "-e", help="X-GitHub-Event, e.g. pull_request")],
    payload: Annotated[typer.FileBinaryRead, typer.Option("--payload", "-p", help="JSON file")],
    url: Annotated[str, typer.Option(help="Webhook URL")] = "http://127.0.0.1:8000/webhooks/github",
    delivery: Annotated[
        str | None, typer.Option(help="X-GitHub-Delivery (default: random)")
    ] = None,
) -> None:
    """Sign a payload file with the webhook secret and post it to a running runbot."""
    import uuid

    import httpx

    from app.github.intake import sign_body
    from app.server import webhook_secret

    body = payload.read()
    try:
        secret = webhook_secret(load_settings())
    except EXPECTED_ERRORS as exc:
        fail(str(exc))
    headers = {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": sign_body(secret, body),
        "Content-Type": "application/json",
        "User-Agent": "runbot-receive",
    }
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        fail(f"cannot reach {url}: {exc}. Is `runbot serve` running?")
    typer.echo(f"{response.status_code} {response.text}")
    if response.status_code >= 400:
        raise typer.Exit(1)


def demo(
    port: Annotated[int, typer.Option(help="Port for the demo server")] = 8000,
    keep: Annotated[bool, typer.Option("--keep/--exit", help="Keep serving afterwards")] = True,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Non-interactive: play the PR once, exit non-zero if a step fails"
        ),
    ] = False,
) -> None:
    """Play a PR through its whole lifecycle on the local stack, then keep serving."""
    from app.demo import run_demo

    try:
        settings = load_settings()
    except EXPECTED_ERRORS as exc:
        fail(str(exc))
    try:
        code = asyncio.run(run_demo(settings, port=port, keep=keep and not check))
    except EXPECTED_ERRORS as exc:
        fail(str(exc))
    raise typer.Exit(code)
