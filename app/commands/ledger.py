"""The comment-command ledger: each `/runbot` comment is acted on once, whatever retries.

A delivery can be retried (GitHub outage, worker killed); the `CommentCommand` row keyed by the
comment id keeps a retry from extending twice or replying twice. Its status moves received →
executing → executed (outcome and reply decided, state changed) → done (reply posted,
reaction set). A limited commenter's row (`app.commands.limits`) waits in "executed" for the
notifier's spare write slots, "answering" while one worker sends it.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from app.db.models import CommentCommand, utcnow
from app.db.session import Database
from app.github.payloads import CommentEvent

#: A command stuck "executing" this long belongs to a worker that died; another may take it.
EXECUTING_TIMEOUT = timedelta(minutes=2)


class Ledger:
    def __init__(self, db: Database) -> None:
        self.db = db

    def begin(self, event: CommentEvent, command: str) -> CommentCommand:
        """The comment's row, recorded now unless another attempt recorded it first."""
        with self.db.session() as session:
            row = session.get(CommentCommand, event.comment_id)
            if row is not None:
                return row
            row = CommentCommand(
                comment_id=event.comment_id,
                repository=event.repository,
                pr_number=event.number,
                author=event.author[:100],
                command=command,
            )
            session.add(row)
            try:
                session.commit()
            except IntegrityError:  # the same comment, recorded by another worker just now
                session.rollback()
                existing = session.get(CommentCommand, event.comment_id)
                assert existing is not None
                return existing
            return row

    def claim(self, comment_id: int) -> bool:
        """Take the right to execute it: exactly one worker wins."""
        now = utcnow()
        with self.db.session() as session:
            result = session.exec(
                update(CommentCommand)
                .where(col(CommentCommand.comment_id) == comment_id)
                .where(
                    or_(
                        col(CommentCommand.status) == "received",
                        (col(CommentCommand.status) == "executing")
                        & (col(CommentCommand.updated_at) < now - EXECUTING_TIMEOUT),
                    )
                )
                .values(status="executing", updated_at=now)
            )
            session.commit()
            return bool(result.rowcount == 1)

    def set(self, comment_id: int, **values: Any) -> CommentCommand:
        with self.db.session() as session:
            row = session.get(CommentCommand, comment_id)
            assert row is not None
            for name, value in values.items():
                setattr(row, name, value)
            row.updated_at = utcnow()
            session.add(row)
            session.commit()
            return row

    # ----- limited commenters' answers -------------------------------------------------------

    def claim_answer(self, skip: Collection[int] = ()) -> CommentCommand | None:
        """Take the oldest limited command still owed its answer (exactly one worker wins)."""
        now = utcnow()
        owed = or_(
            col(CommentCommand.status) == "executed",
            (col(CommentCommand.status) == "answering")
            & (col(CommentCommand.updated_at) < now - EXECUTING_TIMEOUT),
        )
        with self.db.session() as session:
            query = (
                select(CommentCommand.comment_id)
                .where(col(CommentCommand.limited).is_(True), owed)
                .order_by(col(CommentCommand.created_at))
                .limit(20)
            )
            for comment_id in session.exec(query).all():
                if comment_id in skip:
                    continue
                result = session.exec(
                    update(CommentCommand)
                    .where(col(CommentCommand.comment_id) == comment_id, owed)
                    .values(status="answering", updated_at=now)
                )
                session.commit()
                if result.rowcount == 1:
                    return session.get(CommentCommand, comment_id)
        return None

    def spent(self, author: str, since: datetime) -> int:
        """GitHub writes made in answer to ``author``'s commands since then, on every PR."""
        with self.db.session() as session:
            total = session.exec(
                select(func.coalesce(func.sum(CommentCommand.writes), 0)).where(
                    CommentCommand.author == author[:100],
                    col(CommentCommand.created_at) >= since,
                )
            ).one()
        return int(total)

    def recent_reply(
        self, repository: str, number: int, author: str, since: datetime
    ) -> int | None:
        """The reply runbot posted ``author`` on that PR since then, if any (the newest)."""
        with self.db.session() as session:
            return session.exec(
                select(CommentCommand.reply_id)
                .where(
                    CommentCommand.repository == repository,
                    CommentCommand.pr_number == number,
                    CommentCommand.author == author[:100],
                    col(CommentCommand.replied_at) >= since,
                    col(CommentCommand.reply_id).is_not(None),
                )
                .order_by(col(CommentCommand.replied_at).desc())
                .limit(1)
            ).first()
