"""Sleep and wake: the one bookkeeping every path shares (idle tick, budget, command, ingress).

Each change is one conditional UPDATE, so of several callers racing (two scheduler replicas,
an ingress wake and a `/runbot wake`) exactly one does it and learns so (True); the others
change nothing. Sleeping keeps the expiry; waking is activity like a push.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, update
from sqlmodel import col, select

from app.db.models import Environment, utcnow, warning_time
from app.lifecycle.pool import of_a_pr
from app.lifecycle.pulls import mark_pull_dirty
from app.lifecycle.states import Desired, Status
from app.ttl.policy import expiry_after_activity, policy_from_record, sleep_due_at

if TYPE_CHECKING:
    from app.db.session import Database

__all__ = ["SLEEP_REASONS", "TRAFFIC_SKEW", "Sleeping"]

#: Why an environment sleeps (`Environment.sleep_reason`).
SLEEP_REASONS = frozenset({"idle", "command", "budget"})
#: Reported traffic times are clamped to at most this far past runbot's clock: an ingress
#: whose clock runs ahead must not keep an environment awake for ever.
TRAFFIC_SKEW = timedelta(minutes=1)
#: Environments read per statement by `record_traffic`.
TRAFFIC_BATCH = 500


def _new_desire(trigger: str, now: datetime) -> dict[str, Any]:
    """What every change of desire writes besides itself: a new generation for the workers
    to converge (now, not after a retry delay) and a new version for the PR's comment."""
    return {
        "trigger": trigger,
        "generation": Environment.generation + 1,
        "requested_at": now,  # a new generation is a new request (its run's queue wait)
        "sync_version": Environment.sync_version + 1,
        "next_attempt_at": None,
        "updated_at": now,
    }


class Sleeping:
    """The sleep/wake half of `Lifecycle` (mixed in; kept apart to keep each file small)."""

    db: Database

    def put_to_sleep(
        self, env_id: str, reason: str, now: datetime, idle_before: datetime | None = None
    ) -> bool:
        """Ask a ready, awake environment to sleep (``reason``: idle, command or budget).

        With ``idle_before``, only if its last activity is older: a push or a request that
        landed after the caller looked keeps it awake. True for the one caller that did it.
        """
        if reason not in SLEEP_REASONS:
            raise ValueError(f"sleep reason must be one of {sorted(SLEEP_REASONS)}, not {reason!r}")
        conditions = [col(Environment.status) == Status.READY]
        if idle_before is not None:
            conditions.append(col(Environment.last_activity_at) < idle_before)
        return self._sleep(env_id, reason, reason, now, conditions)

    def sleep_by_command(self, env_id: str, trigger: str, now: datetime) -> bool:
        """`/runbot sleep` and the dashboard: any live, awake environment (a failed or
        updating one too: the request is recorded and the next apply honours it)."""
        return self._sleep(env_id, "command", trigger, now, [])

    def _sleep(
        self,
        env_id: str,
        reason: str,
        trigger: str,
        now: datetime,
        conditions: list[ColumnElement[bool]],
    ) -> bool:
        with self.db.session() as session:
            query = (
                update(Environment)
                .where(col(Environment.id) == env_id)
                .where(col(Environment.desired) == Desired.PRESENT)
                .where(col(Environment.status) != Status.DESTROYED)
                .where(of_a_pr())  # asleep, a warm instance could not be claimed
            )
            for condition in conditions:
                query = query.where(condition)
            result = session.exec(
                query.values(
                    desired=Desired.SUSPENDED,
                    slept_at=now,
                    sleep_reason=reason,
                    **_new_desire(trigger, now),
                )
            )
            return self._dirty_if_won(session, env_id, result.rowcount)

    def wake_up(self, env_id: str, trigger: str, now: datetime) -> bool:
        """Want a sleeping environment awake again; waking counts as activity (the expiry
        moves as after a push, never earlier). False when it was not asleep: a no-op."""
        with self.db.session() as session:
            env = session.get(Environment, env_id)
            if env is None or env.desired != Desired.SUSPENDED or env.status == Status.DESTROYED:
                return False
            values: dict[str, Any] = {"sleep_due_at": sleep_due_at(env.ttl, now)}
            if env.expires_at is not None:
                after = expiry_after_activity(policy_from_record(env.ttl), env.created_at, now)
                values["expires_at"] = max(env.expires_at, after)
                values["warn_at"] = warning_time(values["expires_at"], env.ttl)
            result = session.exec(
                update(Environment)
                .where(col(Environment.id) == env_id)
                .where(col(Environment.desired) == Desired.SUSPENDED)
                .where(col(Environment.status) != Status.DESTROYED)
                .values(
                    desired=Desired.PRESENT,
                    slept_at=None,
                    sleep_reason=None,
                    last_activity_at=now,
                    **_new_desire(trigger, now),
                    **values,
                )
            )
            return self._dirty_if_won(session, env_id, result.rowcount)

    def record_traffic(self, seen: dict[str, datetime]) -> int:
        """Requests seen per environment (the ingress's batch): each live one's last activity
        moves to the newest time, never back, and never past runbot's clock plus a minute.
        Unknown ids are ignored. Returns how many rows moved.

        Traffic keeps an environment awake; it does not move the expiry (pushes, commands
        and `/runbot extend` do), so a batch every few seconds edits no PR comment.
        """
        latest = utcnow() + TRAFFIC_SKEW
        for when in seen.values():
            if when.tzinfo is None or when.utcoffset() is None:
                raise ValueError(f"traffic times must be timezone-aware, got {when.isoformat()}")
        wanted = {env_id: min(when, latest) for env_id, when in seen.items()}
        ids = sorted(wanted)
        moved = 0
        with self.db.session() as session:
            for start in range(0, len(ids), TRAFFIC_BATCH):
                rows = session.exec(
                    select(Environment.id, Environment.ttl, Environment.last_activity_at)
                    .where(col(Environment.id).in_(ids[start : start + TRAFFIC_BATCH]))
                    .where(col(Environment.desired) != Desired.ABSENT)
                    .where(col(Environment.status) != Status.DESTROYED)
                ).all()
                for env_id, ttl, last in rows:
                    when = wanted[env_id]
                    if when <= last:
                        continue
                    result = session.exec(
                        update(Environment)
                        .where(col(Environment.id) == env_id)
                        .where(col(Environment.last_activity_at) < when)
                        .values(last_activity_at=when, sleep_due_at=sleep_due_at(ttl, when))
                    )
                    moved += result.rowcount
            session.commit()
        return moved

    @staticmethod
    def _dirty_if_won(session: Any, env_id: str, rowcount: int) -> bool:
        """After a conditional UPDATE: the winner marks the PR's comment stale and commits."""
        if rowcount != 1:
            return False
        env = session.get(Environment, env_id)
        assert env is not None
        mark_pull_dirty(session, env.repository, env.pr_number)
        session.commit()
        return True
