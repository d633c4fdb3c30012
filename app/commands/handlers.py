"""Acting on ``/runbot`` PR comments: who may do what, and doing each command exactly once.

The grammar decides what a comment says; the registry says who may ask for it and which
action does it; this module runs that flow for each `issue_comment` delivery. A comment is
acted on once even when its delivery is retried (GitHub outage, worker killed): the ledger
remembers what was decided and replied. People see 👀 when runbot picked the command up, then
👍 or 😕; a reply comment is posted only when there is something to say. Someone below triage
(not the PR's author) gets a capped answer instead, sent later by `answers.py`: no 👀, one
reaction, one reply per PR per interval, within a per-person budget (`limits.py`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from app.access.roles import Role
from app.access.rules import authorize
from app.commands.actions import CommandContext
from app.commands.answers import LimitedAnswers
from app.commands.grammar import Command, CommandError
from app.commands.ledger import Ledger
from app.commands.limits import FloodLimits, is_limited
from app.commands.registry import VOCABULARY, spec
from app.commands.replies import Outcome, failed, mention, refusal_text
from app.db.models import CommentCommand, utcnow
from app.github.comment import render_reply
from app.github.gateway import GitHubError, NotFoundOnGitHub, RetryLater
from app.github.payloads import CommentEvent, comment_event
from app.github.public import public_text
from app.lifecycle.service import LifecycleError

if TYPE_CHECKING:
    from app.db.session import Database
    from app.github.gateway import Gateway
    from app.github.notify import Notifier
    from app.intent.processor import IntentProcessor
    from app.lifecycle.service import Lifecycle

__all__ = ["CommandHandler"]

log = logging.getLogger("runbot.commands")

_CACHE_MAX = 1024


class CommandHandler:
    """The ``command_handler`` of the IntentProcessor: called with each issue_comment payload."""

    def __init__(
        self,
        db: Database,
        lifecycle: Lifecycle,
        gateway: Gateway,
        intent: IntentProcessor,
        notifier: Notifier,
        *,
        app_slug: str | None = None,
        permission_needed: Role = Role.WRITE,
        cache_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        limits: FloodLimits | None = None,
    ) -> None:
        if permission_needed == Role.NONE:
            raise ValueError("commands need at least read permission")
        self.db = db
        self.lifecycle = lifecycle
        self.gateway = gateway
        self.intent = intent
        self.notifier = notifier
        self.ledger = Ledger(db)
        self.app_slug = app_slug
        self.permission_needed = permission_needed
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._permissions: dict[tuple[str, str], tuple[Role, float]] = {}
        #: Limited commenters' answers: the notifier sends them when it has nothing more urgent.
        self.answers = LimitedAnswers(db, gateway, limits or FloodLimits())

    # ----- the flow ----------------------------------------------------------------------------

    async def __call__(self, payload: dict[str, Any]) -> None:
        event = comment_event(payload)
        if event is None:
            return
        parsed = VOCABULARY.parse(event.body, self.app_slug)
        if parsed is None:
            return
        await self._handle(event, parsed)

    async def _handle(self, event: CommentEvent, parsed: Command | CommandError) -> None:
        name = parsed.name if isinstance(parsed, Command) else "invalid"
        record: CommentCommand = self.ledger.begin(event, name)
        if record.status == "done":
            return
        if record.status in ("received", "executing"):
            role = await self._role(event)
            is_author = bool(event.pr_author) and event.author.lower() == event.pr_author.lower()
            if is_limited(role, is_author=is_author) != record.limited:
                record = self.ledger.set(event.comment_id, limited=not record.limited)
        if record.limited:
            await self._execute(event, parsed, record)
            self.notifier.wakeup.set()  # its answer goes out in the notifier's spare slots
            return
        await self._react(event, "eyes")
        record = await self._execute(event, parsed, record)
        if record.status != "executed":
            return  # another worker is executing it right now and will finish it
        if record.reply and record.reply_id is None:
            reply_id = await self.gateway.create_comment(
                event.installation_id, event.repository, event.number, record.reply
            )
            self.ledger.set(event.comment_id, reply_id=reply_id)
        await self._react(event, "+1" if record.outcome == "ok" else "confused")
        self.ledger.set(event.comment_id, status="done")

    async def _execute(
        self, event: CommentEvent, parsed: Command | CommandError, record: CommentCommand
    ) -> CommentCommand:
        """Decide and act, once: the outcome and the reply are in the ledger afterwards."""
        if record.status != "executed":
            if not self.ledger.claim(event.comment_id):
                return record  # another worker is executing it right now and will finish it
            try:
                outcome = await self._outcome(event, parsed)
            except BaseException:
                self.ledger.set(event.comment_id, status="received")  # a retry runs it afresh
                raise
            record = self.ledger.set(
                event.comment_id,
                status="executed",
                outcome=outcome.kind,
                reply=outcome.reply,
            )
            log.info(
                "command %r by %s on %s#%s: %s",
                record.command,
                event.author,
                event.repository,
                event.number,
                outcome.kind,
            )
        return record

    async def _react(self, event: CommentEvent, content: str) -> None:
        """Reactions are courtesy: a deleted comment or a refused reaction must not stop a
        command (RetryLater still propagates, so the delivery is retried after an outage)."""
        try:
            await self.gateway.add_reaction(
                event.installation_id, event.repository, event.comment_id, content
            )
        except RetryLater:
            raise
        except NotFoundOnGitHub:
            log.info("comment %s is gone; no %s reaction", event.comment_id, content)
        except GitHubError as exc:
            log.warning("could not react %s to comment %s: %s", content, event.comment_id, exc)

    # ----- deciding ----------------------------------------------------------------------------

    async def _outcome(self, event: CommentEvent, parsed: Command | CommandError) -> Outcome:
        if isinstance(parsed, CommandError):
            return failed("runbot did not understand that command", parsed.markdown())
        command = spec(parsed.name)
        ctx = CommandContext(
            event,
            parsed,
            self.db,
            self.lifecycle,
            self.gateway,
            self.intent,
            self.notifier,
            VOCABULARY,
        )
        if not command.access.public:
            role = await self._role(event)
            pull = ctx.pull()
            verdict = authorize(
                command.access,
                role,
                is_author=bool(event.pr_author) and event.author.lower() == event.pr_author.lower(),
                pr_state=event.pr_state,
                is_fork=pull.fork if pull else True,
                required=self.permission_needed,
            )
            if not verdict.allowed:
                message = refusal_text(
                    command.name, verdict, role, author_may=command.access.author_may
                )
                text = f"{mention(event.author)}, {message[0].lower()}{message[1:]}"
                return Outcome("refused", render_reply("Not allowed", text))
        self._count_as_activity(ctx)
        try:
            return await command.run(ctx)
        except LifecycleError as exc:
            return failed(f"Could not {parsed.name}", public_text(str(exc)))
        except RetryLater:
            raise
        except GitHubError as exc:
            text = public_text(f"GitHub refused a request: {exc}")
            return failed(f"Could not {parsed.name}", text)

    def _count_as_activity(self, ctx: CommandContext) -> None:
        """An allowed command is activity: it keeps the PR's environment awake
        (`ttl.sleep_after`), whatever the command itself does."""
        env = ctx.live()
        if env is not None:
            self.lifecycle.record_traffic({env.id: utcnow()})

    async def _role(self, event: CommentEvent) -> Role:
        """The commenter's role, cached briefly: a burst of commands costs one API call."""
        key = (event.repository.lower(), event.author.lower())
        now = self.clock()
        cached = self._permissions.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        role = await self.gateway.permission(event.installation_id, event.repository, event.author)
        if len(self._permissions) >= _CACHE_MAX:
            self._permissions = {k: v for k, v in self._permissions.items() if v[1] > now}
            if len(self._permissions) >= _CACHE_MAX:
                self._permissions.clear()
        self._permissions[key] = (role, now + self.cache_seconds)
        return role
