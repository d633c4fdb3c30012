"""Retention: old runs and their logs, the local outbox, the command ledger and the stack caches
are deleted so that nothing runbot keeps grows without end.

What stays, whatever its age: each target's newest `keep_runs` runs (and a target's last run,
which its page links), runs still going, a PR's current status comment in the outbox, ledger rows
of commands not finished, and the cached code of every live silo or environment (its destroy
needs it). Deletes go in batches so no transaction holds a table long; every replica may run the
tick at once (a row two replicas both delete is simply gone).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func
from sqlmodel import col, select

from app.db.models import (
    CommentCommand,
    Environment,
    OutboxMessage,
    PullRequest,
    Run,
    RunLogChunk,
    RunTicket,
    RunTicketLine,
    Silo,
    utcnow,
)
from app.db.session import Database
from app.lifecycle.states import Status
from app.stacks.git import prune_git_cache

__all__ = ["BATCH", "Pruned", "Retention"]

log = logging.getLogger("runbot.schedule")

#: Rows deleted per transaction.
BATCH = 500
#: How long a run ticket is kept after its token expired.
TICKET_RETENTION = timedelta(days=1)
#: Ledger rows in these states are commands not finished: never deleted.
_LEDGER_OPEN = ("received", "executing")


@dataclass(frozen=True)
class Pruned:
    """What one retention pass deleted."""

    runs: int = 0
    outbox: int = 0
    commands: int = 0
    cache_entries: int = 0
    tickets: int = 0


class Retention:
    """Deletes what is past its retention; `prune` is the scheduler's hourly tick."""

    def __init__(
        self,
        db: Database,
        data_dir: Path,
        *,
        run_retention: timedelta = timedelta(days=30),
        keep_runs: int = 5,
        ledger_retention: timedelta = timedelta(days=30),
        cache_retention: timedelta = timedelta(days=14),
    ) -> None:
        self.db = db
        self.data_dir = data_dir
        self.run_retention = run_retention
        self.keep_runs = keep_runs
        self.ledger_retention = ledger_retention
        self.cache_retention = cache_retention

    async def prune(self, now: datetime | None = None) -> Pruned:
        return await asyncio.to_thread(self.prune_sync, now)

    def prune_sync(self, now: datetime | None = None) -> Pruned:
        now = now or utcnow()
        pruned = Pruned(
            runs=self.prune_runs(now),
            outbox=self.prune_outbox(now),
            commands=self.prune_commands(now),
            cache_entries=self.prune_caches(now),
            tickets=self.prune_tickets(now),
        )
        if pruned != Pruned():
            log.info(
                "retention: deleted %d run(s), %d outbox message(s), %d command(s), "
                "%d cache entr(ies), %d run ticket(s)",
                pruned.runs,
                pruned.outbox,
                pruned.commands,
                pruned.cache_entries,
                pruned.tickets,
            )
        return pruned

    # ----- runs and their logs -----------------------------------------------------------------

    def prune_runs(self, now: datetime) -> int:
        """Finished runs older than the retention, past each target's newest `keep_runs`."""
        cutoff = now - self.run_retention
        newest_first = (
            func.row_number()
            .over(
                partition_by=(col(Run.target_kind), col(Run.target_id)),
                order_by=col(Run.id).desc(),
            )
            .label("rank")
        )
        ranked = select(
            col(Run.id).label("id"), newest_first, col(Run.finished_at), col(Run.status)
        ).subquery()
        last_runs = select(col(Environment.last_run_id)).where(
            col(Environment.last_run_id).is_not(None)
        )
        deleted = 0
        while True:
            with self.db.session() as session:
                batch = list(
                    session.exec(
                        select(ranked.c.id)
                        .where(ranked.c.rank > self.keep_runs)
                        .where(ranked.c.status != "running")
                        .where(ranked.c.finished_at < cutoff)
                        .where(ranked.c.id.not_in(last_runs))
                        .limit(BATCH)
                    )
                )
                if batch:
                    session.exec(delete(RunLogChunk).where(col(RunLogChunk.run_id).in_(batch)))
                    session.exec(delete(RunTicketLine).where(col(RunTicketLine.run_id).in_(batch)))
                    session.exec(delete(RunTicket).where(col(RunTicket.run_id).in_(batch)))
                    session.exec(delete(Run).where(col(Run.id).in_(batch)))
                    session.commit()
            deleted += len(batch)
            if len(batch) < BATCH:
                return deleted

    def prune_tickets(self, now: datetime) -> int:
        """Kubernetes run tickets a day past their token's expiry: no pod can use them any
        more, and their pushed lines were copied into the run's log as they came."""
        deleted = 0
        while True:
            with self.db.session() as session:
                batch = list(
                    session.exec(
                        select(RunTicket.run_id)
                        .where(col(RunTicket.expires_at) < now - TICKET_RETENTION)
                        .limit(BATCH)
                    )
                )
                if batch:
                    lines = delete(RunTicketLine).where(col(RunTicketLine.run_id).in_(batch))
                    session.exec(lines)
                    session.exec(delete(RunTicket).where(col(RunTicket.run_id).in_(batch)))
                    session.commit()
            deleted += len(batch)
            if len(batch) < BATCH:
                return deleted

    # ----- local outbox and command ledger -----------------------------------------------------

    def prune_outbox(self, now: datetime) -> int:
        """Local mode's stored GitHub writes; a PR's current status comment stays (it is
        updated in place, so its row must exist)."""
        live_comments = select(col(PullRequest.comment_id)).where(
            col(PullRequest.comment_id).is_not(None)
        )
        return self._delete_old(
            OutboxMessage,
            OutboxMessage.id,
            col(OutboxMessage.created_at) < now - self.run_retention,
            col(OutboxMessage.id).not_in(live_comments),
        )

    def prune_commands(self, now: datetime) -> int:
        """Finished `/runbot` commands. The ledger is what stops a redelivered comment from
        running twice, so its retention is never shorter than the deliveries'."""
        return self._delete_old(
            CommentCommand,
            CommentCommand.comment_id,
            col(CommentCommand.updated_at) < now - self.ledger_retention,
            col(CommentCommand.status).not_in(_LEDGER_OPEN),
        )

    def _delete_old(self, table: Any, key: Any, *conditions: Any) -> int:
        deleted = 0
        while True:
            with self.db.session() as session:
                query = select(key)
                for condition in conditions:
                    query = query.where(condition)
                batch = list(session.exec(query.limit(BATCH)))
                if batch:
                    session.exec(delete(table).where(col(key).in_(batch)))
                    session.commit()
            deleted += len(batch)
            if len(batch) < BATCH:
                return deleted

    # ----- caches ------------------------------------------------------------------------------

    def live_sources(self) -> tuple[frozenset[str], frozenset[str]]:
        """(git commits, repository-stack directories) that live targets were built from."""
        commits: set[str] = set()
        directories: set[str] = set()
        with self.db.session() as session:
            for model in (Silo, Environment):
                query = select(model.stack_source).where(model.status != Status.DESTROYED)
                for source in session.exec(query):
                    if source.get("kind") == "git" and source.get("commit"):
                        commits.add(str(source["commit"]))
                    elif source.get("kind") == "repo" and source.get("url"):
                        directories.add(str(Path(source["url"]).absolute()))
        return frozenset(commits), frozenset(directories)

    def prune_caches(self, now: datetime) -> int:
        """Git trees and mirrors, and repository stacks, unused for the cache retention."""
        # Against the files' mtimes, which the system's clock wrote: deliberately not `now`,
        # so a simulated clock (tests, the cost benchmark) never ages a cache in use.
        older_than = time.time() - self.cache_retention.total_seconds()
        commits, directories = self.live_sources()
        removed = prune_git_cache(self.data_dir / "stacks-cache", commits, older_than)
        repo_stacks = self.data_dir / "repo-stacks"
        if repo_stacks.is_dir():
            for stack_dir in repo_stacks.glob("*/*"):
                if str(stack_dir.absolute()) in directories:
                    continue
                try:
                    unused = stack_dir.stat().st_mtime < older_than
                except OSError:
                    continue
                if unused:
                    shutil.rmtree(stack_dir, ignore_errors=True)
                    removed += 1
        return removed
