"""What each command does: from a PR comment (`run_*`) and from the dashboard or API (`act_*`).

Both record desired state through the lifecycle, like every other caller; the registry says
which function serves which command.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import update
from sqlmodel import col

from app.commands.grammar import PREFIX, Command, Vocabulary
from app.commands.replies import Outcome, failed, render_extend_refused
from app.db.models import Environment, PullRequest, Run, utcnow
from app.github.comment import RunSummary, render_reply, render_status_reply
from app.github.payloads import CommentEvent
from app.lifecycle.service import pull_id, ttl_policy_of
from app.lifecycle.states import Desired, Status
from app.ttl.policy import humanize_until

if TYPE_CHECKING:
    from app.db.session import Database
    from app.github.gateway import Gateway
    from app.github.notify import Notifier
    from app.intent.processor import IntentProcessor
    from app.lifecycle.service import Lifecycle


@dataclass
class CommandContext:
    """One comment command being executed, with the collaborators commands act through."""

    event: CommentEvent
    command: Command
    db: Database
    lifecycle: Lifecycle
    gateway: Gateway
    intent: IntentProcessor
    notifier: Notifier
    vocabulary: Vocabulary

    def live(self) -> Environment | None:
        return self.lifecycle.live_environment_for(self.event.repository, self.event.number)

    def pull(self) -> PullRequest | None:
        with self.db.session() as session:
            return session.get(PullRequest, pull_id(self.event.repository, self.event.number))

    async def known_pull(self) -> PullRequest | None:
        """The PR's facts; fetched from GitHub when runbot never got its events (installed
        after the PR was opened, and no resync since)."""
        pull = self.pull()
        if pull is not None:
            return pull
        event = self.event
        for facts in await self.gateway.list_open_pulls(event.installation_id, event.repository):
            if facts.number == event.number:
                self.intent.record_pull(event.repository, facts, None, event.installation_id)
                return self.pull()
        return None

    def set_approved(self, sha: str | None) -> None:
        """A writer's `/runbot deploy` approves the current head (a fork's code, or a PR
        without its required labels); `/runbot destroy` withdraws it."""
        key = pull_id(self.event.repository, self.event.number)
        with self.db.session() as session:
            session.exec(
                update(PullRequest)
                .where(col(PullRequest.id) == key)
                .values(approved_sha=sha, updated_at=utcnow())
            )
            session.commit()


# ----- from a comment --------------------------------------------------------------------------


async def run_help(ctx: CommandContext) -> Outcome:
    return Outcome("ok", render_reply("runbot commands", ctx.vocabulary.usage()))


async def run_status(ctx: CommandContext) -> Outcome:
    pull = ctx.pull()
    env = ctx.lifecycle.latest_environment_for(ctx.event.repository, ctx.event.number)
    view = ctx.notifier.view(pull, env) if pull is not None else None
    if view is None and env is not None:  # an environment made outside a PR's config
        view = ctx.notifier.view(_bare_pull(env), env)
    if view is None:
        text = "runbot has no environment for this pull request."
        if pull is not None and not pull.enabled:
            text += " The default branch has no usable `.runbot.yml`."
        return Outcome("ok", render_reply("No preview environment", text))
    reply = render_status_reply(dataclasses.replace(view, now=utcnow()), _last_run(ctx, env))
    return Outcome("ok", reply)


def _nothing_to(name: str) -> Outcome:
    return failed(
        f"Nothing to {name}",
        f"This pull request has no environment right now. `{PREFIX} status` shows why; "
        f"`{PREFIX} redeploy` creates one.",
    )


async def run_extend(ctx: CommandContext) -> Outcome:
    env = ctx.live()
    if env is None:
        return _nothing_to("extend")
    by = ctx.command.argument
    assert by is not None
    now = utcnow()
    # The operator's `max_ttl` bounds every environment, whatever its config asked for then.
    ceiling = ctx.intent.policy.policy_for(env.repository).max_ttl
    result = ctx.lifecycle.extend(
        env.id, by, trigger="comment", now=now, partial=False, ceiling=ceiling
    )
    if result.capped:
        cap = min(ttl_policy_of(env).max, ceiling)
        text = render_extend_refused(by, result, env.expires_at or now, cap, now)
        return Outcome("refused", render_reply("Cannot extend that far", text))
    return Outcome()


async def run_destroy(ctx: CommandContext) -> Outcome:
    """Destroy the live environment; a destroy that failed is retried now."""
    stuck = ctx.lifecycle.failed_destroys_for(ctx.event.repository, ctx.event.number)
    for failed_env in stuck:
        ctx.lifecycle.destroy_environment(failed_env.id, trigger="comment")
    env = ctx.live()
    if env is None:
        return Outcome() if stuck else _nothing_to("destroy")
    ctx.lifecycle.destroy_environment(
        env.id,
        reason=f"requested by {ctx.event.author} (`{PREFIX} destroy`)",
        trigger="comment",
    )
    # Whoever stopped trusting a fork's (or an unlabelled) PR must not see its next push
    # deployed on the strength of the old approval.
    ctx.set_approved(None)
    return Outcome()


async def _suspend(ctx: CommandContext, suspend: bool) -> Outcome:
    env = ctx.live()
    if env is None:
        return _nothing_to("sleep" if suspend else "wake")
    if (env.desired == Desired.SUSPENDED) != suspend:
        ctx.lifecycle.set_suspended(env.id, suspend, trigger="comment")
    return Outcome()


async def run_sleep(ctx: CommandContext) -> Outcome:
    return await _suspend(ctx, True)


async def run_wake(ctx: CommandContext) -> Outcome:
    return await _suspend(ctx, False)


async def run_deploy(ctx: CommandContext) -> Outcome:
    """Create what policy held back, approving the head for a fork or a missing label."""
    return await _deploy(ctx, redeploy=False)


async def run_redeploy(ctx: CommandContext) -> Outcome:
    """Start over: a failed environment is re-applied, a live one destroyed and created fresh,
    a destroyed one created again."""
    return await _deploy(ctx, redeploy=True)


async def _deploy(ctx: CommandContext, *, redeploy: bool) -> Outcome:
    verb = "redeploy" if redeploy else "deploy"
    env = ctx.live()
    if env is not None and redeploy:
        if env.status == Status.FAILED:
            ctx.lifecycle.retry(env.id, trigger="comment")
        else:
            ctx.lifecycle.redeploy(env.id, trigger="comment")
        return Outcome()
    pull = await ctx.known_pull()
    if pull is None:
        return failed(
            f"Could not {verb}",
            "runbot does not know this pull request as open; push a commit to it and try again.",
        )
    if not redeploy:
        approved = approval_for(ctx.command.commit, pull.head_sha, pull.shown_sha)
        if isinstance(approved, NoApproval) and (env is None or ctx.command.commit):
            return failed("Nothing approved", approved.text)
        if env is not None and (isinstance(approved, NoApproval) or env.head_sha == approved):
            return Outcome(
                "ok",
                render_reply(
                    "Already deployed",
                    f"This pull request already has an environment (`{env.id}`, {env.status})"
                    f" at `{env.head_sha[:7]}`. `{PREFIX} redeploy` starts it over.",
                ),
            )
        assert isinstance(approved, str)  # both ways out of NoApproval returned above
        ctx.set_approved(approved)
    await ctx.intent.reconcile_pull(pull.id, resume=True)
    if ctx.live() is not None:
        return Outcome()
    pull = ctx.pull() or pull
    if pull.config_error:
        why = pull.config_error
    elif not pull.enabled:
        why = "This repository has no `.runbot.yml` on its default branch."
    else:
        why = pull.hold_reason or "runbot's policy for this repository holds it back."
    return failed(f"Could not {verb}", why)


@dataclass(frozen=True)
class NoApproval:
    """Why `/runbot deploy` approves nothing, for the reply."""

    text: str


def approval_for(named: str | None, head: str, shown: str | None) -> str | NoApproval:
    """The commit a `/runbot deploy` approves: the one named (which must be the head or the
    commit the status comment shows), else the head the status comment shows; never a head
    nobody was shown, such as a push that landed while the maintainer was reading."""
    if named is not None:
        for candidate in (head, shown):
            if candidate and candidate.lower().startswith(named):
                return candidate
        showing = f", nor the commit the status comment shows (`{shown[:7]}`)" if shown else ""
        return NoApproval(
            f"`{named}` is not this pull request's head (`{head[:7]}`){showing}. Name the"
            f" commit you reviewed: `{PREFIX} deploy {head[:7]}`."
        )
    if shown:
        return shown
    return NoApproval(
        "runbot has not shown a commit of this pull request yet, so there is nothing a"
        f" reviewer could have seen. Name the commit you reviewed: `{PREFIX} deploy"
        f" {head[:7]}`."
    )


def _last_run(ctx: CommandContext, env: Environment | None) -> RunSummary | None:
    if env is None or env.last_run_id is None:
        return None
    with ctx.db.session() as session:
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


# ----- from the dashboard or the API -----------------------------------------------------------


@dataclass(frozen=True)
class ActionRequest:
    """A dashboard or API action on one environment, already authorized."""

    lifecycle: Lifecycle
    env_id: str
    trigger: str
    who: str  # "alice", "the API", "the dashboard"
    by: timedelta | None = None  # commands that take a duration


@dataclass(frozen=True)
class ActionResult:
    message: str
    environment: Environment
    expires_at: datetime | None = None
    capped: bool | None = None


def act_extend(request: ActionRequest) -> ActionResult:
    assert request.by is not None
    lifecycle = request.lifecycle
    result = lifecycle.extend(request.env_id, request.by, request.trigger, utcnow())
    note = " (capped at the maximum lifetime)" if result.capped else ""
    return ActionResult(
        message=(
            f"expires {humanize_until(result.expires_at, utcnow())}"
            f" ({result.expires_at:%Y-%m-%d %H:%M} UTC){note}"
        ),
        environment=lifecycle.get_environment(request.env_id),
        expires_at=result.expires_at,
        capped=result.capped,
    )


def act_destroy(request: ActionRequest) -> ActionResult:
    row = request.lifecycle.destroy_environment(
        request.env_id, f"destroyed by {request.who}", request.trigger
    )
    return ActionResult(f"{request.env_id} is being destroyed", row)


def act_redeploy(request: ActionRequest) -> ActionResult:
    row = request.lifecycle.redeploy(request.env_id, request.trigger)
    return ActionResult(f"redeploying as {row.id}", row)


def act_sleep(request: ActionRequest) -> ActionResult:
    row = request.lifecycle.set_suspended(request.env_id, True, request.trigger)
    return ActionResult(f"{request.env_id} is going to sleep", row)


def act_wake(request: ActionRequest) -> ActionResult:
    row = request.lifecycle.set_suspended(request.env_id, False, request.trigger)
    return ActionResult(f"{request.env_id} is waking up", row)
