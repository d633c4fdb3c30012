"""Warm-pool bookkeeping on the desired state: a repository's wish for a pool, an unclaimed
instance made or retired, a PR claiming one, and the fresh create when a claim fails.

A claim is one conditional UPDATE from `warm` to `claiming` (on PostgreSQL the candidate is
read `FOR UPDATE SKIP LOCKED`), so of two replicas or coroutines racing for one instance
exactly one gets it, and a PR that already has an environment is refused by the unique index.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from app.db.models import Environment, WarmPool, utcnow
from app.lifecycle.errors import Conflict
from app.lifecycle.ids import new_pool_id
from app.lifecycle.pulls import mark_pull_dirty
from app.lifecycle.states import Desired, Status
from app.ttl.policy import TTLPolicy, expiry_after_activity, policy_from_record, policy_record

if TYPE_CHECKING:
    from app.db.session import Database

__all__ = [
    "CLAIM_STATS",
    "FALLBACK_TRIGGER",
    "RESIZE_HINT",
    "Pooling",
    "PullValues",
    "of_a_pr",
    "pause_after",
    "pool_standing",
    "refuse_warm",
    "standing_of",
]

#: `Environment.pool_state` values.
WARM, CLAIMING, CLAIMED, FALLBACK = "warm", "claiming", "claimed", "fallback"
#: The trigger of a failed claim's destroy and of the fresh create that replaces it.
FALLBACK_TRIGGER = "pool-fallback"
#: Claims this process made, by outcome, for metrics: ``claimed`` (a PR took an instance),
#: ``empty`` (the repository has a pool in the silo but none was ready: a cold create),
#: ``fallback`` (a claimed instance failed to take its PR's values: a fresh create).
CLAIM_STATS: Counter[str] = Counter()


#: How an operator changes a pool, said wherever acting on a warm instance is refused.
RESIZE_HINT = (
    "to keep more or fewer warm, resize the pool through the silo (its `runbot_pool_size`"
    " output, or the stack's `pool.size`) or the operator policy's `max_pool`"
)


def refuse_warm(env: Environment, done: str) -> None:
    """An unclaimed warm-pool instance is the pool keeper's, not a PR's: acting on it by hand
    would leave the pool with an instance no PR can claim."""
    if env.pool_state == WARM:
        raise Conflict(
            f"environment '{env.id}' is a warm pool instance and cannot be {done}: the pool"
            f" keeper remakes it when its templates or default branch change; {RESIZE_HINT};"
            " or destroy the instance and the keeper makes a new one"
        )


def pool_standing(pool_state: str | None, status: str, desired: str, settled: bool) -> str:
    """Where a pool instance stands: ``claiming`` (a PR took it), ``retiring``, ``ready`` (to
    be claimed), ``failed`` (to be made again) or ``starting``; the keeper, the metrics, the
    API and the CLI all count by it."""
    if pool_state == CLAIMING:
        return "claiming"
    if desired == Desired.ABSENT:
        return "retiring"
    if settled and status == Status.READY:
        return "ready"
    if settled and status == Status.FAILED:
        return "failed"
    return "starting"


def standing_of(env: Environment) -> str:
    return pool_standing(
        env.pool_state, env.status, env.desired, env.generation == env.observed_generation
    )


def of_a_pr() -> ColumnElement[bool]:
    """Rows that belong to a PR: every environment but an unclaimed pool instance."""
    return or_(col(Environment.pool_state).is_(None), col(Environment.pool_state) != WARM)


@dataclass(frozen=True)
class PullValues:
    """What a PR gives its environment: applied by a create, a claim or a redeploy."""

    repository: str
    pr_number: int
    head_sha: str
    head_ref: str
    author: str
    vars: dict[str, Any]
    installation_id: int | None
    ttl: TTLPolicy
    config_sha: str | None
    trigger: str = "pull_request"

    @classmethod
    def of(cls, env: Environment, trigger: str) -> PullValues:
        """The values an environment was given, to give them again to a fresh one."""
        return cls(
            env.repository,
            env.pr_number,
            env.head_sha,
            env.head_ref,
            env.author,
            dict(env.vars),
            installation_id=env.installation_id,
            ttl=policy_from_record(env.ttl),
            config_sha=env.config_sha,
            trigger=trigger,
        )


class Pooling:
    db: Database

    def want_pool(
        self,
        silo: str,
        repository: str,
        *,
        installation_id: int | None,
        default_branch: str,
        config_sha: str,
        vars: dict[str, Any],
    ) -> None:
        """Record what the repository's next warm instances in ``silo`` are made of (a read,
        and a write only when something changed: it runs on the way of PR deliveries)."""
        with self.db.session() as session:
            row = session.get(WarmPool, (silo, repository))
            wanted = (installation_id, default_branch, config_sha, vars)
            if (
                row is not None
                and (
                    row.installation_id,
                    row.default_branch,
                    row.config_sha,
                    row.vars,
                )
                == wanted
            ):
                return
            row = row or WarmPool(silo_name=silo, repository=repository)
            row.installation_id, row.default_branch = installation_id, default_branch
            row.config_sha, row.vars, row.updated_at = config_sha, dict(vars), utcnow()
            session.add(row)
            try:
                session.commit()
            except IntegrityError:  # another replica recorded it at the same moment
                session.rollback()

    def claim_warm(
        self, silo: str, values: PullValues, now: datetime | None = None
    ) -> Environment | None:
        """Take a ready unclaimed instance of the repository's pool in ``silo`` for the PR,
        and ask for the PR's values to be applied to it; None when none is ready."""
        now = now or utcnow()
        with self.db.session() as session:
            query = (
                select(Environment.id)
                .where(
                    Environment.silo_name == silo,
                    Environment.repository == values.repository,
                    Environment.pool_state == WARM,
                    Environment.status == Status.READY,
                    Environment.desired == Desired.PRESENT,
                    Environment.generation == Environment.observed_generation,
                )
                .order_by(col(Environment.created_at), col(Environment.id))
                .limit(1)
            )
            if self.db.is_postgres:
                query = query.with_for_update(skip_locked=True)
            found = session.exec(query).first()
            if found is None:
                if _wants_pool(session, silo, values.repository):
                    CLAIM_STATS["empty"] += 1
                return None
            taken = session.exec(
                update(Environment)
                .where(col(Environment.id) == found, col(Environment.pool_state) == WARM)
                .values(pool_state=CLAIMING, claimed_at=now)
            )
            if taken.rowcount != 1:
                session.rollback()
                return None
            env = session.get(Environment, found, populate_existing=True)
            assert env is not None
            try:
                self._bind(session, env, values, now)
            except IntegrityError:  # the PR got an environment meanwhile: this one stays warm
                session.rollback()
                return None
            CLAIM_STATS["claimed"] += 1
            return env

    @staticmethod
    def _bind(session: Any, env: Environment, values: PullValues, now: datetime) -> None:
        """Give the claimed instance its PR's values and a new generation to apply them."""
        policy = values.ttl
        env.pr_number, env.head_sha = values.pr_number, values.head_sha
        env.head_ref, env.author = values.head_ref, values.author
        env.vars, env.trigger = dict(values.vars), values.trigger
        env.installation_id, env.config_sha = values.installation_id, values.config_sha
        env.ttl, env.created_at, env.last_activity_at = policy_record(policy), now, now
        env.expires_at = expiry_after_activity(policy, now, now)
        env.generation += 1
        env.next_attempt_at, env.updated_at = None, now
        env.sync_version += 1
        session.add(env)
        session.flush()  # the one-live-per-PR index speaks here, before the PR is marked
        mark_pull_dirty(session, env.repository, env.pr_number)
        session.commit()

    def create_pool_instance(self, silo: Any, pool: WarmPool, key: str) -> Environment:
        """An unclaimed instance: no PR (number 0), the default branch's head, no expiry."""
        with self.db.session() as session:
            env = Environment(
                id=new_pool_id(),
                silo_name=silo.name,
                stack=silo.stack,
                stack_source=dict(silo.stack_source),
                repository=pool.repository,
                pr_number=0,
                installation_id=pool.installation_id,
                head_sha=pool.config_sha,
                head_ref=pool.default_branch,
                vars=dict(pool.vars),
                trigger="pool",
                config_sha=pool.config_sha,
                pool_state=WARM,
                pool_key=key,
            )
            session.add(env)
            session.commit()
            return env

    def retire_pool_instance(self, env_id: str, reason: str) -> bool:
        """Destroy an unclaimed instance, unless a PR claimed it first (False then)."""
        now = utcnow()
        with self.db.session() as session:
            result = session.exec(
                update(Environment)
                .where(
                    col(Environment.id) == env_id,
                    col(Environment.pool_state) == WARM,
                    col(Environment.desired) != Desired.ABSENT,
                )
                .values(
                    desired=Desired.ABSENT,
                    reason=reason,
                    trigger="pool",
                    generation=Environment.generation + 1,
                    next_attempt_at=None,
                    requested_at=now,
                    updated_at=now,
                )
            )
            session.commit()
            return result.rowcount == 1

    def pool_members(self, silo: str, repository: str) -> list[Environment]:
        """The pool's unclaimed instances that are not on their way out."""
        with self.db.session() as session:
            query = select(Environment).where(
                Environment.silo_name == silo,
                Environment.repository == repository,
                Environment.pool_state == WARM,
                Environment.desired != Desired.ABSENT,
                Environment.status != Status.DESTROYED,
            )
            return list(session.exec(query))

    def failed_claims(self) -> list[Environment]:
        """Claimed instances whose update to their PR's values failed: each gets a fresh one."""
        with self.db.session() as session:
            query = select(Environment).where(
                Environment.pool_state == CLAIMING,
                Environment.status == Status.FAILED,
                Environment.desired != Desired.ABSENT,
                Environment.generation == Environment.observed_generation,
            )
            return list(session.exec(query))

    def pause_pool(self, silo: str, repository: str, failures: int, until: datetime | None) -> None:
        with self.db.session() as session:
            session.exec(
                update(WarmPool)
                .where(col(WarmPool.silo_name) == silo, col(WarmPool.repository) == repository)
                .values(failures=failures, paused_until=until)
            )
            session.commit()

    def record_pool_size(self, silo: str, repository: str, size: int, key: str) -> None:
        with self.db.session() as session:
            session.exec(
                update(WarmPool)
                .where(
                    col(WarmPool.silo_name) == silo,
                    col(WarmPool.repository) == repository,
                    (col(WarmPool.size) != size) | (col(WarmPool.key) != key),
                )
                .values(size=size, key=key)
            )
            session.commit()

    def pools(self) -> list[WarmPool]:
        with self.db.session() as session:
            return list(session.exec(select(WarmPool).order_by(col(WarmPool.silo_name))))


def _wants_pool(session: Any, silo: str, repository: str) -> bool:
    row = session.get(WarmPool, (silo, repository))
    return row is not None and row.size > 0


#: How long a pool whose instances keep failing waits before making another: doubling.
def pause_after(failures: int) -> timedelta:
    return timedelta(seconds=min(3600.0, 30.0 * 2 ** max(0, failures - 1)))
