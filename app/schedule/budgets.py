"""The budget tick: at 100% of a monthly budget idle environments sleep; a budget raised (or
a new month) lets the PRs it held go on; a level crossed re-renders the status comments.

Every replica runs it; each step is idempotent: `Lifecycle.put_to_sleep` is a conditional
UPDATE one replica wins, re-deciding a PR that is still held changes nothing, and a redundant
re-render is deduplicated by the comment's digest.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, update
from sqlmodel import col, select

from app.cost.budget import Level
from app.db.budgets import Levels, Scope, levels
from app.db.models import Environment, PullRequest, utcnow
from app.db.session import Database
from app.lifecycle.pool import of_a_pr
from app.lifecycle.service import Lifecycle
from app.lifecycle.states import Desired, HoldKind, Status
from app.policy.model import PolicyFile

__all__ = ["IDLE_WINDOW", "BudgetReport", "BudgetTick"]

log = logging.getLogger("runbot.schedule")

#: At 100% of a budget, an environment with no activity for this long is put to sleep (one
#: in use is left awake: the budget stops new spending, it does not pull the rug).
IDLE_WINDOW = timedelta(minutes=15)


@dataclass(frozen=True)
class BudgetReport:
    slept: tuple[str, ...] = ()
    #: Scopes whose level changed since this replica's previous tick.
    changed: tuple[Scope, ...] = ()
    redecided: bool = False


class BudgetTick:
    def __init__(
        self,
        db: Database,
        lifecycle: Lifecycle,
        policy: Callable[[], PolicyFile],
        *,
        redecide: Callable[[], Awaitable[None]] | None = None,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.lifecycle = lifecycle
        self.policy = policy
        #: Re-decides the open PRs held by `HoldKind.BUDGET` (the intent processor's).
        self.redecide = redecide
        self.wake = wake
        self._seen: dict[Scope, Level] | None = None  # None: no tick yet in this process

    async def tick(self, now: datetime | None = None) -> BudgetReport:
        now = now or utcnow()
        with self.db.session() as session:
            current = levels(session, self.policy(), now)
        slept = self._sleep_idle(current, now)
        before = self._seen or {}
        scopes = set(before) | set(current.by_scope)
        changed = tuple(
            sorted(
                s for s in scopes if before.get(s, Level.OK) != current.by_scope.get(s, Level.OK)
            )
        )
        if changed:
            self._mark_dirty(changed)
        # A scope left REACHED (a raised budget, a new month), or this process just started:
        # the PRs the budget held are decided again.
        lifted = self._seen is None or any(
            before.get(s) is Level.REACHED and current.by_scope.get(s) is not Level.REACHED
            for s in scopes
        )
        self._seen = dict(current.by_scope)
        if lifted and self.redecide is not None and self._any_held():
            await self.redecide()
        if slept or changed:
            self.wake()
        return BudgetReport(tuple(slept), changed, lifted)

    def policy_reloaded(self) -> None:
        """A new policy: decide held PRs again on the next tick, whatever the levels say."""
        self._seen = None

    def _sleep_idle(self, current: Levels, now: datetime) -> list[str]:
        repos, silos = current.reached("repository"), current.reached("silo")
        if not repos and not silos:
            return []
        with self.db.session() as session:
            candidates = list(
                session.exec(
                    select(Environment.id)
                    .where(Environment.desired == Desired.PRESENT)
                    .where(Environment.status == Status.READY)
                    .where(of_a_pr())  # the pool keeper retires unclaimed ones instead
                    .where(
                        or_(
                            col(Environment.repository).in_(repos),
                            col(Environment.silo_name).in_(silos),
                        )
                    )
                )
            )
        slept = [
            env_id
            for env_id in candidates
            if self.lifecycle.put_to_sleep(env_id, "budget", now, idle_before=now - IDLE_WINDOW)
        ]
        if slept:
            log.info("budget reached: put %d idle environment(s) to sleep", len(slept))
        return slept

    def _mark_dirty(self, scopes: tuple[Scope, ...]) -> None:
        """The status comments of PRs under these scopes show the budget: render them again."""
        repos = [name for kind, name in scopes if kind == "repository"]
        silos = [name for kind, name in scopes if kind == "silo"]
        with self.db.session() as session:
            if silos:
                rows = session.exec(
                    select(Environment.repository)
                    .where(col(Environment.silo_name).in_(silos))
                    .where(Environment.status != Status.DESTROYED)
                )
                repos += list(set(rows))
            if repos:
                session.exec(
                    update(PullRequest)
                    .where(col(PullRequest.repository).in_(repos))
                    .where(col(PullRequest.state) == "open")
                    .values(sync_version=PullRequest.sync_version + 1)
                )
            session.commit()

    def _any_held(self) -> bool:
        with self.db.session() as session:
            return (
                session.exec(
                    select(PullRequest.id)
                    .where(PullRequest.hold_kind == HoldKind.BUDGET)
                    .where(PullRequest.state == "open")
                    .limit(1)
                ).first()
                is not None
            )
