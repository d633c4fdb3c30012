"""The `runbot serve` process: the web (intake, health, API, dashboard) and the workers.

`create_app` composes them: the runtime, the webhook intake (served before FastAPI's own
stack, on the hot path), the web routes, and, unless asked not to, the background workers,
started and stopped with the app's lifespan.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from app.engine.runner import EngineError
from app.github.appgateway import GitHubAppGateway
from app.github.gateway import Gateway
from app.github.intake import WebhookIntake
from app.logging import configure_logging
from app.runtime import build_runtime, require_sandbox
from app.settings import Settings, SettingsError
from app.web.routes import WebHooks, mount_web
from app.workers import Workers, acquire_sqlite_lock


def webhook_secret(settings: Settings) -> str:
    """The configured secret; in local mode a generated one kept in the data dir."""
    if settings.github_webhook_secret:
        return settings.github_webhook_secret
    if not settings.local_mode:
        raise SettingsError("RUNBOT_GITHUB_WEBHOOK_SECRET is required when App credentials are set")
    path = settings.data_dir / "webhook-secret"
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip()


class RunbotApp(FastAPI):
    """FastAPI, with webhook deliveries handed to the intake before FastAPI's own stack."""

    intake: WebhookIntake | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        intake = self.intake
        if intake is not None and intake.matches(scope):
            await intake(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings, *, background: bool = True) -> FastAPI:
    configure_logging(settings.log_level)
    lock = acquire_sqlite_lock(settings) if background else None
    rt = build_runtime(settings)
    if background:
        require_sandbox(rt)
    secret = webhook_secret(settings)
    #: The running workers, once the lifespan started them (never, with background=False).
    running: list[Workers] = []
    own: list[Gateway] = []

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if background:
            workers = Workers.build(rt)
            running.append(workers)
            workers.start()
        try:
            yield
        finally:
            for workers in running:
                await workers.shutdown()
            for gateway in own:
                await gateway.aclose()
            rt.db.dispose()
            if lock is not None:
                lock.close()

    # The OpenAPI description is served at /docs (Swagger UI) only: one page to guard.
    app = RunbotApp(title="runbot", version="0.1.0", lifespan=lifespan, redoc_url=None)
    app.state.runtime = rt
    app.state.workers = running

    def gateway() -> Gateway | None:
        """The workers' gateway; a web-only app makes its own for permission checks."""
        if running:
            return running[0].gateway
        if settings.local_mode:
            return None
        if not own:
            own.append(GitHubAppGateway(settings))
        return own[0]

    def wake(delivery_id: str) -> None:
        for workers in running:
            workers.intent.hint(delivery_id)

    def wake_workers() -> None:
        for workers in running:
            workers.wake()

    def worker_id() -> str | None:
        return running[0].reconciler.worker_id if running else None

    hooks = WebHooks(gateway=gateway, wake=wake_workers, worker_id=worker_id)

    def count_delivery(event: str, result: str) -> None:
        web.metrics.count_delivery(event, result)

    # Deliveries are the hot path: the server hands them to the intake directly (RunbotApp);
    # the route is also the first FastAPI matches, for the OpenAPI description and the docs.
    app.intake = WebhookIntake(
        rt.db,
        lambda: secret,
        wake,
        count=count_delivery,
        max_body_bytes=settings.webhook_max_body_bytes,
        read_timeout=settings.webhook_read_timeout,
    )
    app.include_router(app.intake.router())
    web = mount_web(app, rt, hooks)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            pending = rt.db.pending_migrations()
            checks["database"] = "ok" if not pending else f"migrations pending: {pending}"
        except Exception as exc:
            checks["database"] = f"unreachable: {type(exc).__name__}"
        try:
            rt.runner.argv_prefix()
            checks["engine"] = "ok"
        except EngineError as exc:
            checks["engine"] = str(exc)
        ready = all(value == "ok" for value in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    return app
