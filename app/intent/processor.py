"""Recorded deliveries → facts about PRs → desired environment state.

Events only update what runbot knows about a PR (head, state, labels, draft...). One idempotent,
level-triggered method, `reconcile_pull`, then gathers the facts, asks the pure `decide_pull`,
and applies its decision. Resync calls the same method, so a missed, duplicated or late webhook
cannot leave a PR in a wrong state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlmodel import col, func, select

from app.cost.budget import Level
from app.db.budgets import standing_of
from app.db.leases import kept_alive
from app.db.models import Delivery, Environment, PullRequest, Run, utcnow
from app.db.session import Database
from app.github import payloads
from app.github.config import RepoConfig
from app.github.config_errors import ConfigError
from app.github.gateway import Gateway, GitHubError, RetryLater
from app.github.intake import ACTIVITY, parse_json
from app.github.payloads import PullFacts
from app.intent.bounds import refusals
from app.intent.configs import ConfigPrefetch, ConfigReader
from app.intent.creates import start_environment, want_pool
from app.intent.decide import (
    CUTOFF_HOLDS,
    Create,
    Decision,
    Destroy,
    Hold,
    HoldKind,
    Keep,
    Live,
    NeedCI,
    PullState,
    Update,
    decide_pull,
)
from app.intent.deliveries import DeliveryQueue
from app.intent.installations import Installations
from app.intent.sources import SiloChooser
from app.lifecycle.pool import of_a_pr
from app.lifecycle.service import Lifecycle, LifecycleError, pull_id
from app.lifecycle.states import Desired, Status
from app.logging import log_context
from app.policy.checks import Violation
from app.policy.store import PolicyStore
from app.stacks.catalog import StackError

CommandHandler = Callable[[dict[str, Any]], Awaitable[None]]

log = logging.getLogger("runbot.intent")

#: Triggers of a deliberate teardown (TTL reaper, `/runbot destroy`): the PR stays without an
#: environment until a new commit or `/runbot redeploy`, instead of being re-created by resync.
STOP_TRIGGERS = frozenset({"ttl", "comment"})
#: Holds whose teardown is recorded under their own kind as trigger (others: "policy").
CUTOFF_KINDS = frozenset(CUTOFF_HOLDS.values())
#: A push that arrives while the previous change is still being applied is part of a burst (a
#: rebase pushed commit by commit, a bot): its apply waits until pushes stop for this long, so
#: a burst costs two applies (its first push, then its last) rather than one per engine run.
#: A single push to an idle environment never waits.
PUSH_QUIET_SECONDS = 2.0
#: ... but a change never waits longer than this after the start of the latest run.
PUSH_QUIET_MAX_SECONDS = 30.0
#: Pause between two deliveries processed while webhooks keep arriving (bounds, in seconds).
INTAKE_YIELD_MIN, INTAKE_YIELD_MAX = 0.02, 0.25


def cancel_unused(future: asyncio.Future[Any]) -> None:
    """Stop a read nobody consumed; its outcome is collected so no error is reported lost."""
    future.cancel()
    future.add_done_callback(lambda done: done.cancelled() or done.exception())


def pull_state(pull: PullRequest) -> PullState:
    return PullState(
        state=pull.state,
        head_sha=pull.head_sha,
        head_ref=pull.head_ref,
        draft=pull.draft,
        fork=pull.fork,
        labels=tuple(pull.labels),
        approved_sha=pull.approved_sha,
    )


def live_of(env: Environment | None) -> Live | None:
    if env is None:
        return None
    return Live(
        head_sha=env.head_sha,
        head_ref=env.head_ref,
        deployed_sha=env.deployed_sha,
        busy=env.generation != env.observed_generation or bool(env.lease_owner),
    )


class IntentProcessor:
    def __init__(
        self,
        db: Database,
        lifecycle: Lifecycle,
        gateway: Gateway,
        data_dir: Path,
        *,
        worker_id: str,
        lease_seconds: float = 60.0,
        policy: PolicyStore | None = None,
    ) -> None:
        self.db = db
        self.policy = policy or PolicyStore()
        self.lifecycle = lifecycle
        self.gateway = gateway
        self.worker_id = worker_id
        self.lease = timedelta(seconds=lease_seconds)
        self.deliveries = DeliveryQueue(db, self.lease)
        self.silos = SiloChooser(db, lifecycle, gateway, data_dir)
        self.configs = ConfigReader(gateway)
        self.installations = Installations(db, lifecycle)
        self.wakeup = asyncio.Event()
        self.command_handler: CommandHandler | None = None
        self.on_change: Callable[[], None] = lambda: None

    # ----- delivery queue ----------------------------------------------------------------------

    def hint(self, delivery_id: str) -> None:
        """A delivery was just recorded by this process: wake up (and lease it first)."""
        self.deliveries.hint(delivery_id)
        self.wakeup.set()

    async def process_one(self) -> bool:
        delivery = self.deliveries.claim()
        if delivery is None:
            return False
        with log_context(delivery_id=delivery.id):
            return await self._process(delivery)

    async def _process(self, delivery: Delivery) -> bool:
        try:
            payload = parse_json(delivery.payload)
            renew = lambda: self.deliveries.renew(delivery.id)  # noqa: E731
            async with kept_alive(renew, self.lease.total_seconds() / 3):
                handled = await self.handle(delivery.event, payload)
        except RetryLater as exc:
            # GitHub is down or limiting us: leave it pending; the lease lapses and it retries.
            log.warning("delivery %s: GitHub unavailable, retrying later: %s", delivery.id, exc)
            self.deliveries.retry_in(delivery.id, exc.retry_after)
            return True
        except Exception as exc:
            log.exception("delivery %s failed", delivery.id)
            self.deliveries.finish(delivery.id, "failed", f"{type(exc).__name__}: {exc}")
            return True
        outcome = "processed" if handled else "ignored"
        self.deliveries.finish(delivery.id, outcome)
        log.info(
            "delivery %s (%s%s) %s",
            delivery.id,
            delivery.event,
            f".{delivery.action}" if delivery.action else "",
            outcome,
        )
        self.on_change()
        return True

    async def run(self, stop: asyncio.Event, poll_interval: float = 1.0) -> None:
        while not stop.is_set():
            self.wakeup.clear()
            while not stop.is_set():
                started = time.monotonic()
                if not await self.process_one():
                    break
                if ACTIVITY.busy():
                    # Deliveries are pouring in, and processing shares the event loop with
                    # their acknowledgement (GitHub allows 10 s for it): step aside so that
                    # processing takes at most ~1/10 of the loop while the flood lasts. The
                    # backlog then drains at full speed.
                    spent = time.monotonic() - started
                    await asyncio.sleep(min(INTAKE_YIELD_MAX, max(INTAKE_YIELD_MIN, 9 * spent)))
            waiters = [asyncio.create_task(self.wakeup.wait()), asyncio.create_task(stop.wait())]
            await asyncio.wait(waiters, timeout=poll_interval, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()

    # ----- events ------------------------------------------------------------------------------

    async def handle(self, event: str, payload: dict[str, Any]) -> bool:
        if event == "pull_request":
            parsed = payloads.pull_request_event(payload)
            return parsed is not None and await self._pull_request(parsed)
        if event in ("installation", "installation_repositories"):
            change = payloads.installation_event(event, payload)
            if change is None:
                return False
            return await self.installations.handle(change, self.reconcile_pull)
        if event in ("check_suite", "status"):
            ci = payloads.ci_event(event, payload)
            return ci is not None and await self._ci_changed(ci)
        if event == "issue_comment" and self.command_handler is not None:
            await self.command_handler(payload)
            return True
        return False

    async def _pull_request(self, event: payloads.PullRequestEvent) -> bool:
        facts, repository = event.pull, event.repository
        updated_at = event.updated_at
        if self.installations.cutoff_of(event.installation_id, repository) is not None:
            # Sent just before the App's access was withdrawn: GitHub answers nothing now.
            self.record_pull(repository, facts, updated_at, event.installation_id)
            await self.reconcile_pull(pull_id(repository, facts.number))
            return True
        # The config is read at the default branch the payload names while the PR is being
        # read: GitHub round trips in parallel on the way to every create. It is used only if
        # the repository, once read, still has that default branch.
        prefetch: ConfigPrefetch | None = None
        if facts.state == "open":
            branch = facts.default_branch or facts.base_ref
            prefetch = (
                branch,
                asyncio.ensure_future(self.configs.read(event.installation_id, repository, branch)),
            )
        try:
            # Deliveries can arrive or be processed out of order, and `updated_at` has
            # one-second granularity: the PR as GitHub has it now is the truth, the payload
            # only a fallback.
            current = await self.gateway.get_pull(event.installation_id, repository, facts.number)
            if current is not None:
                facts = current
                updated_at = None  # authoritative: never discarded as stale
            self.record_pull(repository, facts, updated_at, event.installation_id)
            await self.reconcile_pull(pull_id(repository, facts.number), prefetch=prefetch)
        finally:
            if prefetch is not None:
                cancel_unused(prefetch[1])
        return True

    def record_pull(
        self,
        repository: str,
        facts: PullFacts,
        updated_at: datetime | None,
        installation_id: int | None,
    ) -> None:
        """Store PR facts unless they are older than what we already know (late deliveries)."""
        key = pull_id(repository, facts.number)
        with self.db.session() as session:
            pull = session.get(PullRequest, key, with_for_update=self.db.is_postgres)
            if pull is None:
                pull = PullRequest(id=key, repository=repository, number=facts.number)
            elif updated_at and pull.pr_updated_at and updated_at < pull.pr_updated_at:
                log.info("ignoring stale event for %s (older than what we know)", key)
                return
            pull.head_sha, pull.head_ref = facts.head_sha, facts.head_ref
            pull.base_ref, pull.author = facts.base_ref, facts.author
            if facts.base_sha:  # the pulls API and webhooks carry it; keep the last one known
                pull.base_sha = facts.base_sha
            if facts.default_branch:
                pull.default_branch = facts.default_branch
            pull.state, pull.draft, pull.fork = facts.state, facts.draft, facts.fork
            pull.labels = list(facts.labels)
            if facts.public is not None:
                pull.public = facts.public
            if updated_at:
                pull.pr_updated_at = updated_at
            if installation_id:
                pull.installation_id = installation_id
            pull.updated_at = utcnow()
            session.add(pull)
            session.commit()

    async def _ci_changed(self, ci: payloads.CIEvent) -> bool:
        with self.db.session() as session:
            pulls = list(
                session.exec(
                    select(PullRequest.id).where(
                        PullRequest.repository == ci.repository,
                        PullRequest.head_sha == ci.sha,
                        PullRequest.state == "open",
                    )
                )
            )
        for key in pulls:
            await self.reconcile_pull(key)
        return bool(pulls)

    # ----- gather → decide → apply -------------------------------------------------------------

    async def reconcile_pull(
        self, key: str, *, resume: bool = False, prefetch: ConfigPrefetch | None = None
    ) -> None:
        """Gather the PR's facts, decide its desired state, apply the decision.

        ``resume`` (`/runbot deploy` or `redeploy`) lifts a deliberate stop: otherwise an
        environment that expired or was destroyed by a comment stays gone for the same commit.
        ``prefetch`` is a config read already under way, for the default branch it names. Facts
        the decision cannot use are not gathered (a closed PR's config, the CI state of a PR
        held back by another rule).
        """
        with self.db.session() as session:
            pull = session.get(PullRequest, key)
        if pull is None:
            return
        live = self.lifecycle.live_environment_for(pull.repository, pull.number)
        # Cut off (uninstalled, suspended, removed): GitHub answers nothing, and nothing runs.
        cutoff = self.installations.cutoff_of(pull.installation_id, pull.repository)
        config: RepoConfig | ConfigError | None = None
        config_sha: str | None = None
        if pull.state == "open" and cutoff is None:
            try:
                config, config_sha = await self.configs.load(pull, prefetch)
            except ConfigError as exc:
                config, config_sha = exc, exc.commit
            if config_sha != pull.config_sha:
                self._update_pull(key, config_sha=config_sha)
                pull.config_sha = config_sha
            flags = notify_flags(config) if isinstance(config, RepoConfig) else {}
            if any(getattr(pull, name) != value for name, value in flags.items()):
                self._update_pull(key, **flags)
        state = pull_state(pull)
        # Only a usable config goes on to these rules: a closed PR, a missing or broken
        # config decides without them (each is a query on the path of every delivery).
        usable = isinstance(config, RepoConfig)
        stopped = usable and live is None and not resume and self._stopped(pull)
        in_use = self._in_use(pull.repository) if usable and live is None else 0
        refused = self._refusals(pull, config) if isinstance(config, RepoConfig) else []
        budget_reached = (
            isinstance(config, RepoConfig) and live is None and self._budget_reached(pull, config)
        )
        decide = partial(
            decide_pull,
            state,
            config,
            live_of(live),
            in_use=in_use,
            stopped=stopped,
            resume=resume,
            refused=refused,
            cutoff=cutoff,
            budget_reached=budget_reached,
        )
        decided = decide()
        if isinstance(decided, NeedCI):
            decided = decide(
                ci=await self.gateway.ci_state(pull.installation_id, pull.repository, pull.head_sha)
            )
        assert not isinstance(decided, NeedCI)
        await self._apply(pull, live, config, decided)

    def _budget_reached(self, pull: PullRequest, config: RepoConfig) -> bool:
        """The repository's or the silo's budget is spent this month (asked only for a PR
        without an environment; no ledger read when no budget applies)."""
        with self.db.session() as session:
            standing = standing_of(
                session, self.policy.current, pull.repository, config.silo, utcnow()
            )
        return standing is not None and standing.level is Level.REACHED

    def _refusals(self, pull: PullRequest, config: RepoConfig) -> list[Violation]:
        """What the operator policy, the stack and the silo say of this configuration."""
        default = pull.default_branch or pull.base_ref
        settable, provided = self.silos.variables(config)
        return list(
            refusals(
                self.policy.policy_for(pull.repository),
                config,
                base_branch=pull.base_ref,
                base_is_default=pull.base_ref == default,
                silo=self.silos.facts(pull, config),
                settable=settable,
                provided=provided,
            )
        )

    async def _apply(
        self,
        pull: PullRequest,
        live: Environment | None,
        config: RepoConfig | ConfigError | None,
        decision: Decision,
    ) -> None:
        key = pull.id
        if isinstance(decision, Hold):
            if decision.kind == HoldKind.CLOSED:
                if live:
                    self.lifecycle.destroy_environment(
                        live.id, reason="PR closed", trigger="closed"
                    )
                self._update_pull(key, hold_kind=decision.kind, hold_reason=decision.message)
            elif decision.kind == HoldKind.CONFIG_ERROR:
                self._update_pull(
                    key,
                    enabled=False,
                    config_error=decision.message,
                    hold_kind=decision.kind,
                    hold_reason=None,
                )
            elif live and decision.teardown:
                trigger = str(decision.kind) if decision.kind in CUTOFF_KINDS else "policy"
                self.lifecycle.destroy_environment(
                    live.id, reason=decision.message, trigger=trigger
                )
                # What was approved is no longer trusted to come back on its own.
                self._hold(key, decision.kind, decision.message, approved_sha=None)
            else:
                self._hold(key, decision.kind, decision.message)
            return
        if isinstance(decision, Destroy):
            if live:
                self.lifecycle.destroy_environment(
                    live.id, reason=decision.reason, trigger="config"
                )
            self._update_pull(key, enabled=False, **_NO_HOLD)
            return
        if isinstance(decision, Keep) and live is None:  # stopped on purpose
            self._update_pull(key, enabled=True, **_NO_HOLD)
            return
        assert isinstance(config, RepoConfig)
        try:
            if isinstance(decision, Update):
                assert live is not None
                self.lifecycle.update_environment(
                    live.id,
                    head_sha=decision.sha,
                    head_ref=pull.head_ref,
                    trigger="push",
                    config_sha=pull.config_sha,
                )
                want_pool(self.lifecycle, pull, config, live.silo_name)
                if decision.settle:
                    self._settle_burst(live.id)
            elif isinstance(decision, Create):
                silo = await self.silos.ensure(pull, config)
                start_environment(self.lifecycle, pull, config, silo, decision.sha)
        except (LifecycleError, StackError) as exc:
            self._hold(key, HoldKind.CANNOT_DEPLOY, f"cannot deploy: {exc}")
            return
        waiting = decision.waiting if isinstance(decision, Create | Update) else None
        if waiting is not None:
            self._hold(key, waiting.kind, waiting.message)
        else:
            self._update_pull(key, enabled=True, **_NO_HOLD)
        self.on_change()
        # The reconciler was just woken: let it claim before this delivery's bookkeeping.
        await asyncio.sleep(0)

    def _hold(self, key: str, kind: HoldKind, message: str, **also: Any) -> None:
        self._update_pull(
            key, enabled=True, config_error=None, hold_kind=kind, hold_reason=message, **also
        )

    def _update_pull(self, key: str, **values: Any) -> None:
        with self.db.session() as session:
            pull = session.get(PullRequest, key)
            if pull is None:
                return
            changed = any(getattr(pull, name) != value for name, value in values.items())
            for name, value in values.items():
                setattr(pull, name, value)
            if changed:
                pull.sync_version += 1
            session.add(pull)
            session.commit()

    def _in_use(self, repository: str) -> int:
        """The repository's environments that hold a place under `max_environments`."""
        with self.db.session() as session:
            return int(
                session.exec(
                    select(func.count())
                    .select_from(Environment)
                    .where(
                        Environment.repository == repository,
                        Environment.desired != Desired.ABSENT,
                        Environment.status != Status.DESTROYED,
                        of_a_pr(),  # unclaimed pool instances count against the pool's cap
                    )
                ).one()
            )

    def _stopped(self, pull: PullRequest) -> bool:
        """The newest environment was torn down on purpose, at the commit still at the head."""
        latest = self.lifecycle.latest_environment_for(pull.repository, pull.number)
        return (
            latest is not None
            and latest.desired == Desired.ABSENT
            and latest.trigger in STOP_TRIGGERS
            and latest.head_sha == pull.head_sha
        )

    def _settle_burst(self, env_id: str) -> None:
        """Hold the environment's next apply until the burst of pushes goes quiet."""
        now = utcnow()
        with self.db.session() as session:
            env = session.get(Environment, env_id)
            if env is None:
                return
            # Measured from the start of the environment's latest run (running or done), so a
            # stream of pushes that never goes quiet still gets an apply every ~30 s.
            run = session.get(Run, env.last_run_id) if env.last_run_id else None
            began = run.started_at if run is not None else now
            until = min(
                now + timedelta(seconds=PUSH_QUIET_SECONDS),
                began + timedelta(seconds=PUSH_QUIET_MAX_SECONDS),
            )
            if until <= now:
                return
            session.exec(
                update(Environment)
                .where(col(Environment.id) == env_id, col(Environment.generation) == env.generation)
                .values(next_attempt_at=until)
            )
            session.commit()

    # ----- resync ------------------------------------------------------------------------------

    async def resync(self) -> int:
        """List open PRs of installed repos and reconcile each: heals missed webhooks."""
        if self.gateway.local:
            return 0
        seen = 0
        # Uninstalled and suspended installations are skipped, and GitHub no longer lists a
        # repository removed from its installation.
        for installation in self.installations.active():
            try:
                repos = await self.gateway.installation_repos(installation)
            except GitHubError as exc:
                log.warning("resync: installation %s unavailable: %s", installation, exc)
                continue
            await self.installations.listed(installation, repos, self.reconcile_pull)
            for repository in repos:
                seen += await self._resync_repository(installation, repository)
        return seen

    async def _resync_repository(self, installation_id: int, repository: str) -> int:
        pulls = await self.gateway.list_open_pulls(installation_id, repository)
        open_numbers = {pull.number for pull in pulls}
        for facts in pulls:
            self.record_pull(repository, facts, None, installation_id)
        with self.db.session() as session:
            known_open = list(
                session.exec(
                    select(PullRequest).where(
                        PullRequest.repository == repository, PullRequest.state == "open"
                    )
                )
            )
            for pull in known_open:
                if pull.number not in open_numbers:
                    pull.state = "closed"
                    session.add(pull)
            session.commit()
        for pull in known_open:
            await self.reconcile_pull(pull.id)
        for facts in pulls:
            if facts.number not in {pull.number for pull in known_open}:
                await self.reconcile_pull(pull_id(repository, facts.number))
        return len(pulls)

    async def reconcile_held(
        self, repository: str | None = None, kinds: tuple[HoldKind, ...] = (HoldKind.QUEUED,)
    ) -> None:
        """Environments were destroyed: PRs held by `max_environments` may start now (or, with
        ``kinds`` BUDGET, a budget was raised or a month began: PRs held by it may)."""
        with self.db.session() as session:
            query = select(PullRequest.id).where(
                col(PullRequest.hold_kind).in_(kinds), PullRequest.state == "open"
            )
            if repository:
                query = query.where(PullRequest.repository == repository)
            held = list(session.exec(query.order_by(col(PullRequest.created_at))))
        for key in held:
            await self.reconcile_pull(key)


_NO_HOLD: dict[str, Any] = {"config_error": None, "hold_kind": None, "hold_reason": None}


def notify_flags(config: RepoConfig) -> dict[str, bool]:
    """What the notifier needs of `.runbot.yml`: `comments: quiet`, `deployments: keep`."""
    return {"quiet": config.comments == "quiet", "keep_deployments": config.deployments == "keep"}
