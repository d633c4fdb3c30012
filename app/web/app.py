"""The runbot process: web (intake, health, API, dashboard) plus the background loops.

`runbot serve` runs everything in one process; `runbot worker` runs the loops without the web.
SQLite allows exactly one runbot process (enforced with a lock file); PostgreSQL allows many.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import IO, Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from app.commands.handlers import CommandHandler
from app.db.models import Environment
from app.engine.runner import EngineError
from app.github.appgateway import GitHubAppGateway
from app.github.gateway import Gateway
from app.github.intake import WebhookIntake
from app.github.intent import IntentProcessor
from app.github.notify import Notifier
from app.github.outbox import OutboxGateway
from app.lifecycle.reconcile import Reconciler, default_worker_id
from app.lifecycle.states import Status
from app.logging import configure_logging
from app.runtime import Runtime, build_runtime
from app.schedule.ticks import register_ticks
from app.settings import Settings, SettingsError
from app.web.routes import mount_web

log = logging.getLogger("runbot")


class SingleProcessError(SettingsError):
    pass


def acquire_sqlite_lock(settings: Settings) -> IO[str] | None:
    """SQLite has no row locks across processes: refuse a second runbot process on it."""
    if settings.is_postgres:
        return None
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    handle = (settings.data_dir / "runbot.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SingleProcessError(
            f"another runbot process already uses the SQLite database in {settings.data_dir}."
            " SQLite supports one process; set RUNBOT_DATABASE_URL to PostgreSQL to run several"
            " workers or replicas."
        ) from None
    return handle


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


def make_gateway(settings: Settings, rt: Runtime) -> Gateway:
    if settings.local_mode:
        config = settings.local_config.read_text() if settings.local_config else None
        return OutboxGateway(rt.db, config)
    return GitHubAppGateway(settings)


@dataclass
class Loops:
    """The background machinery of one runbot process."""

    rt: Runtime
    gateway: Gateway
    reconciler: Reconciler
    intent: IntentProcessor
    notifier: Notifier
    scheduler: AsyncIOScheduler
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _notify_after_pass: bool = False

    @classmethod
    def build(cls, rt: Runtime, gateway: Gateway | None = None) -> Loops:
        settings = rt.settings
        worker_id = default_worker_id()
        gateway = gateway or make_gateway(settings, rt)
        intent = IntentProcessor(
            rt.db,
            rt.lifecycle,
            gateway,
            settings.data_dir,
            worker_id=worker_id,
            lease_seconds=settings.lease_seconds,
        )
        notifier = Notifier(
            rt.db,
            gateway,
            public_url=settings.public_url,
            app_slug=settings.github_app_slug,
            worker_id=worker_id,
            lease_seconds=settings.lease_seconds,
        )
        loops = cls(
            rt=rt,
            gateway=gateway,
            reconciler=rt.reconciler(worker_id=worker_id),
            intent=intent,
            notifier=notifier,
            scheduler=AsyncIOScheduler(timezone="UTC"),
        )
        loops.reconciler.listeners.append(loops._environment_changed)
        loops.reconciler.after_pass = loops._reconciler_passed
        intent.on_change = loops._intent_changed
        intent.command_handler = CommandHandler.for_loops(loops)
        return loops

    def _intent_changed(self) -> None:
        """A PR's desired state changed: the reconciler claims first, the notifier after.

        Both loops share the event loop. Woken together, the notifier's pass (a claim, a
        render, usually a hold while the state is in flux) ran before the new run's engine
        started: several milliseconds on the critical path of every create. The reconciler
        wakes the notifier once its claiming pass has started what it could.
        """
        self._notify_after_pass = True
        self.reconciler.wakeup.set()

    def _reconciler_passed(self) -> None:
        if self._notify_after_pass:
            self._notify_after_pass = False
            self.notifier.wakeup.set()

    def _environment_changed(self, kind: str, target_id: str, status: str) -> None:
        self.notifier.wakeup.set()
        if kind != "environment" or status != Status.DESTROYED:
            return
        with self.rt.db.session() as session:
            env = session.get(Environment, target_id)
        if env is not None and env.status == Status.DESTROYED:
            task = asyncio.get_running_loop().create_task(
                self.intent.reconcile_held(env.repository)
            )
            self.tasks.append(task)

    async def resync(self) -> None:
        try:
            await self.intent.resync()
        except Exception:
            log.exception("resync failed")

    def start(self) -> None:
        poll = self.rt.settings.worker_poll_interval
        self.tasks = [
            asyncio.create_task(
                self.reconciler.run(self.stop, poll_interval=poll), name="reconcile"
            ),
            asyncio.create_task(self.intent.run(self.stop, poll_interval=poll), name="intent"),
            asyncio.create_task(self.notifier.run(self.stop, poll_interval=poll), name="notify"),
        ]
        register_ticks(self)  # TTL reaper, expiry warnings, resync, stale-lease recovery
        self.scheduler.start()
        if not self.gateway.local:
            self.tasks.append(asyncio.create_task(self.resync()))  # heal what happened while down

    async def shutdown(self) -> None:
        """Stop claiming; let engine runs get SIGINT and release their locks."""
        self.stop.set()
        with contextlib.suppress(Exception):
            self.scheduler.shutdown(wait=False)
        for task in self.tasks:
            task.cancel()
        # Engine runs get SIGINT and their grace period; nothing else may hold shutdown hostage.
        grace = self.rt.settings.engine_cancel_grace + 15
        _, stuck = await asyncio.wait(self.tasks, timeout=grace) if self.tasks else ((), ())
        for task in stuck:
            log.error(
                "shutdown: task %s did not stop within %.0fs: %s",
                task.get_name(),
                grace,
                "".join(str(frame) for frame in task.get_stack(limit=3)),
            )
        with contextlib.suppress(Exception):
            await self.gateway.aclose()


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
    secret = webhook_secret(settings)
    holder: dict[str, Loops] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if background:
            loops = Loops.build(rt)
            holder["loops"] = loops
            loops.start()
        try:
            yield
        finally:
            if "loops" in holder:
                await holder["loops"].shutdown()
            rt.db.dispose()
            if lock is not None:
                lock.close()

    app = RunbotApp(title="runbot", version="0.1.0", lifespan=lifespan)
    app.state.runtime = rt
    app.state.loops = holder

    def wake(delivery_id: str) -> None:
        if "loops" in holder:
            holder["loops"].intent.hint(delivery_id)

    def count_delivery(event: str, result: str) -> None:
        web.metrics.count_delivery(event, result)

    # Deliveries are the hot path: the server hands them to the intake directly (RunbotApp);
    # the route is also the first FastAPI matches, for the OpenAPI description and the docs.
    app.intake = WebhookIntake(rt.db, lambda: secret, wake, count=count_delivery)
    app.include_router(app.intake.router())
    web = mount_web(app, rt, holder)

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
