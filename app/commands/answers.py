"""Sending limited commenters their capped answers, in the write slots status comments leave.

A command from someone below triage is decided and acted on at once (`handlers.py`), but what
runbot says back waits in the ledger. The notifier calls `send_one` only when no PR is owed a
status-comment or deployment write it could send, so a flood of commands never stands between
a PR and its status comment; `app.commands.limits` decides how much each answer may cost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from app.commands.ledger import Ledger
from app.commands.limits import FloodLimits, Step, plan_answer
from app.commands.replies import mention
from app.db.models import CommentCommand, utcnow
from app.db.session import Database
from app.github.gateway import Gateway, GitHubError, NotFoundOnGitHub, RetryLater

__all__ = ["LimitedAnswers", "folded_note"]

log = logging.getLogger("runbot.commands")


def folded_note(author: str, limits: FloodLimits) -> str:
    """The line under a reply that was edited to answer a newer command."""
    minutes = max(1, round(limits.reply_interval.total_seconds() / 60))
    return (
        f"_This reply was edited to answer {mention(author)}'s latest command: runbot posts at "
        f"most one new reply per person and pull request every {minutes} min._"
    )


class LimitedAnswers:
    """The notifier's idle work: one limited command's answer per call."""

    def __init__(
        self,
        db: Database,
        gateway: Gateway,
        limits: FloodLimits,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ledger = Ledger(db)
        self.gateway = gateway
        self.limits = limits
        self.clock = clock
        self._held: dict[int, float] = {}  # comment id -> monotonic time it may be retried

    async def send_one(self) -> bool:
        """Answer the oldest limited command owed one; False when none is (nothing was sent)."""
        now = self.clock()
        self._held = {k: until for k, until in self._held.items() if until > now}
        row = self.ledger.claim_answer(skip=self._held)
        if row is None:
            return False
        try:
            await self._answer(row)
        except RetryLater as exc:
            self._held[row.comment_id] = self.clock() + max(exc.retry_after, 1.0)
            self.ledger.set(row.comment_id, status="executed")
            log.warning("answer to comment %s postponed: %s", row.comment_id, exc)
        except GitHubError as exc:  # a courtesy: never retried forever
            log.warning("could not answer comment %s: %s", row.comment_id, exc)
            self.ledger.set(row.comment_id, status="done")
        return True

    async def drain(self) -> None:
        """Send every answer owed now (the CLI and tests, which run no notifier loop)."""
        while await self.send_one():
            pass

    async def _answer(self, row: CommentCommand) -> None:
        now = utcnow()
        recent = self.ledger.recent_reply(
            row.repository, row.pr_number, row.author, now - self.limits.reply_interval
        )
        steps = plan_answer(
            has_reply=row.reply is not None and row.reply_id is None,
            recent_reply=recent,
            spent=self.ledger.spent(row.author, now - self.limits.window),
            limits=self.limits,
        )
        writes = row.writes
        for step in steps:
            if step is Step.REACT:
                content = "+1" if row.outcome == "ok" else "confused"
                try:
                    await self.gateway.add_reaction(None, row.repository, row.comment_id, content)
                except NotFoundOnGitHub:
                    log.info("comment %s is gone; no %s reaction", row.comment_id, content)
                writes += 1
                self.ledger.set(row.comment_id, writes=writes)
                continue
            assert row.reply is not None
            if step is Step.EDIT_REPLY and recent is not None:
                body = f"{row.reply}\n\n{folded_note(row.author, self.limits)}"
                try:
                    await self.gateway.update_comment(None, row.repository, recent, body)
                    writes += 1
                    self.ledger.set(row.comment_id, reply_id=recent, writes=writes)
                    continue
                except NotFoundOnGitHub:
                    writes += 1  # someone deleted it: post a fresh one
            reply_id = await self.gateway.create_comment(
                None, row.repository, row.pr_number, row.reply
            )
            writes += 1
            self.ledger.set(row.comment_id, reply_id=reply_id, replied_at=now, writes=writes)
        if len(steps) < 1 + (row.reply is not None):
            log.info(
                "%s is over the command answer budget: comment %s gets %d of its writes",
                row.author,
                row.comment_id,
                len(steps),
            )
        self.ledger.set(row.comment_id, status="done")
