"""Acting on ``/runbot`` PR comments: who may do what, and doing each command exactly once.

The grammar (``grammar.py``) decides what a comment says; this module decides whether the
person may ask for it and then records the desired state through the lifecycle, like every
other caller. A comment is acted on once even when its delivery is retried (GitHub outage,
worker killed): the ``CommentCommand`` ledger row keyed by the comment id remembers what was
decided and replied. People see 👀 when runbot picked the command up, then 👍 or 😕; a reply
comment is posted only when there is something to say.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError

from app.commands.grammar import PREFIX, Command, CommandError, parse_comment, usage
from app.db.models import CommentCommand, Environment, PullRequest, Run, utcnow
from app.github.comment import RunSummary, render_reply, render_status_reply
from app.github.gateway import GitHubError, NotFoundOnGitHub, RetryLater
from app.github.payloads import CommentEvent, comment_event
from app.lifecycle.service import LifecycleError, pull_id, ttl_policy_of
from app.lifecycle.states import Desired, Status
from app.ttl.durations import format_duration
from app.ttl.policy import ExtendResult, humanize_until

if TYPE_CHECKING:
    from app.db.session import Database
    from app.github.gateway import Gateway
    from app.github.notify import Notifier
    from app.intent.processor import IntentProcessor
    from app.lifecycle.service import Lifecycle
    from app.web.app import Loops

__all__ = [
    "AUTHOR_COMMANDS",
    "PERMISSION_LEVELS",
    "PUBLIC_COMMANDS",
    "CommandHandler",
    "Decision",
    "Outcome",
    "authorize",
    "level_at_least",
    "render_extend_refused",
]

log = logging.getLogger("runbot.commands")

#: GitHub repository roles, weakest first.
PERMISSION_LEVELS = ("none", "read", "triage", "write", "maintain", "admin")
#: Read-only commands anyone may run, also on closed PRs.
PUBLIC_COMMANDS = frozenset({"help", "status"})
#: What a PR's author may do to its own environment without the configured role. Not deploy or
#: redeploy: for a fork those run code nobody with write access has looked at yet.
AUTHOR_COMMANDS = frozenset({"extend", "destroy", "sleep", "wake"})
#: A command stuck "executing" this long belongs to a worker that died; another may take it.
EXECUTING_TIMEOUT = timedelta(minutes=2)
_LOGIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})")
_CACHE_MAX = 1024


def level_at_least(have: str, want: str) -> bool:
    """Roles are ordered; an unknown role (a custom one GitHub did not map) counts as none."""
    rank = PERMISSION_LEVELS.index(have) if have in PERMISSION_LEVELS else 0
    return rank >= PERMISSION_LEVELS.index(want)


@dataclass(frozen=True)
class Decision:
    """Whether a command may run; when not, ``message`` is the polite sentence to reply with."""

    allowed: bool
    needed: str | None = None
    message: str = ""


def authorize(
    command: str,
    permission: str,
    *,
    is_author: bool,
    pr_state: str,
    is_fork: bool,
    required: str = "write",
) -> Decision:
    """The permission matrix, as a pure function so every cell is tested.

    ``required`` is RUNBOT_COMMAND_PERMISSION. ``deploy`` approves running the PR's code (a
    fork's, or one missing its label), so it needs at least write whatever the setting says.
    """
    if command in PUBLIC_COMMANDS:
        return Decision(True)
    if pr_state != "open":
        return Decision(
            False,
            message=f"This pull request is closed, so runbot only answers `{PREFIX} status` and "
            f"`{PREFIX} help` here.",
        )
    needed = required
    if command == "deploy" and not level_at_least(required, "write"):
        needed = "write"
    if level_at_least(permission, needed):
        return Decision(True)
    if is_author and command in AUTHOR_COMMANDS:
        return Decision(True)
    have = permission if permission in PERMISSION_LEVELS else "none"
    if command == "deploy" and is_author and is_fork:
        message = (
            f"`{PREFIX} deploy` approves running this pull request's code, so someone with "
            f"**{needed}** permission on the repository has to comment it; the author of a "
            "pull request from a fork cannot approve it."
        )
    elif command in AUTHOR_COMMANDS:
        message = (
            f"`{PREFIX} {command}` needs **{needed}** permission on this repository, or being "
            f"this pull request's author; your permission here is **{have}**."
        )
    else:
        message = (
            f"`{PREFIX} {command}` needs **{needed}** permission on this repository; your "
            f"permission here is **{have}**."
        )
    return Decision(False, needed=needed, message=message)


def _mention(login: str) -> str:
    return f"@{login}" if _LOGIN.fullmatch(login) else "You"


def _utc(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def render_extend_refused(
    by: timedelta,
    result: ExtendResult,
    current_expiry: datetime,
    max_lifetime: timedelta,
    now: datetime,
) -> str:
    """Why an extend was refused: the cap, when it falls, and the most that still fits."""
    room = result.cap - max(current_expiry, now)
    lines = [
        f"Extending by {format_duration(by)} would pass this environment's maximum lifetime of "
        f"{format_duration(max_lifetime)} from its creation (`ttl.max` in `.runbot.yml`): it "
        f"can live until {_utc(result.cap)} ({humanize_until(result.cap, now)}) at most, so "
        "nothing was changed.",
    ]
    seconds = int(room.total_seconds())
    if seconds >= 3600:  # "3h59m" reads better than "3h59m58s", and stays within the cap
        seconds -= seconds % 60
    whole = timedelta(seconds=seconds)
    if whole >= timedelta(seconds=1):
        most = format_duration(whole)
        lines.append(f"The most it can still be extended by is {most}: `{PREFIX} extend {most}`.")
    else:
        lines.append("It already expires at that cap.")
    lines.append(
        f"To keep working after that, `{PREFIX} redeploy` starts a fresh environment with a new "
        "lifetime."
    )
    return "\n\n".join(lines)


@dataclass(frozen=True)
class Outcome:
    """What a command came to: ``kind`` ok (👍), refused or failed (😕); ``reply`` is posted
    when not None."""

    kind: str = "ok"
    reply: str | None = None


def _failed(title: str, text: str) -> Outcome:
    return Outcome("failed", render_reply(title, text))


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
        permission_needed: str = "write",
        cache_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if permission_needed not in PERMISSION_LEVELS[1:]:
            raise ValueError(f"unknown permission {permission_needed!r}")
        self.db = db
        self.lifecycle = lifecycle
        self.gateway = gateway
        self.intent = intent
        self.notifier = notifier
        self.app_slug = app_slug
        self.permission_needed = permission_needed
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._permissions: dict[tuple[str, str], tuple[str, float]] = {}

    @classmethod
    def for_loops(cls, loops: Loops) -> CommandHandler:
        settings = loops.rt.settings
        return cls(
            loops.rt.db,
            loops.rt.lifecycle,
            loops.gateway,
            loops.intent,
            loops.notifier,
            app_slug=settings.github_app_slug,
            permission_needed=settings.command_permission,
        )

    # ----- the flow ----------------------------------------------------------------------------

    async def __call__(self, payload: dict[str, Any]) -> None:
        event = comment_event(payload)
        if event is None:
            return
        parsed = parse_comment(event.body, self.app_slug)
        if parsed is None:
            return
        await self._handle(event, parsed)

    async def _handle(self, event: CommentEvent, parsed: Command | CommandError) -> None:
        record = self._begin(event, parsed)
        if record.status == "done":
            return
        await self._react(event, "eyes")
        if record.status != "executed":
            if not self._claim(event.comment_id):
                return  # another worker is executing it right now and will finish it
            try:
                outcome = await self._outcome(event, parsed)
            except BaseException:
                self._set(event.comment_id, status="received")  # a retry executes it afresh
                raise
            record = self._set(
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
        if record.reply and record.reply_id is None:
            reply_id = await self.gateway.create_comment(
                event.installation_id, event.repository, event.number, record.reply
            )
            self._set(event.comment_id, reply_id=reply_id)
        await self._react(event, "+1" if record.outcome == "ok" else "confused")
        self._set(event.comment_id, status="done")

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

    # ----- the ledger --------------------------------------------------------------------------

    def _begin(self, event: CommentEvent, parsed: Command | CommandError) -> CommentCommand:
        name = parsed.name if isinstance(parsed, Command) else "invalid"
        with self.db.session() as session:
            row = session.get(CommentCommand, event.comment_id)
            if row is not None:
                return row
            row = CommentCommand(
                comment_id=event.comment_id,
                repository=event.repository,
                pr_number=event.number,
                author=event.author[:100],
                command=name,
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

    def _claim(self, comment_id: int) -> bool:
        now = utcnow()
        with self.db.session() as session:
            result = session.execute(
                update(CommentCommand)
                .where(CommentCommand.comment_id == comment_id)
                .where(
                    or_(
                        CommentCommand.status == "received",
                        (CommentCommand.status == "executing")
                        & (CommentCommand.updated_at < now - EXECUTING_TIMEOUT),
                    )
                )
                .values(status="executing", updated_at=now)
            )
            session.commit()
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def _set(self, comment_id: int, **values: Any) -> CommentCommand:
        with self.db.session() as session:
            row = session.get(CommentCommand, comment_id)
            assert row is not None
            for name, value in values.items():
                setattr(row, name, value)
            row.updated_at = utcnow()
            session.add(row)
            session.commit()
            return row

    # ----- deciding ----------------------------------------------------------------------------

    async def _outcome(self, event: CommentEvent, parsed: Command | CommandError) -> Outcome:
        if isinstance(parsed, CommandError):
            return _failed("runbot did not understand that command", parsed.markdown())
        if parsed.name == "help":
            return Outcome("ok", render_reply("runbot commands", usage()))
        pull = self._pull(event)
        if parsed.name == "status":
            return Outcome("ok", self._status(event, pull))
        permission = await self._permission(event)
        decision = authorize(
            parsed.name,
            permission,
            is_author=bool(event.pr_author) and event.author.lower() == event.pr_author.lower(),
            pr_state=event.pr_state,
            is_fork=pull.fork if pull else True,
            required=self.permission_needed,
        )
        if not decision.allowed:
            text = f"{_mention(event.author)}, {decision.message[0].lower()}{decision.message[1:]}"
            return Outcome("refused", render_reply("Not allowed", text))
        try:
            return await self._execute(event, parsed)
        except LifecycleError as exc:
            return _failed(f"Could not {parsed.name}", str(exc))
        except RetryLater:
            raise
        except GitHubError as exc:
            return _failed(f"Could not {parsed.name}", f"GitHub refused a request: {exc}")

    async def _permission(self, event: CommentEvent) -> str:
        """The commenter's role, cached briefly: a burst of commands costs one API call."""
        key = (event.repository.lower(), event.author.lower())
        now = self.clock()
        cached = self._permissions.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        permission = await self.gateway.permission(
            event.installation_id, event.repository, event.author
        )
        if len(self._permissions) >= _CACHE_MAX:
            self._permissions = {k: v for k, v in self._permissions.items() if v[1] > now}
            if len(self._permissions) >= _CACHE_MAX:
                self._permissions.clear()
        self._permissions[key] = (permission, now + self.cache_seconds)
        return permission

    def _pull(self, event: CommentEvent) -> PullRequest | None:
        with self.db.session() as session:
            return session.get(PullRequest, pull_id(event.repository, event.number))

    async def _known_pull(self, event: CommentEvent) -> PullRequest | None:
        """The PR's facts; fetched from GitHub when runbot never got its events (installed
        after the PR was opened, and no resync since)."""
        pull = self._pull(event)
        if pull is not None:
            return pull
        for info in await self.gateway.list_open_pulls(event.installation_id, event.repository):
            if info.number == event.number:
                self.intent.record_pull(event.repository, info, None, event.installation_id)
                return self._pull(event)
        return None

    def _live(self, event: CommentEvent) -> Environment | None:
        return self.lifecycle.live_environment_for(event.repository, event.number)

    # ----- doing -------------------------------------------------------------------------------

    async def _execute(self, event: CommentEvent, command: Command) -> Outcome:
        name = command.name
        if name in ("deploy", "redeploy"):
            return await self._deploy(event, redeploy=name == "redeploy")
        env = self._live(event)
        if env is None:
            return _failed(
                f"Nothing to {name}",
                f"This pull request has no environment right now. `{PREFIX} status` shows why; "
                f"`{PREFIX} redeploy` creates one.",
            )
        if name == "extend":
            assert command.argument is not None
            now = utcnow()
            result = self.lifecycle.extend(
                env.id, command.argument, trigger="comment", now=now, partial=False
            )
            if result.capped:
                text = render_extend_refused(
                    command.argument,
                    result,
                    env.expires_at or now,
                    ttl_policy_of(env).max,
                    now,
                )
                return Outcome("refused", render_reply("Cannot extend that far", text))
            return Outcome()
        if name == "destroy":
            self.lifecycle.destroy_environment(
                env.id,
                reason=f"requested by {event.author} (`{PREFIX} destroy`)",
                trigger="comment",
            )
            # Whoever stopped trusting a fork's (or an unlabelled) PR must not see its next
            # push deployed on the strength of the old approval.
            self._set_approved(pull_id(event.repository, event.number), None)
            return Outcome()
        suspend = name == "sleep"
        if (env.desired == Desired.SUSPENDED) != suspend:
            self.lifecycle.set_suspended(env.id, suspend, trigger="comment")
        return Outcome()

    async def _deploy(self, event: CommentEvent, *, redeploy: bool) -> Outcome:
        """deploy: create what policy held back. redeploy: start over (a failed environment is
        re-applied, a live one destroyed and created fresh, a destroyed one created again)."""
        env = self._live(event)
        if env is not None:
            if not redeploy:
                return Outcome(
                    "ok",
                    render_reply(
                        "Already deployed",
                        f"This pull request already has an environment (`{env.id}`, {env.status})."
                        f" `{PREFIX} redeploy` starts it over.",
                    ),
                )
            if env.status == Status.FAILED:
                self.lifecycle.retry(env.id, trigger="comment")
            else:
                self.lifecycle.redeploy(env.id, trigger="comment")
            return Outcome()
        pull = await self._known_pull(event)
        if pull is None:
            return _failed(
                f"Could not {'redeploy' if redeploy else 'deploy'}",
                "runbot does not know this pull request as open; push a commit to it and try "
                "again.",
            )
        if not redeploy:
            self._set_approved(pull.id, pull.head_sha)
        await self.intent.reconcile_pull(pull.id, resume=True)
        if self._live(event) is not None:
            return Outcome()
        pull = self._pull(event) or pull
        if pull.config_error:
            why = pull.config_error
        elif not pull.enabled:
            why = "This repository has no `.runbot.yml` on the pull request's base branch."
        else:
            why = pull.hold_reason or "runbot's policy for this repository holds it back."
        return _failed(f"Could not {'redeploy' if redeploy else 'deploy'}", why)

    def _set_approved(self, key: str, sha: str | None) -> None:
        """A writer's `/runbot deploy` approves the current head (a fork's code, or a PR
        without its required labels); `/runbot destroy` withdraws it."""
        with self.db.session() as session:
            session.execute(
                update(PullRequest)
                .where(PullRequest.id == key)
                .values(approved_sha=sha, updated_at=utcnow())
            )
            session.commit()

    def _status(self, event: CommentEvent, pull: PullRequest | None) -> str:
        env = self.lifecycle.latest_environment_for(event.repository, event.number)
        view = self.notifier.view(pull, env) if pull is not None else None
        if view is None and env is not None:  # an environment made outside a PR's config
            view = self.notifier.view(_bare_pull(env), env)
        if view is None:
            text = "runbot has no environment for this pull request."
            if pull is not None and not pull.enabled:
                text += " The base branch has no usable `.runbot.yml`."
            return render_reply("No preview environment", text)
        return render_status_reply(dataclasses.replace(view, now=utcnow()), self._last_run(env))

    def _last_run(self, env: Environment | None) -> RunSummary | None:
        if env is None or env.last_run_id is None:
            return None
        with self.db.session() as session:
            run = session.get(Run, env.last_run_id)
        if run is None or run.id is None:
            return None
        return RunSummary(run.id, run.operation, run.status, run.started_at, run.finished_at)


def _bare_pull(env: Environment) -> PullRequest:
    """Stand-in PR facts for an environment whose PR runbot never recorded (CLI-made)."""
    return PullRequest(
        id=pull_id(env.repository, env.pr_number),
        repository=env.repository,
        number=env.pr_number,
        enabled=True,
        updated_at=env.updated_at,
    )
