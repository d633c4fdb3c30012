"""The scheduler's ticks: sleep when idle, TTL warnings and reaping, resync, and stale-lease
recovery.

Every replica runs every tick (APScheduler, in memory), so each tick is idempotent and safe
when several run at once: a warning or a reap is claimed with a conditional UPDATE that exactly
one replica wins (on PostgreSQL the losing UPDATE re-checks its WHERE after the winner's row
lock), and the warning comment is posted only by whoever moves ``PullRequest.warned_digest``
from its old value. Decisions are pure functions of a row and the time, tested on their own.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, delete, func, text, update
from sqlmodel import col, select

from app.db.models import Delivery, Environment, PullRequest, Silo, utcnow
from app.github.comment import render_expiry_warning
from app.github.gateway import GitHubError, RetryLater
from app.lifecycle.service import lifetime_limit, pull_id, ttl_policy_of
from app.lifecycle.states import Desired, Status
from app.schedule.retention import Pruned, Retention
from app.ttl.policy import is_expired, needs_warning, record_sleep_after, sleep_due_at

if TYPE_CHECKING:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    from app.db.session import Database
    from app.github.gateway import Gateway
    from app.lifecycle.service import Lifecycle


__all__ = [
    "TICK_STATS",
    "LeaseReport",
    "Ticks",
    "due_for_reaping",
    "due_for_sleep",
    "due_for_warning",
    "register_ticks",
    "warning_digest",
    "warning_owed",
]

log = logging.getLogger("runbot.schedule")

#: Counters for metrics: ``slept``, ``reaped``, ``warned`` (expiries marked), ``warnings_posted``,
#: ``warnings_deferred`` (GitHub unavailable, retried next tick), ``expired_leases:<kind>``,
#: ``released_leases``, ``pruned_deliveries``, ``pruned_<what>`` for each field of ``Pruned``.
TICK_STATS: Counter[str] = Counter()
#: The warm pool's tick runs at least this often, so a claimed instance is soon replaced.
POOL_INTERVAL = 5.0
#: A warning comment being posted right now carries this prefix in ``warned_digest``.
POSTING = "posting:"
#: Resync runs on one replica at a time (it reconciles every open PR of every installation).
RESYNC_LOCK = 7215063
#: Deliveries deleted per transaction by the retention tick.
PRUNE_BATCH = 500


def due_for_reaping(env: Environment, now: datetime) -> bool:
    """A live environment at or past its expiry (sleeping ones too: sleep keeps the expiry)."""
    return (
        env.expires_at is not None
        and env.desired != Desired.ABSENT
        and env.status != Status.DESTROYED
        and is_expired(env.expires_at, now)
    )


def due_for_sleep(
    ttl: Mapping[str, float] | None, last_activity_at: datetime, now: datetime
) -> datetime | None:
    """The cut-off to sleep an environment with (activity at or before it: asleep), or None
    when it has no ``sleep_after`` or was active within it."""
    sleep_after = record_sleep_after(ttl)
    if sleep_after is None or last_activity_at + sleep_after > now:
        return None
    # put_to_sleep wants activity strictly before its cut-off; timestamps are microseconds.
    return now - sleep_after + timedelta(microseconds=1)


def due_for_warning(env: Environment, now: datetime) -> bool:
    """Inside the ``warn_before`` window of an expiry not yet warned about."""
    return (
        env.expires_at is not None
        and env.desired != Desired.ABSENT
        and env.status != Status.DESTROYED
        and needs_warning(env.expires_at, env.warned_for, now, ttl_policy_of(env))
    )


def warning_digest(env_id: str, expires_at: datetime) -> str:
    """Names one expiry of one environment: the warning comment for it is posted once."""
    return hashlib.sha256(f"{env_id}@{expires_at.isoformat()}".encode()).hexdigest()[:40]


def warning_owed(warned_digest: str | None, digest: str) -> bool:
    """Not posted yet, nor being posted by another replica right now."""
    return warned_digest not in (digest, POSTING + digest)


@dataclass(frozen=True)
class LeaseReport:
    """Leases found expired in one tick (their holders died or hung), and how many released."""

    environments: int = 0
    silos: int = 0
    pull_syncs: int = 0
    deliveries: int = 0
    released: int = 0

    @property
    def expired(self) -> int:
        return self.environments + self.silos + self.pull_syncs + self.deliveries


class Ticks:
    def __init__(
        self,
        db: Database,
        lifecycle: Lifecycle,
        gateway: Gateway,
        *,
        wake: Callable[[], None] = lambda: None,
        lease_grace: timedelta = timedelta(seconds=30),
        delivery_lease: timedelta = timedelta(seconds=60),
        delivery_retention: timedelta = timedelta(days=14),
        retention: Retention | None = None,
    ) -> None:
        self.db = db
        self.lifecycle = lifecycle
        self.gateway = gateway
        self.wake = wake
        self.lease_grace = lease_grace
        self.delivery_lease = delivery_lease
        self.delivery_retention = delivery_retention
        self.retention = retention

    # ----- sleep -------------------------------------------------------------------------------

    async def sleep_idle(self, now: datetime | None = None) -> list[str]:
        """Put to sleep every ready, awake environment idle for its ``ttl.sleep_after``
        (reason ``idle``; the expiry stays); returns the ids this replica put to sleep.

        The index on (desired, sleep_due_at) hands over only the candidates. A candidate
        whose ``sleep_due_at`` lags its activity (a write that moved only
        ``last_activity_at``) gets it corrected instead, so it stops being one.
        """
        now = now or utcnow()
        with self.db.session() as session:
            candidates = session.exec(
                select(Environment.id, Environment.ttl, Environment.last_activity_at)
                .where(col(Environment.desired) == Desired.PRESENT)
                .where(col(Environment.sleep_due_at) <= now)
                .where(col(Environment.status) == Status.READY)
            ).all()
        slept: list[str] = []
        for env_id, ttl, last_activity_at in candidates:
            cutoff = due_for_sleep(ttl, last_activity_at, now)
            if cutoff is None:
                self._correct_sleep_due(env_id, ttl, last_activity_at)
            elif self.lifecycle.put_to_sleep(env_id, "idle", now, idle_before=cutoff):
                slept.append(env_id)
        if slept:
            TICK_STATS["slept"] += len(slept)
            log.info("put %d idle environment(s) to sleep: %s", len(slept), ", ".join(slept))
            self.wake()
        return slept

    def _correct_sleep_due(
        self, env_id: str, ttl: Mapping[str, float] | None, last_activity_at: datetime
    ) -> None:
        with self.db.session() as session:
            session.exec(
                update(Environment)
                .where(col(Environment.id) == env_id)
                .where(col(Environment.last_activity_at) == last_activity_at)
                .values(sleep_due_at=sleep_due_at(ttl, last_activity_at))
            )
            session.commit()

    # ----- TTL ---------------------------------------------------------------------------------

    def _live(self, *conditions: ColumnElement[bool]) -> list[Environment]:
        with self.db.session() as session:
            query = (
                select(Environment)
                .where(Environment.desired != Desired.ABSENT)
                .where(Environment.status != Status.DESTROYED)
                .where(col(Environment.expires_at).is_not(None))
            )
            for condition in conditions:
                query = query.where(condition)
            return list(session.exec(query))

    async def reap_expired(self, now: datetime | None = None) -> list[str]:
        """Destroy every environment past its expiry (reason ``expired``); returns the ids this
        replica reaped."""
        now = now or utcnow()
        reaped = [
            env.id
            for env in self._live(col(Environment.expires_at) <= now)
            if due_for_reaping(env, now) and self.lifecycle.reap_if_expired(env.id, now)
        ]
        if reaped:
            TICK_STATS["reaped"] += len(reaped)
            log.info("reaped %d expired environment(s): %s", len(reaped), ", ".join(reaped))
            self.wake()
        return reaped

    async def warn_expiring(self, now: datetime | None = None) -> list[str]:
        """Mark expiries inside their warning window, then post each owed warning comment once.

        Marking (``warned_for``) makes the status comment show the warning; the separate short
        comment mentions the author so they get a notification. When GitHub is unavailable the
        comment is left owed and the next tick tries again. Returns the ids warned by this call.
        """
        now = now or utcnow()
        marked = [
            env.id
            for env in self._live(
                col(Environment.warn_at) <= now,
                col(Environment.expires_at) > now,
                col(Environment.warned_for).is_distinct_from(Environment.expires_at),
            )
            if due_for_warning(env, now)
            and env.expires_at is not None
            and self.lifecycle.mark_warned(env.id, env.expires_at, now)
        ]
        if marked:
            TICK_STATS["warned"] += len(marked)
            log.info("expiry warning for %s", ", ".join(marked))
            self.wake()
        owed = self._live(
            col(Environment.warn_at) <= now,
            col(Environment.expires_at) > now,
            col(Environment.warned_for) == Environment.expires_at,
        )
        posted: list[str] = []
        for env in owed:
            if await self._post_warning(env, now):
                posted.append(env.id)
        return posted

    async def _post_warning(self, env: Environment, now: datetime) -> bool:
        assert env.expires_at is not None
        key = pull_id(env.repository, env.pr_number)
        digest = warning_digest(env.id, env.expires_at)
        with self.db.session() as session:
            pull = session.get(PullRequest, key)
        if pull is None or pull.state != "open" or not warning_owed(pull.warned_digest, digest):
            return False  # an environment made outside a PR has nobody to mention
        if not self._swap_digest(key, pull.warned_digest, POSTING + digest):
            return False  # another replica is posting it
        body = render_expiry_warning(
            env.author or pull.author, env.id, env.expires_at, now, lifetime_limit(env)
        )
        try:
            await self.gateway.create_comment(
                env.installation_id or pull.installation_id, env.repository, env.pr_number, body
            )
        except RetryLater as exc:
            TICK_STATS["warnings_deferred"] += 1
            log.warning("expiry warning for %s postponed: %s", env.id, exc)
            self._swap_digest(key, POSTING + digest, pull.warned_digest)
            return False
        except GitHubError as exc:  # refused for good (PR gone, App uninstalled): do not loop
            log.warning("expiry warning for %s could not be posted: %s", env.id, exc)
        self._swap_digest(key, POSTING + digest, digest)
        TICK_STATS["warnings_posted"] += 1
        return True

    def _swap_digest(self, key: str, old: str | None, new: str | None) -> bool:
        """Compare-and-set on ``warned_digest``: the one writer that saw ``old`` wins."""
        with self.db.session() as session:
            result = session.exec(
                update(PullRequest)
                .where(col(PullRequest.id) == key)
                .where(col(PullRequest.warned_digest).is_not_distinct_from(old))
                .values(warned_digest=new)
            )
            session.commit()
            return bool(result.rowcount == 1)

    # ----- leases ------------------------------------------------------------------------------

    async def recover_leases(self, now: datetime | None = None) -> LeaseReport:
        """Report leases whose holder stopped renewing, release the long-dead ones, and wake
        the workers so the work is taken over now rather than at their next poll.

        Claims already treat an expired lease as free; releasing only those expired for longer
        than a grace period keeps a worker whose heartbeat is merely late from losing its run.
        """
        now = now or utcnow()
        dead = now - self.lease_grace
        counts: dict[str, int] = {}
        released = 0
        with self.db.session() as session:
            for kind, model in (("environments", Environment), ("silos", Silo)):
                counts[kind] = session.exec(
                    select(func.count())
                    .select_from(model)
                    .where(col(model.lease_owner).is_not(None))
                    .where(col(model.lease_expires_at) < now)
                ).one()
                result = session.exec(
                    update(model)
                    .where(col(model.lease_expires_at) < dead)
                    .values(lease_owner=None, lease_expires_at=None)
                )
                released += result.rowcount
            counts["pull_syncs"] = session.exec(
                select(func.count())
                .select_from(PullRequest)
                .where(col(PullRequest.sync_lease_expires_at) < now)
            ).one()
            result = session.exec(
                update(PullRequest)
                .where(col(PullRequest.sync_lease_expires_at) < dead)
                .values(sync_lease_owner=None, sync_lease_expires_at=None)
            )
            released += result.rowcount
            # A pending delivery's processed_at is its claim; past the lease it is claimable.
            counts["deliveries"] = session.exec(
                select(func.count())
                .select_from(Delivery)
                .where(col(Delivery.status) == "pending")
                .where(col(Delivery.processed_at) < now - self.delivery_lease)
            ).one()
            session.commit()
        report = LeaseReport(released=released, **counts)
        if report.expired:
            for kind, count in counts.items():
                TICK_STATS[f"expired_leases:{kind}"] += count
            TICK_STATS["released_leases"] += released
            log.warning(
                "expired leases: %d environment(s), %d silo(s), %d PR sync(s), %d delivery(ies);"
                " %d released; waking the workers to take them over",
                report.environments,
                report.silos,
                report.pull_syncs,
                report.deliveries,
                released,
            )
            self.wake()
        return report

    # ----- retention ---------------------------------------------------------------------------

    async def prune_deliveries(self, now: datetime | None = None) -> int:
        """Delete handled deliveries older than the retention; returns how many went.

        Each keeps its 18 kB-ish payload, so without this the table grows by every webhook
        GitHub ever sent. Pending deliveries are never deleted, whatever their age: they are
        work not done yet. Deleted in batches so no single transaction holds the table long.
        """
        cutoff = (now or utcnow()) - self.delivery_retention
        deleted = 0
        while True:
            with self.db.session() as session:
                batch = session.exec(
                    select(Delivery.id)
                    .where(Delivery.status != "pending")
                    .where(col(Delivery.received_at) < cutoff)
                    .limit(PRUNE_BATCH)
                ).all()
                if batch:
                    session.exec(delete(Delivery).where(col(Delivery.id).in_(batch)))
                    session.commit()
            deleted += len(batch)
            if len(batch) < PRUNE_BATCH:
                break
        if deleted:
            TICK_STATS["pruned_deliveries"] += deleted
            log.info("pruned %d handled delivery(ies) older than %s", deleted, cutoff.date())
        return deleted

    async def prune_retained(self, now: datetime | None = None) -> Pruned:
        """Old runs and logs, the outbox, the command ledger and the caches (`retention`)."""
        if self.retention is None:
            return Pruned()
        pruned = await self.retention.prune(now)
        for name, count in vars(pruned).items():
            TICK_STATS[f"pruned_{name}"] += count
        return pruned

    # ----- one replica at a time ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def exclusive(self, key: int) -> AsyncIterator[bool]:
        """A PostgreSQL session advisory lock, tried without waiting: yields False when another
        replica holds it. SQLite has exactly one process, which always gets it."""
        if not self.db.is_postgres:
            yield True
            return
        with self.db.engine.connect() as connection:
            got = bool(connection.execute(text(f"SELECT pg_try_advisory_lock({key})")).scalar())
            connection.commit()
            try:
                yield got
            finally:
                if got:
                    connection.execute(text(f"SELECT pg_advisory_unlock({key})"))
                    connection.commit()


def register_ticks(
    scheduler: AsyncIOScheduler,
    ticks: Ticks,
    resync: Callable[[], Awaitable[None]],
    interval: float,
    orphans: tuple[Callable[[], Awaitable[object]], float] | None = None,
    budgets: Callable[[], Awaitable[object]] | None = None,
    pool: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """Add the ticks to the process's scheduler (`runbot serve` and `runbot worker` alike)."""

    async def resync_once() -> None:
        async with ticks.exclusive(RESYNC_LOCK) as mine:
            if mine:
                await resync()

    # Each job is called without arguments, so it reads the time from `app.clock`: a test or
    # the cost benchmark moves a ManualClock and the real scheduler follows it.
    jobs: list[tuple[str, Callable[[], object], float]] = [
        ("sleep_idle", ticks.sleep_idle, interval),
        ("reap_expired", ticks.reap_expired, interval),
        ("warn_expiring", ticks.warn_expiring, interval),
        ("recover_leases", ticks.recover_leases, interval),
        ("resync", resync_once, max(interval * 10, 60.0)),
        ("prune_deliveries", ticks.prune_deliveries, 3600.0),
        ("prune_retained", ticks.prune_retained, 3600.0),
    ]
    if orphans is not None:
        jobs.append(("orphan_sweep", orphans[0], orphans[1]))  # state and processes vs targets
    if budgets is not None:
        jobs.append(("budgets", budgets, interval))  # at 100%: idle ones sleep
    if pool is not None:
        jobs.append(("warm_pool", pool, min(interval, POOL_INTERVAL)))  # refill, refresh
    for job_id, func_, seconds in jobs:
        scheduler.add_job(
            func_,
            "interval",
            seconds=seconds,
            id=job_id,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            replace_existing=True,
        )
