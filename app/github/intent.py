"""Recorded deliveries → facts about PRs → desired environment state.

Events only update what runbot knows about a PR (head, state, labels, draft...). One idempotent,
level-triggered function, `reconcile_pull`, then decides the desired state from those facts and
the base branch's `.runbot.yml`. Resync calls the same function, so a missed, duplicated or late
webhook cannot leave a PR in a wrong state.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import or_, update
from sqlmodel import col, func, select

from app.db.leases import kept_alive
from app.db.models import Delivery, Environment, Installation, PullRequest, Run, Silo, utcnow
from app.db.session import Database
from app.github.config import GitStack, LocalStack, RepoConfig, parse_repo_config
from app.github.config_errors import ConfigError
from app.github.gateway import Gateway, GitHubError, PullInfo, RetryLater
from app.github.intake import ACTIVITY, parse_json
from app.lifecycle.service import Lifecycle, LifecycleError, pull_id
from app.lifecycle.states import Desired, Status
from app.logging import log_context
from app.stacks.catalog import StackError, StackSource, validate_name

#: A `.runbot.yml` read started early: the base branch it reads, and the read.
ConfigPrefetch = tuple[str, "asyncio.Future[str | None]"]


def cancel_unused(future: asyncio.Future[Any]) -> None:
    """Stop a read nobody consumed; its outcome is collected so no error is reported lost."""
    future.cancel()
    future.add_done_callback(lambda done: done.cancelled() or done.exception())


log = logging.getLogger("runbot.intent")

CONFIG_PATH = ".runbot.yml"
CommandHandler = Callable[[dict[str, Any]], Awaitable[None]]
#: Triggers of a deliberate teardown (TTL reaper, `/runbot destroy`): the PR stays without an
#: environment until a new commit or `/runbot redeploy`, instead of being re-created by resync.
STOP_TRIGGERS = frozenset({"ttl", "comment"})
#: A push that arrives while the previous change is still being applied is part of a burst (a
#: rebase pushed commit by commit, a bot): its apply waits until pushes stop for this long, so
#: a burst costs two applies (its first push, then its last) rather than one per engine run.
#: A single push to an idle environment never waits.
PUSH_QUIET_SECONDS = 2.0
#: Pending deliveries listed per query by `claim_delivery`.
CLAIM_BATCH = 50
#: Pause between two deliveries processed while webhooks keep arriving (bounds, in seconds).
INTAKE_YIELD_MIN, INTAKE_YIELD_MAX = 0.02, 0.25
#: ... but a change never waits longer than this after the start of the latest run.
PUSH_QUIET_MAX_SECONDS = 30.0


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None


def _get(data: Any, *path: str, default: Any = None) -> Any:
    """Lenient field access: GitHub adds and occasionally nulls fields."""
    for key in path:
        if not isinstance(data, dict):
            return default
        data = data.get(key)
    return default if data is None else data


def claimable_deliveries(now: datetime, lease: timedelta) -> tuple[Any, ...]:
    """Pending, and either never leased or with a lease that lapsed."""
    return (
        Delivery.status == "pending",
        or_(col(Delivery.processed_at).is_(None), col(Delivery.processed_at) < now - lease),
    )


def oldest_claimable(now: datetime, lease: timedelta, limit: int) -> Any:
    """Ids only, oldest first: answered from ix_delivery_claim alone."""
    return (
        select(Delivery.id)
        .where(*claimable_deliveries(now, lease))
        .order_by(col(Delivery.received_at))
        .limit(limit)
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
    ) -> None:
        self.db = db
        self.lifecycle = lifecycle
        self.gateway = gateway
        self.data_dir = data_dir.absolute()
        self.worker_id = worker_id
        self.lease = timedelta(seconds=lease_seconds)
        self.wakeup = asyncio.Event()
        self._candidates: collections.deque[str] = collections.deque()
        self.command_handler: CommandHandler | None = None
        self.on_change: Callable[[], None] = lambda: None

    # ----- delivery queue ----------------------------------------------------------------------

    def hint(self, delivery_id: str) -> None:
        """A delivery was just recorded by this process: wake up, and when the queue is idle,
        lease it by key (one conditional UPDATE) instead of listing the queue first: that
        query sat on the way to every create. During a flood the listing order stands."""
        if not self._candidates and ACTIVITY.alone():
            self._candidates.append(delivery_id)
        self.wakeup.set()

    def claim_delivery(self) -> Delivery | None:
        """Lease the oldest pending delivery.

        Candidates are listed in batches, ids only, in index order (`oldest_claimable`), and
        each is leased by primary key with a conditional UPDATE that exactly one replica wins.
        Listing them once per delivery by scanning and sorting the pending rows made a backlog
        of N deliveries cost O(N^2): 35% of the serve process's CPU under a webhook flood.
        """
        now = utcnow()
        claimable = claimable_deliveries(now, self.lease)
        for _ in range(2):
            while self._candidates:
                delivery_id = self._candidates.popleft()
                with self.db.session() as session:
                    result = session.execute(
                        update(Delivery)
                        .where(Delivery.id == delivery_id, *claimable)
                        # processed_at doubles as the claim's lease while still pending.
                        .values(processed_at=now, attempts=Delivery.attempts + 1)
                    )
                    session.commit()
                    if result.rowcount == 1:  # type: ignore[attr-defined]
                        return session.get(Delivery, delivery_id)
            with self.db.session() as session:
                found = session.exec(oldest_claimable(now, self.lease, CLAIM_BATCH)).all()
            if not found:
                return None
            self._candidates.extend(found)
        return None

    def _renew(self, delivery_id: str) -> None:
        with self.db.session() as session:
            row = session.get(Delivery, delivery_id)
            if row is not None and row.status == "pending":
                row.processed_at = utcnow()
                session.add(row)
                session.commit()

    def _finish_delivery(self, delivery: Delivery, status: str, error: str | None = None) -> None:
        with self.db.session() as session:
            row = session.get(Delivery, delivery.id)
            if row is not None:
                row.status, row.error, row.processed_at = status, error, utcnow()
                session.add(row)
                session.commit()

    async def process_one(self) -> bool:
        delivery = self.claim_delivery()
        if delivery is None:
            return False
        with log_context(delivery_id=delivery.id):
            return await self._process(delivery)

    async def _process(self, delivery: Delivery) -> bool:
        try:
            payload = parse_json(delivery.payload)
            async with kept_alive(lambda: self._renew(delivery.id), self.lease.total_seconds() / 3):
                handled = await self.handle(delivery.event, payload)
        except RetryLater as exc:
            # GitHub is down or limiting us: leave it pending; the lease lapses and it retries.
            log.warning("delivery %s: GitHub unavailable, retrying later: %s", delivery.id, exc)
            with self.db.session() as session:
                row = session.get(Delivery, delivery.id)
                if row is not None:
                    row.processed_at = utcnow() - self.lease + timedelta(seconds=exc.retry_after)
                    session.add(row)
                    session.commit()
            return True
        except Exception as exc:
            log.exception("delivery %s failed", delivery.id)
            self._finish_delivery(delivery, "failed", f"{type(exc).__name__}: {exc}")
            return True
        outcome = "processed" if handled else "ignored"
        self._finish_delivery(delivery, outcome)
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
        action = payload.get("action")
        if event == "pull_request":
            return await self._pull_request(action, payload)
        if event in ("installation", "installation_repositories"):
            return self._installation(event, action, payload)
        if event == "check_suite" and action == "completed":
            sha = _get(payload, "check_suite", "head_sha")
            return await self._ci_changed(_get(payload, "repository", "full_name"), sha)
        if event == "status":
            return await self._ci_changed(
                _get(payload, "repository", "full_name"), payload.get("sha")
            )
        if event == "issue_comment" and self.command_handler is not None:
            await self.command_handler(payload)
            return True
        return False

    async def _pull_request(self, action: Any, payload: dict[str, Any]) -> bool:
        pr = payload.get("pull_request")
        repository = _get(payload, "repository", "full_name")
        if not isinstance(pr, dict) or not isinstance(repository, str):
            return False
        number = pr.get("number") or payload.get("number")
        if not isinstance(number, int):
            return False
        head_repo = _get(pr, "head", "repo", "full_name")
        facts = {
            "head_sha": str(_get(pr, "head", "sha", default="")),
            "head_ref": str(_get(pr, "head", "ref", default="")),
            "base_ref": str(_get(pr, "base", "ref", default="")),
            "base_sha": str(_get(pr, "base", "sha", default="")),
            "author": str(_get(pr, "user", "login", default="")),
            "state": "closed" if pr.get("state") == "closed" or action == "closed" else "open",
            "draft": bool(pr.get("draft")),
            "fork": bool(head_repo) and head_repo != repository,
            "labels": [
                str(label.get("name"))
                for label in pr.get("labels") or []
                if isinstance(label, dict)
            ],
        }
        installation = _get(payload, "installation", "id")
        installation_id = installation if isinstance(installation, int) else None
        updated_at = _parse_time(pr.get("updated_at"))
        # The config is read at the base branch the payload names while the PR is being read:
        # two GitHub round trips in parallel on the way to every create. It is used only if
        # the PR, once read, still targets that branch.
        prefetch: ConfigPrefetch | None = None
        if facts["state"] == "open":
            base = facts["base_ref"] or "HEAD"
            prefetch = (
                base,
                asyncio.ensure_future(self._read_config(installation_id, repository, base)),
            )
        try:
            # Deliveries can arrive or be processed out of order, and `updated_at` has
            # one-second granularity: the PR as GitHub has it now is the truth, the payload
            # only a fallback.
            current = await self.gateway.get_pull(installation_id, repository, number)
            if current is not None:
                facts.update(
                    head_sha=current.head_sha,
                    head_ref=current.head_ref,
                    base_ref=current.base_ref,
                    author=current.author,
                    state="closed" if current.state == "closed" else "open",
                    draft=current.draft,
                    fork=current.fork,
                    labels=list(current.labels),
                )
                updated_at = None  # authoritative: never discarded as stale
            self.record_pull(repository, number, facts, updated_at, installation_id)
            await self.reconcile_pull(pull_id(repository, number), prefetch=prefetch)
        finally:
            if prefetch is not None:
                cancel_unused(prefetch[1])
        return True

    def record_pull(
        self,
        repository: str,
        number: int,
        facts: dict[str, Any],
        updated_at: datetime | None,
        installation_id: int | None,
    ) -> None:
        """Store PR facts unless they are older than what we already know (late deliveries)."""
        key = pull_id(repository, number)
        with self.db.session() as session:
            pull = session.get(PullRequest, key, with_for_update=self.db.is_postgres)
            if pull is None:
                pull = PullRequest(id=key, repository=repository, number=number)
            elif updated_at and pull.pr_updated_at and updated_at < pull.pr_updated_at:
                log.info("ignoring stale event for %s (older than what we know)", key)
                return
            for name, value in facts.items():
                setattr(pull, name, value)
            if updated_at:
                pull.pr_updated_at = updated_at
            if installation_id:
                pull.installation_id = installation_id
            pull.updated_at = utcnow()
            session.add(pull)
            session.commit()

    def _installation(self, event: str, action: Any, payload: dict[str, Any]) -> bool:
        install_id = _get(payload, "installation", "id")
        if not isinstance(install_id, int):
            return False
        with self.db.session() as session:
            row = session.get(Installation, install_id) or Installation(id=install_id)
            row.account = str(_get(payload, "installation", "account", "login", default=""))
            names = lambda items: [  # noqa: E731
                str(repo.get("full_name")) for repo in items or [] if isinstance(repo, dict)
            ]
            if event == "installation":
                if action == "deleted":
                    row.active = False
                elif action in ("created", "unsuspend", "new_permissions_accepted"):
                    row.active = True
                    if "repositories" in payload:
                        row.repositories = names(payload.get("repositories"))
                elif action == "suspend":
                    row.active = False
            else:
                current = set(row.repositories)
                current |= set(names(payload.get("repositories_added")))
                current -= set(names(payload.get("repositories_removed")))
                row.repositories = sorted(current)
            row.updated_at = utcnow()
            session.add(row)
            session.commit()
        return True

    async def _ci_changed(self, repository: Any, sha: Any) -> bool:
        if not isinstance(repository, str) or not isinstance(sha, str):
            return False
        with self.db.session() as session:
            pulls = list(
                session.exec(
                    select(PullRequest.id).where(
                        PullRequest.repository == repository,
                        PullRequest.head_sha == sha,
                        PullRequest.state == "open",
                    )
                )
            )
        for key in pulls:
            await self.reconcile_pull(key)
        return bool(pulls)

    # ----- the decision ------------------------------------------------------------------------

    async def _read_config(
        self, installation_id: int | None, repository: str, ref: str
    ) -> str | None:
        return await self.gateway.read_file(installation_id, repository, CONFIG_PATH, ref)

    async def load_config(
        self, pull: PullRequest, prefetch: ConfigPrefetch | None = None
    ) -> RepoConfig | None:
        """`.runbot.yml` from the PR's BASE branch: a PR never changes what deploys it."""
        ref = pull.base_ref or "HEAD"
        if prefetch is not None and prefetch[0] == ref:
            text = await prefetch[1]
        else:
            text = await self._read_config(pull.installation_id, pull.repository, ref)
        if text is None:
            return None
        return parse_repo_config(text)

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

    async def reconcile_pull(
        self, key: str, *, resume: bool = False, prefetch: ConfigPrefetch | None = None
    ) -> None:
        """Decide the PR's desired state from its facts and config.

        ``resume`` (`/runbot deploy` or `redeploy`) lifts a deliberate stop: otherwise an
        environment that expired or was destroyed by a comment stays gone for the same commit.
        ``prefetch`` is a config read already under way, for the base branch it names.
        """
        with self.db.session() as session:
            pull = session.get(PullRequest, key)
        if pull is None:
            return
        live = self.lifecycle.live_environment_for(pull.repository, pull.number)
        if pull.state != "open":
            if live:
                self.lifecycle.destroy_environment(live.id, reason="PR closed", trigger="closed")
            self._update_pull(key, hold_reason="closed")
            return
        try:
            config = await self.load_config(pull, prefetch)
        except ConfigError as exc:
            self._update_pull(key, enabled=False, config_error=exc.markdown())
            return
        if config is None:
            if live:
                self.lifecycle.destroy_environment(
                    live.id, reason=f"{CONFIG_PATH} removed", trigger="config"
                )
            self._update_pull(key, enabled=False, config_error=None, hold_reason=None)
            return
        if live is None and not resume and self._stopped(pull):
            self._update_pull(key, enabled=True, config_error=None, hold_reason=None)
            return
        hold = await self._hold_reason(pull, config, live)
        if hold is not None:
            if live and hold.startswith("!"):
                hold = hold[1:]
                self.lifecycle.destroy_environment(live.id, reason=hold, trigger="policy")
            self._update_pull(key, enabled=True, config_error=None, hold_reason=hold.lstrip("!"))
            return
        try:
            if live:
                if live.head_sha != pull.head_sha or live.head_ref != pull.head_ref:
                    busy = live.generation != live.observed_generation or bool(live.lease_owner)
                    self.lifecycle.update_environment(
                        live.id, head_sha=pull.head_sha, head_ref=pull.head_ref, trigger="push"
                    )
                    if busy:
                        self._settle_burst(live.id)
            else:
                silo = await self._ensure_silo(pull, config)
                self.lifecycle.create_environment(
                    silo,
                    pull.repository,
                    pull.number,
                    pull.head_sha,
                    pull.head_ref,
                    pull.author,
                    dict(config.vars),
                    trigger="pull_request",
                    installation_id=pull.installation_id,
                    ttl=config.ttl_policy(),
                )
        except (LifecycleError, StackError) as exc:
            self._update_pull(
                key, enabled=True, config_error=None, hold_reason=f"cannot deploy: {exc}"
            )
            return
        self._update_pull(key, enabled=True, config_error=None, hold_reason=None)
        self.on_change()
        # The reconciler was just woken: let it claim before this delivery's bookkeeping.
        await asyncio.sleep(0)

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
            session.execute(
                update(Environment)
                .where(Environment.id == env_id, Environment.generation == env.generation)
                .values(next_attempt_at=until)
            )
            session.commit()

    def _stopped(self, pull: PullRequest) -> bool:
        """The newest environment was torn down on purpose, at the commit still at the head."""
        latest = self.lifecycle.latest_environment_for(pull.repository, pull.number)
        return (
            latest is not None
            and latest.desired == Desired.ABSENT
            and latest.trigger in STOP_TRIGGERS
            and latest.head_sha == pull.head_sha
        )

    async def _hold_reason(
        self, pull: PullRequest, config: RepoConfig, live: Environment | None
    ) -> str | None:
        """Why this PR must not run (a leading "!" means: and tear down what runs)."""
        if pull.fork and config.forks == "off":
            return "!PRs from forks are not deployed here (`forks: off` in .runbot.yml)"
        if pull.fork and config.forks == "approve" and not pull.approved_sha and not live:
            return (
                "PRs from forks wait for a maintainer with write access to comment `/runbot deploy`"
            )
        if pull.draft and not config.drafts:
            return "!draft PRs are not deployed (`drafts: false`); mark it ready for review"
        missing = [label for label in config.labels.require if label not in pull.labels]
        if missing and not (pull.approved_sha and pull.approved_sha == pull.head_sha):
            return "!waiting for the label(s) " + ", ".join(f"`{label}`" for label in missing)
        if live is None:
            with self.db.session() as session:
                count = session.exec(
                    select(func.count())
                    .select_from(Environment)
                    .where(
                        Environment.repository == pull.repository,
                        Environment.desired != Desired.ABSENT,
                        Environment.status != Status.DESTROYED,
                    )
                ).one()
            if count >= config.max_environments:
                return (
                    f"queued: this repository is at its limit of {config.max_environments}"
                    " environments (`max_environments`); it starts when one is destroyed"
                )
        if config.wait_for_ci:
            state = await self.gateway.ci_state(
                pull.installation_id, pull.repository, pull.head_sha
            )
            if state != "success":
                short = pull.head_sha[:7]
                where = (
                    f"; staying at {live.deployed_sha[:7]}" if live and live.deployed_sha else ""
                )
                if state == "failure":
                    return f"checks failed on {short}{where} (`wait_for_ci: true`)"
                return f"waiting for checks on {short}{where} (`wait_for_ci: true`)"
        return None

    async def _ensure_silo(self, pull: PullRequest, config: RepoConfig) -> str:
        """The config's silo, created on first use."""
        stack_name, source = await self._stack_source(pull, config)
        name = config.silo
        validate_name("silo", name)
        with self.db.session() as session:
            silo = session.get(Silo, name)
        if silo is not None and silo.status != Status.DESTROYED and silo.desired != Desired.ABSENT:
            if silo.stack != stack_name:
                raise LifecycleError(
                    f"silo '{name}' runs stack '{silo.stack}', but .runbot.yml asks for"
                    f" '{stack_name}': choose another `silo:` name"
                )
            return name
        self.lifecycle.create_silo(name, stack_name, {}, source)
        return name

    async def _stack_source(
        self, pull: PullRequest, config: RepoConfig
    ) -> tuple[str, StackSource | None]:
        stack = config.stack
        if isinstance(stack, str):
            return stack, None
        if isinstance(stack, GitStack):
            name = validate_name("stack", _slug(Path(stack.path).name or "stack"))
            return name, StackSource(
                kind="git", url=stack.git, ref=stack.ref or "", path=stack.path
            )
        assert isinstance(stack, LocalStack)
        files = await self.gateway.list_tree(
            pull.installation_id, pull.repository, stack.path, pull.base_sha or pull.base_ref
        )
        digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
        root = self.data_dir / "repo-stacks" / _slug(pull.repository) / digest
        if not root.exists():
            staging = root.with_name(root.name + ".tmp")
            for relative, content in files.items():
                target = (staging / relative).resolve()
                if not str(target).startswith(str(staging.resolve())):
                    raise StackError(f"stack file '{relative}' escapes the stack directory")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content)
            staging.rename(root)
        name = validate_name("stack", _slug(Path(stack.path).name or "stack"))
        return name, StackSource(kind="repo", path=stack.path, commit=digest, url=str(root))

    # ----- resync ------------------------------------------------------------------------------

    async def resync(self) -> int:
        """List open PRs of installed repos and reconcile each: heals missed webhooks."""
        if self.gateway.local:
            return 0
        with self.db.session() as session:
            installations = list(session.exec(select(Installation).where(Installation.active)))
        seen = 0
        for installation in installations:
            try:
                repos = await self.gateway.installation_repos(installation.id)
            except GitHubError as exc:
                log.warning("resync: installation %s unavailable: %s", installation.id, exc)
                continue
            with self.db.session() as session:
                row = session.get(Installation, installation.id)
                if row is not None:
                    row.repositories = repos
                    session.add(row)
                    session.commit()
            for repository in repos:
                seen += await self._resync_repository(installation.id, repository)
        return seen

    async def _resync_repository(self, installation_id: int, repository: str) -> int:
        pulls = await self.gateway.list_open_pulls(installation_id, repository)
        open_numbers = {pull.number for pull in pulls}
        for info in pulls:
            self.record_pull(repository, info.number, pull_facts(info), None, installation_id)
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
        for info in pulls:
            if info.number not in {pull.number for pull in known_open}:
                await self.reconcile_pull(pull_id(repository, info.number))
        return len(pulls)

    async def reconcile_held(self, repository: str | None = None) -> None:
        """Environments were destroyed: PRs held by `max_environments` may start now."""
        with self.db.session() as session:
            query = select(PullRequest.id).where(
                col(PullRequest.hold_reason).like("queued:%"), PullRequest.state == "open"
            )
            if repository:
                query = query.where(PullRequest.repository == repository)
            held = list(session.exec(query.order_by(col(PullRequest.created_at))))
        for key in held:
            await self.reconcile_pull(key)


def pull_facts(info: PullInfo) -> dict[str, Any]:
    """What `record_pull` stores, from an open PR as the pulls API lists it."""
    return {
        "head_sha": info.head_sha,
        "head_ref": info.head_ref,
        "base_ref": info.base_ref,
        "author": info.author,
        "state": "open",
        "draft": info.draft,
        "fork": info.fork,
        "labels": list(info.labels),
    }


def _slug(text: str) -> str:
    cleaned = "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")
    return (cleaned or "stack")[:63]
