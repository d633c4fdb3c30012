"""The background machinery of one runbot process: the intent, reconcile and notify loops,
the command handler and the scheduler's ticks, wired together once.

`runbot serve` runs them beside the web (`app.server`); `runbot worker` runs them alone. SQLite
allows exactly one runbot process (enforced with a lock file); PostgreSQL allows many.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import signal
from dataclasses import dataclass, field
from datetime import timedelta
from typing import IO, Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from app.access.roles import Role
from app.commands.handlers import CommandHandler
from app.commands.limits import FloodLimits
from app.commands.registry import VOCABULARY
from app.db.models import Environment
from app.github.appgateway import GitHubAppGateway
from app.github.gateway import Gateway
from app.github.notify import Notifier
from app.github.outbox import OutboxGateway
from app.github.tarball import github_download
from app.intent.processor import IntentProcessor
from app.lifecycle.reconcile import Reconciler, default_worker_id
from app.lifecycle.states import HoldKind, Status
from app.pool.keeper import PoolKeeper
from app.runtime import Runtime
from app.schedule.budgets import BudgetTick
from app.schedule.retention import Retention
from app.schedule.ticks import Ticks, register_ticks
from app.settings import Settings, SettingsError

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


def make_gateway(rt: Runtime) -> Gateway:
    settings = rt.settings
    if settings.local_mode:
        config = settings.local_config.read_text() if settings.local_config else None
        return OutboxGateway(rt.db, config)
    return GitHubAppGateway(settings)


@dataclass
class Workers:
    """The loops of one process, and what they share."""

    rt: Runtime
    gateway: Gateway
    reconciler: Reconciler
    intent: IntentProcessor
    notifier: Notifier
    commands: CommandHandler
    ticks: Ticks
    scheduler: AsyncIOScheduler
    budgets: BudgetTick | None = None
    pool: PoolKeeper | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _notify_after_pass: bool = False

    @classmethod
    def build(cls, rt: Runtime, gateway: Gateway | None = None) -> Workers:
        settings = rt.settings
        worker_id = default_worker_id()
        gateway = gateway or make_gateway(rt)
        intent = IntentProcessor(
            rt.db,
            rt.lifecycle,
            gateway,
            settings.data_dir,
            worker_id=worker_id,
            lease_seconds=settings.lease_seconds,
            policy=rt.policy,
        )
        notifier = Notifier(
            rt.db,
            gateway,
            public_url=settings.public_url,
            app_slug=settings.github_app_slug,
            worker_id=worker_id,
            commands_help=VOCABULARY.usage(),
            lease_seconds=settings.lease_seconds,
            policy_for=rt.policy.policy_for,
            host_paths=(str(settings.data_dir.absolute()), str(settings.templates_dir.absolute())),
            delete_environments=settings.github_delete_environments,
            currency=settings.currency,
            policy_file=lambda: rt.policy.current,
        )
        commands = CommandHandler(
            rt.db,
            rt.lifecycle,
            gateway,
            intent,
            notifier,
            app_slug=settings.github_app_slug,
            permission_needed=Role.named(settings.command_permission) or Role.WRITE,
            limits=FloodLimits(
                reply_interval=timedelta(seconds=settings.command_reply_interval),
                budget=settings.command_write_budget,
                window=timedelta(seconds=settings.command_budget_window),
            ),
        )
        notifier.idle_work = commands.answers.send_one
        # GitHub's tarballs, unless local mode (RUNBOT_LOCAL_REPO, or no source at all).
        download = None if gateway.local else github_download(gateway)
        reconciler = rt.reconciler(worker_id=worker_id, source=rt.sources(download))

        def wake_all() -> None:
            reconciler.wakeup.set()
            notifier.wakeup.set()
            intent.wakeup.set()

        ticks = Ticks(
            rt.db,
            rt.lifecycle,
            gateway,
            wake=wake_all,
            lease_grace=timedelta(seconds=settings.lease_seconds),
            delivery_lease=intent.lease,
            delivery_retention=timedelta(days=settings.delivery_retention_days),
            retention=Retention(
                rt.db,
                settings.data_dir,
                run_retention=timedelta(days=settings.run_retention_days),
                keep_runs=settings.run_retention_keep,
                ledger_retention=timedelta(
                    days=max(settings.run_retention_days, settings.delivery_retention_days)
                ),
                cache_retention=timedelta(days=settings.git_cache_days),
            ),
        )
        workers = cls(
            rt=rt,
            gateway=gateway,
            reconciler=reconciler,
            intent=intent,
            notifier=notifier,
            commands=commands,
            ticks=ticks,
            scheduler=AsyncIOScheduler(timezone="UTC"),
        )
        workers.budgets = BudgetTick(
            rt.db,
            rt.lifecycle,
            lambda: rt.policy.current,
            redecide=lambda: intent.reconcile_held(kinds=(HoldKind.BUDGET,)),
            wake=wake_all,
        )
        workers.pool = PoolKeeper(rt.db, rt.lifecycle, rt.policy, rt.lifecycle.default_capacity)
        rt.policy.listeners.append(workers._policy_reloaded)
        reconciler.listeners.append(workers._environment_changed)
        reconciler.after_pass = workers._reconciler_passed
        intent.on_change = workers._intent_changed
        intent.command_handler = commands
        return workers

    async def keep_pool(self) -> None:
        """The warm pool's tick; what it changed is worked on at once."""
        assert self.pool is not None
        report = await self.pool.tick()
        if report.made or report.retired or report.fallbacks:
            self.reconciler.wakeup.set()
            self.notifier.wakeup.set()

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

    def wake(self) -> None:
        """Something changed outside the loops (the dashboard, the API): look now."""
        self.reconciler.wakeup.set()
        self.notifier.wakeup.set()

    async def sweep_orphans(self) -> None:
        try:
            await self.rt.orphans.tick()
        except Exception:
            log.exception("orphan sweep failed")

    def _policy_reloaded(self) -> None:
        """A new policy may raise a budget: decide the PRs it held again, now."""
        if self.budgets is None:
            return
        self.budgets.policy_reloaded()
        with contextlib.suppress(RuntimeError):  # reloaded outside the loop: the next tick
            self.tasks.append(asyncio.get_running_loop().create_task(self.budgets.tick()))

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
        # TTL reaper, expiry warnings, resync, stale-lease recovery
        register_ticks(
            self.scheduler,
            self.ticks,
            self.resync,
            self.rt.settings.scheduler_interval,
            orphans=(self.sweep_orphans, self.rt.settings.orphan_sweep_interval),
            budgets=self.budgets.tick if self.budgets is not None else None,
            pool=self.keep_pool if self.pool is not None else None,
        )
        self.scheduler.start()
        # The operator policy: reread when its file changes, and on SIGHUP.
        self.tasks.append(asyncio.create_task(self.rt.policy.watch(self.stop), name="policy"))
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not main thread
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.rt.policy.reload)
        if not self.gateway.local:
            self.tasks.append(asyncio.create_task(self.resync()))  # heal what happened while down

    async def shutdown(self) -> None:
        """Stop claiming; let engine runs get SIGINT and release their locks."""
        self.stop.set()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
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
