"""The pool keeper: a scheduler tick that keeps each repository's warm pool full and fresh.

Each tick, for every recorded pool: resolve its size (the stack's `pool.size`, or the silo's
`runbot_pool_size` output, capped by the policy's `max_pool`) and what its instances are made
of; retire those made of something else, too old or failed; make the missing ones. It also
gives a fresh environment to each PR whose claimed instance failed to take its values.

Every write is a conditional UPDATE or an insert, so replicas running the tick at once at
worst make one instance too many for a tick (retired as surplus on the next).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import func, update
from sqlmodel import col, select

from app.db.budgets import Levels, levels
from app.db.models import Environment, Silo, WarmPool, utcnow
from app.lifecycle.pool import (
    CLAIM_STATS,
    CLAIMED,
    CLAIMING,
    FALLBACK,
    FALLBACK_TRIGGER,
    pause_after,
    standing_of,
)
from app.lifecycle.service import LifecycleError
from app.lifecycle.states import Desired, Status
from app.pool.plan import Member, Plan, Want, plan_pool, pool_key, pool_size
from app.stacks.catalog import StackError
from app.stacks.model import PoolSpec

if TYPE_CHECKING:
    from app.db.session import Database
    from app.lifecycle.service import Lifecycle
    from app.policy.store import PolicyStore

__all__ = ["PoolKeeper", "PoolReport"]

log = logging.getLogger("runbot.pool")

#: Slots of a silo a pool never takes: PRs of repositories without a pool still find one.
RESERVED_SLOTS = 1

_RETIRE_REASONS = {
    "changed": "pool refresh: the templates, the default branch or the vars changed",
    "max_age": "pool refresh: older than the pool's max_age",
    "surplus": "pool refresh: the pool was made smaller",
    "failed": "pool refresh: its apply failed",
    "budget": "pool refresh: the monthly budget is spent; the pool refills when it is not",
}


@dataclass
class PoolReport:
    made: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)


class PoolKeeper:
    def __init__(
        self, db: Database, lifecycle: Lifecycle, policy: PolicyStore, default_capacity: int
    ) -> None:
        self.db, self.lifecycle, self.policy = db, lifecycle, policy
        self.default_capacity = default_capacity

    async def tick(self, now: datetime | None = None) -> PoolReport:
        return await asyncio.to_thread(self.keep, now)

    def keep(self, now: datetime | None = None) -> PoolReport:
        now = now or utcnow()
        report = PoolReport()
        self._fall_back(report)
        pools = self.lifecycle.pools()
        if not pools:
            return report
        with self.db.session() as session:
            spent = levels(session, self.policy.current, now)
        for pool in pools:
            try:
                self._keep_one(pool, now, report, spent)
            except (LifecycleError, StackError) as exc:
                log.warning("pool %s/%s: %s", pool.silo_name, pool.repository, exc)
        return report

    def spec_of(self, silo: Silo) -> tuple[PoolSpec | None, str] | None:
        """The stack's pool spec and the digest of its templates; None: it cannot be pooled
        (a stack from a repository or git is read per commit, not kept by the operator)."""
        if silo.stack_source.get("kind", "catalog") != "catalog":
            return None
        stack, digest = self.lifecycle.catalog.get_with_digest(silo.stack)
        return stack.pool, digest

    def _keep_one(self, pool: WarmPool, now: datetime, report: PoolReport, spent: Levels) -> None:
        with self.db.session() as session:
            silo = session.get(Silo, pool.silo_name)
        members = self.lifecycle.pool_members(pool.silo_name, pool.repository)
        if silo is None or silo.desired == Desired.ABSENT or silo.status == Status.DESTROYED:
            return  # destroying the silo destroys its instances
        spec = self.spec_of(silo)
        manifest, template = (spec[0], spec[1]) if spec is not None else (None, "")
        output = (silo.outputs.get("runbot_pool_size") or {}).get("value")
        cap = self.policy.policy_for(pool.repository).max_pool if spec is not None else 0
        size = pool_size(manifest.size if manifest else None, output, cap)
        key = pool_key(template, pool.config_sha, pool.vars)
        self.lifecycle.record_pool_size(pool.silo_name, pool.repository, size, key)
        if silo.status != Status.READY and not members:
            return
        failed = {m.id for m in members if standing_of(m) == "failed"}
        paused_until = pool.paused_until
        want = Want(
            size=size,
            key=key,
            max_age=timedelta(seconds=manifest.max_age_seconds if manifest else 86_400),
            free_slots=self._free_slots(silo) if silo.status == Status.READY else 0,
            paused=paused_until is not None and paused_until > now,
            over_budget=spent.covers(pool.repository, pool.silo_name),
        )
        plan = plan_pool(
            want,
            [Member(m.id, m.pool_key, m.created_at, m.id in failed) for m in members],
            now,
        )
        self._follow(plan, silo, pool, key, report)
        if failed:
            failures = pool.failures + 1
            self.lifecycle.pause_pool(
                silo.name, pool.repository, failures, now + pause_after(failures)
            )
        elif pool.failures and any(m.status == Status.READY for m in members):
            self.lifecycle.pause_pool(silo.name, pool.repository, 0, None)

    def _follow(self, plan: Plan, silo: Silo, pool: WarmPool, key: str, report: PoolReport) -> None:
        for env_id, why in plan.retire:
            if self.lifecycle.retire_pool_instance(env_id, _RETIRE_REASONS[why]):
                report.retired.append(env_id)
        for _ in range(plan.create):
            made = self.lifecycle.create_pool_instance(silo, pool, key)
            report.made.append(made.id)
        if not plan.idle:
            log.info(
                "pool %s/%s: made %d, retired %d",
                silo.name,
                pool.repository,
                plan.create,
                len(plan.retire),
            )

    def _free_slots(self, silo: Silo) -> int:
        capacity = silo.capacity or self.default_capacity
        with self.db.session() as session:
            used = session.exec(
                select(func.count())
                .select_from(Environment)
                .where(Environment.silo_name == silo.name, Environment.status != Status.DESTROYED)
            ).one()
        return max(0, capacity - int(used) - RESERVED_SLOTS)

    def _fall_back(self, report: PoolReport) -> None:
        """A claimed instance that failed to take its PR's values is destroyed, and the PR
        gets a fresh create (`pool_state` fallback), which its comment says."""
        for env in self.lifecycle.failed_claims():
            with self.db.session() as session:
                won = session.exec(
                    update(Environment)
                    .where(col(Environment.id) == env.id, col(Environment.pool_state) == CLAIMING)
                    .values(pool_state=CLAIMED)
                ).rowcount
                session.commit()
            if won != 1:
                continue  # another replica took it
            why = " ".join((env.reason or "its update failed").split())[:300]
            try:
                fresh = self.lifecycle.redeploy(
                    env.id,
                    trigger=FALLBACK_TRIGGER,
                    reason=f"the warm instance could not take this PR's values ({why})",
                    pool_state=FALLBACK,
                )
            except LifecycleError as exc:
                log.warning("pool fallback for %s: %s", env.id, exc)
                continue
            CLAIM_STATS["fallback"] += 1
            report.fallbacks.append(fresh.id)
            log.info(
                "%s failed to take %s#%s; created %s",
                env.id,
                env.repository,
                env.pr_number,
                fresh.id,
            )
