"""Which PR's status comment and deployment are owed next, leased to one replica at a time.

The notifier's queue: PRs whose `sync_version` is ahead of `synced_version`, most wanted first
(an outcome to show, then other comments, then the deployment writes of PRs already passing),
leased with a conditional UPDATE so replicas never write the same PR at once; and the PRs set
aside in memory until a state in flux settles.
"""

from __future__ import annotations

import time
from collections.abc import Container
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, update
from sqlmodel import col, select

from app.db.models import Environment, PullRequest, utcnow
from app.db.session import Database
from app.github.writes import IN_FLUX_STATUSES

__all__ = ["SyncQueue"]


class SyncQueue:
    def __init__(self, db: Database, worker_id: str, lease: timedelta) -> None:
        self.db = db
        self.worker_id = worker_id
        self.lease = lease
        #: PR key -> (sync_version, monotonic time): set aside until then, for that version.
        self.held: dict[str, tuple[int, float]] = {}

    def set_aside(self, key: str, version: int, until: float) -> None:
        self.held[key] = (version, until)

    def next_due(self) -> float | None:
        """Seconds until the first PR set aside is due again, if any."""
        clock = time.monotonic()
        # Entries of PRs another replica synced meanwhile are never claimed here again: drop
        # them once long past, so the in-memory bookkeeping stays bounded.
        for key in [k for k, (_, until) in self.held.items() if until < clock - 300]:
            del self.held[key]
        upcoming = [until for _, until in self.held.values() if until > clock]
        return min(upcoming) - clock if upcoming else None

    def claim(self, passing: Container[str] = ()) -> tuple[str, int] | None:
        """Lease the PR that most needs a sync: owed comments first, then deployment writes.

        Candidates are read without locks, then leased one by one with a conditional UPDATE,
        which exactly one replica wins (PostgreSQL re-checks the WHERE after a concurrent
        writer commits), so replicas stay safe without holding row locks while choosing.
        """
        now = utcnow()
        clock = time.monotonic()
        with self.db.session() as session:
            query = (
                select(PullRequest.id, PullRequest.sync_version)
                .where(PullRequest.sync_version != PullRequest.synced_version)
                .where(
                    or_(
                        col(PullRequest.next_sync_at).is_(None),
                        col(PullRequest.next_sync_at) <= now,
                    )
                )
                .where(
                    or_(
                        col(PullRequest.sync_lease_expires_at).is_(None),
                        col(PullRequest.sync_lease_expires_at) < now,
                    )
                )
                .order_by(col(PullRequest.updated_at))
                .limit(200)
            )
            found = []
            for key, version in session.exec(query).all():
                held = self.held.get(key)
                if held is not None and held[0] == version and held[1] > clock:
                    continue
                self.held.pop(key, None)
                found.append((key, version))
            settled = self._settled_pulls(session, [key for key, _ in found])

            # Most wanted first: a comment showing an outcome (a URL, a failure, the end),
            # then other comments, then the deployment writes of PRs whose comment went out;
            # oldest first within each (the sort is stable).
            def rank(item: tuple[str, int]) -> int:
                return 2 if item[0] in passing else (0 if item[0] in settled else 1)

            candidates = sorted(found, key=rank)
            for key, version in candidates:
                result = session.exec(
                    update(PullRequest)
                    .where(col(PullRequest.id) == key)
                    .where(
                        or_(
                            col(PullRequest.sync_lease_expires_at).is_(None),
                            col(PullRequest.sync_lease_expires_at) < now,
                        )
                    )
                    .values(sync_lease_owner=self.worker_id, sync_lease_expires_at=now + self.lease)
                )
                session.commit()
                if result.rowcount == 1:
                    return key, version
        return None

    @staticmethod
    def _settled_pulls(session: Any, keys: list[str]) -> set[str]:
        """Of these PRs, those whose newest environment reached an outcome and rests there."""
        if not keys:
            return set()
        wanted = {key: tuple(key.rsplit("#", 1)) for key in keys}
        repositories = {repo for repo, _ in wanted.values()}
        numbers = {int(number) for _, number in wanted.values() if number.isdigit()}
        newest: dict[tuple[str, int], Environment] = {}
        for env in session.exec(
            select(Environment)
            .where(col(Environment.repository).in_(repositories))
            .where(col(Environment.pr_number).in_(numbers))
            .order_by(col(Environment.created_at))
        ):
            newest[(env.repository, env.pr_number)] = env
        settled = set()
        for key, (repo, number) in wanted.items():
            env = newest.get((repo, int(number))) if number.isdigit() else None
            if (
                env is not None
                and env.generation == env.observed_generation
                and env.status not in IN_FLUX_STATUSES
            ):
                settled.add(key)
        return settled

    def renew(self, key: str) -> None:
        """Extend this worker's lease on a PR's sync while the sync is still going."""
        with self.db.session() as session:
            session.exec(
                update(PullRequest)
                .where(
                    col(PullRequest.id) == key,
                    col(PullRequest.sync_lease_owner) == self.worker_id,
                )
                .values(sync_lease_expires_at=utcnow() + self.lease)
            )
            session.commit()

    def release(
        self, key: str, *, synced: int | None = None, retry_in: float | None = None
    ) -> None:
        with self.db.session() as session:
            pull = session.get(PullRequest, key)
            if pull is None or pull.sync_lease_owner != self.worker_id:
                return
            pull.sync_lease_owner, pull.sync_lease_expires_at = None, None
            if synced is not None:
                pull.synced_version, pull.sync_attempts, pull.next_sync_at = synced, 0, None
            if retry_in is not None:
                pull.sync_attempts += 1
                pull.next_sync_at = utcnow() + timedelta(seconds=retry_in)
            session.add(pull)
            session.commit()
