"""The claim loop: lease targets whose desired state moved, keep the leases alive, converge each.

A claim is a lease on the row (FOR UPDATE SKIP LOCKED on PostgreSQL), renewed by a heartbeat
while the engine runs. A worker that dies stops renewing; when the lease expires another worker
claims the row and re-runs the same desired generation, which the engine makes idempotent.
Workers always read the newest desired state at claim time, so bursts of changes coalesce.
Converging a claimed target is `converge.py`'s; every write to its row goes through `save`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import case, func, or_, update
from sqlmodel import col, select

from app.db.models import Environment, Run, Silo, utcnow
from app.db.session import Database
from app.engine.executor import Executor
from app.lifecycle.backoff import destroy_retry_delay
from app.lifecycle.converge import Converger
from app.lifecycle.lease import Claim, LeaseLost, Mutate
from app.lifecycle.runs import LineEcho, PhaseEcho
from app.lifecycle.service import mark_pull_dirty
from app.lifecycle.silotoken import SiloTokens
from app.lifecycle.states import Status, check_transition
from app.lifecycle.timings import queue_wait
from app.logging import log_context
from app.source.fetch import SourceProvider
from app.stacks.catalog import Catalog
from app.stacks.gitrun import GitLimits

log = logging.getLogger("runbot.reconcile")

Target = Silo | Environment
Listener = Callable[[str, str, str], None]  # (kind, id, status): after every visible change


def _key_column(model: type[Target]) -> Any:
    """The primary-key column: a silo's name, an environment's id."""
    return col(Silo.name) if model is Silo else col(Environment.id)


def _aware(value: datetime, now: datetime) -> datetime:
    """A timestamp from an aggregate, in UTC even if the driver handed it back naive."""
    return value if value.tzinfo is not None else value.replace(tzinfo=now.tzinfo)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Reconciler:
    """A worker: claims targets, holds their leases, and is their rows' only writer meanwhile."""

    def __init__(
        self,
        db: Database,
        catalog: Catalog,
        runner: Executor,
        data_dir: Path,
        *,
        max_concurrent_runs: int = 4,
        worker_concurrency: int | None = None,
        lease_seconds: float = 30.0,
        default_capacity: int = 20,
        worker_id: str | None = None,
        echo_line: LineEcho | None = None,
        echo_phase: PhaseEcho | None = None,
        listeners: list[Listener] | None = None,
        git_limits: Callable[[], GitLimits] = GitLimits,
        destroy_retry_base: float = 10.0,
        destroy_retry_max: float = 1800.0,
        source: SourceProvider | None = None,
        silo_tokens: SiloTokens | None = None,
    ) -> None:
        self.db = db
        # A failed destroy is retried until it succeeds (nothing may leak), ever more slowly.
        self.destroy_retry_base = destroy_retry_base
        self.destroy_retry_max = destroy_retry_max
        self.max_concurrent_runs = max_concurrent_runs
        # Runs this process takes at once; the global cap still bounds all processes together.
        self.worker_concurrency = min(
            worker_concurrency or max_concurrent_runs, max_concurrent_runs
        )
        self.lease = timedelta(seconds=lease_seconds)
        self.worker_id = worker_id or default_worker_id()
        self.listeners = listeners or []
        self.wakeup = asyncio.Event()
        # Called after each claiming pass, once the runs it started have reached their engine.
        self.after_pass: Callable[[], None] = lambda: None
        self.converger = Converger(
            db,
            catalog,
            runner,
            data_dir.absolute(),
            self,
            default_capacity=default_capacity,
            more_work=self.wakeup.set,
            git_limits=git_limits,
            echo_line=echo_line,
            echo_phase=echo_phase,
            source=source,
            silo_tokens=silo_tokens,
        )

    # ----- claiming --------------------------------------------------------------------------

    def _claimable(self, model: type[Target], now: datetime) -> Any:
        return (
            select(_key_column(model), model.generation)
            .where(model.generation != model.observed_generation)
            .where(or_(col(model.lease_expires_at).is_(None), col(model.lease_expires_at) < now))
            .where(or_(col(model.next_attempt_at).is_(None), col(model.next_attempt_at) <= now))
            .order_by(*_priority(model), col(model.updated_at))
            .limit(1)
        )

    def claim(self) -> Claim | None:
        """Lease the oldest target that needs work, if the global run cap allows another.

        It runs after every change and every finished run, on the way to each engine start and
        before each status comment: one statement counts the active runs, and candidates are
        read as (key, generation) rather than whole rows.
        """
        now = utcnow()
        with self.db.session() as session:
            if self.db.is_postgres:
                # Serialises only the cap check across replicas; rows are then taken SKIP LOCKED.
                session.exec(select(func.pg_advisory_xact_lock(7215062)))
            counts = [
                select(func.count()).select_from(model).where(col(model.lease_expires_at) > now)
                for model in (Silo, Environment)
            ]
            active = session.exec(
                select(counts[0].scalar_subquery() + counts[1].scalar_subquery())
            ).one()
            if active >= self.max_concurrent_runs:
                return None
            for model, kind in ((Silo, "silo"), (Environment, "environment")):
                query = self._claimable(model, now)
                if self.db.is_postgres:
                    query = query.with_for_update(skip_locked=True)
                found = session.exec(query).first()
                if found is None:
                    continue
                key, generation = found
                result = session.exec(
                    update(model)
                    .where(_key_column(model) == key)
                    .where(
                        or_(
                            col(model.lease_expires_at).is_(None), col(model.lease_expires_at) < now
                        )
                    )
                    .values(lease_owner=self.worker_id, lease_expires_at=now + self.lease)
                )
                session.commit()
                if result.rowcount == 1:
                    return Claim(kind=kind, id=key, generation=generation)
                return None
        return None

    def _next_due(self) -> float | None:
        """Seconds until the earliest delayed target needing work becomes claimable."""
        now = utcnow()
        with self.db.session() as session:
            found = [
                select(func.min(model.next_attempt_at))
                .where(model.generation != model.observed_generation)
                .where(col(model.next_attempt_at) > now)
                .scalar_subquery()
                for model in (Silo, Environment)
            ]
            silo_due, env_due = session.exec(select(found[0], found[1])).one()
        due = [_aware(value, now) for value in (silo_due, env_due) if value is not None]
        if not due:
            return None
        return max(0.0, (min(due) - now).total_seconds()) + 0.005

    def _renew(self, claim: Claim) -> None:
        model = Silo if claim.kind == "silo" else Environment
        with self.db.session() as session:
            result = session.exec(
                update(model)
                .where(_key_column(model) == claim.id)
                .where(col(model.lease_owner) == self.worker_id)
                .values(lease_expires_at=utcnow() + self.lease)
            )
            session.commit()
        if result.rowcount != 1:
            raise LeaseLost(f"{claim.kind} {claim.id}: lease taken over by another worker")

    async def heartbeat(self, claim: Claim, cancel: asyncio.Event) -> None:
        """Renew the lease while the engine runs; set `cancel` once it is lost."""
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            try:
                self._renew(claim)
            except LeaseLost:
                log.warning("lost the lease on %s %s; cancelling its run", claim.kind, claim.id)
                cancel.set()
                return
            except Exception:  # a DB blip: keep trying until the lease really runs out
                log.exception("heartbeat failed for %s %s", claim.kind, claim.id)

    # ----- the loop --------------------------------------------------------------------------

    async def step(self) -> bool:
        """Claim and converge one target; False when nothing was claimable."""
        claim = self.claim()
        if claim is None:
            return False
        await self._converge(claim)
        return True

    async def _converge(self, claim: Claim) -> None:
        ids = {"silo": claim.id} if claim.kind == "silo" else {"environment_id": claim.id}
        with log_context(**ids):
            await self._converge_logged(claim)

    async def _converge_logged(self, claim: Claim) -> None:
        try:
            await self.converger.converge(claim)
        except LeaseLost:
            log.warning("%s %s: lease lost; another worker continues", claim.kind, claim.id)
        except Exception as exc:
            # Never let one target kill the worker, nor spin on it: record the failure visibly.
            log.exception("converging %s %s failed unexpectedly", claim.kind, claim.id)
            with contextlib.suppress(Exception):
                self.fail(
                    claim,
                    f"runbot internal error ({type(exc).__name__}: {exc}); see the server log",
                    None,
                )

    async def run(self, stop: asyncio.Event, poll_interval: float = 1.0) -> None:
        """Run up to worker_concurrency convergences at once until `stop` is set."""
        tasks: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                self.wakeup.clear()
                while len(tasks) < self.worker_concurrency:
                    claim = self.claim()
                    if claim is None:
                        break
                    task = asyncio.create_task(self._converge(claim))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    # Let it reach its engine run before looking for more work: the next
                    # claim's query is not on this run's critical path.
                    await asyncio.sleep(0)
                self.after_pass()
                waiters = [
                    asyncio.create_task(self.wakeup.wait()),
                    asyncio.create_task(stop.wait()),
                ]
                # Wake exactly when a delayed target (a retry, a queued environment, a burst
                # of pushes settling) becomes claimable, not up to a poll interval later.
                due = self._next_due()
                timeout = poll_interval if due is None else min(poll_interval, due)
                await asyncio.wait(
                    [*waiters, *tasks], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                for waiter in waiters:
                    waiter.cancel()
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def drain(
        self, until: Callable[[], bool], timeout: float = 3600.0, poll: float = 0.2
    ) -> None:
        """Work in the foreground until `until()` holds: the CLI's way of running a change."""
        stop = asyncio.Event()
        worker = asyncio.create_task(self.run(stop, poll_interval=poll))
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while not until():
                if worker.done():
                    worker.result()
                if loop.time() > deadline:
                    raise TimeoutError("gave up waiting for the target to converge")
                await asyncio.sleep(poll)
        finally:
            stop.set()
            await worker

    # ----- writes to the claimed row ----------------------------------------------------------

    def _notify(self, kind: str, target_id: str, status: str) -> None:
        for listener in self.listeners:
            try:
                listener(kind, target_id, status)
            except Exception:
                log.exception("listener failed for %s %s", kind, target_id)

    def save(
        self,
        claim: Claim,
        mutate: Mutate,
        release: bool = False,
        start_run: Run | None = None,
    ) -> Any:
        """Apply a change to the claimed row, but only while we still hold its lease.

        ``start_run`` is recorded in the same transaction (and becomes an environment's
        ``last_run_id``): one commit on the critical path of every run instead of three.
        """
        lock = self.db.is_postgres
        with self.db.session() as session:
            row: Silo | Environment | None = (
                session.get(Silo, claim.id, with_for_update=lock)
                if claim.kind == "silo"
                else session.get(Environment, claim.id, with_for_update=lock)
            )
            if row is None or row.lease_owner != self.worker_id:
                raise LeaseLost(f"{claim.kind} {claim.id}")
            old_status = row.status
            mutate(row)
            if row.status != old_status:
                check_transition(old_status, row.status)
            if start_run is not None:
                start_run.timings = {"queue": queue_wait(row.requested_at, start_run.started_at)}
                session.add(start_run)
                session.flush()  # assigns its id
                if isinstance(row, Environment):
                    row.last_run_id = start_run.id
            row.updated_at = utcnow()
            if isinstance(row, Environment):
                row.sync_version += 1
                mark_pull_dirty(session, row.repository, row.pr_number)
            if release:
                row.lease_owner, row.lease_expires_at = None, None
            session.add(row)
            session.commit()
        self._notify(claim.kind, claim.id, row.status)
        return row

    def release_later(self, claim: Claim, delay: float, status: str, reason: str) -> None:
        def mutate(row: Any) -> None:
            if row.generation != claim.generation:
                # The desired state moved since the claim (the TTL reaper, a command): its
                # reason stands, and the new desired state is handled at once.
                row.next_attempt_at = None
                return
            row.status, row.reason = status, reason
            row.next_attempt_at = utcnow() + timedelta(seconds=delay)

        self.save(claim, mutate, release=True)

    def fail(self, claim: Claim, error: str, run_id: int | None, retry: bool = False) -> None:
        """Record a failure. `retry` (a destroy): DESTROY_FAILED, and tried again after a
        backoff, leaving the generation unobserved, until it succeeds or someone acts."""
        delay = 0.0

        def mutate(row: Any) -> None:
            nonlocal delay
            row.status, row.reason = (Status.DESTROY_FAILED if retry else Status.FAILED), error
            row.attempts += 1
            if run_id is not None and isinstance(row, Environment):
                row.last_run_id = run_id
            if retry:
                delay = destroy_retry_delay(
                    row.attempts,
                    self.destroy_retry_base,
                    self.destroy_retry_max,
                    random.random(),
                )
                row.next_attempt_at = utcnow() + timedelta(seconds=delay)
            else:
                row.observed_generation = claim.generation

        self.save(claim, mutate, release=True)
        if retry:
            log.warning("destroy of %s %s failed; retrying in %.1f s", claim.kind, claim.id, delay)


def _priority(model: type[Target]) -> list[Any]:
    """PR work before the warm pool's: an unclaimed instance is made or remade only when no
    PR's environment waits (the pool refills in the background)."""
    if model is Environment:
        return [case((col(Environment.pool_state) == "warm", 1), else_=0)]
    return []


async def cancel_quietly(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
