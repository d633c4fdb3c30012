"""The status comment and deployment of each PR, reconciled like the engine.

They are a pure rendering of current state. Syncing re-renders at send time, so the newest state
always wins; an identical rendering is not sent again (no comment spam); a failed or rate-limited
sync is retried with backoff until it lands, so a GitHub outage delays updates but never loses one.

GitHub asks for about a second between content-creating requests of one installation, and the
gateway enforces it. Every write therefore costs the *next* write a second, so the notifier spends
them where people look (measured by `python -m bench --only lifecycle`, see the README):

* one write per step, rendered from fresh state *after* waiting for the write slot, so a state
  that changed during the wait is never sent stale and then corrected a second later;
* the status comment before deployment writes, across all PRs: deployment statuses are only
  written when no comment is owed, and a deployment sequence stops as soon as a newer state
  needs the comment;
* a state in flux (queued, creating, updating, destroying) is held for a few write intervals
  before it is shown: a fast apply then costs one write (the URL) instead of three, and a slow
  one still shows "creating" after a few seconds.

A PR waiting for its write slot or its settle time is set aside in memory, and the loop serves
other PRs (other installations) meanwhile, waking exactly when the first one is due. Only when
no PR has a write it could send does the loop do its `idle_work` (the capped answers to
commenters below triage): a flood of commands never stands between a PR and its status comment.

What each kind of write sends, and records once it landed, is in `sending` (mixed in).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import update
from sqlmodel import col, select

from app.db.leases import kept_alive
from app.db.models import Environment, Installation, PullRequest, utcnow
from app.db.session import Database
from app.engine.logs import read_log
from app.github.comment import MARKER, StatusView, render_config_error, render_status_comment
from app.github.gateway import Gateway, GitHubError, RetryLater
from app.github.installations import WriteGate, cutoff, record_of, write_gate
from app.github.money import money_fields
from app.github.public import public_text
from app.github.sending import Sending
from app.github.status import ready_phases, status_view
from app.github.syncqueue import SyncQueue
from app.github.writes import (
    IN_FLUX,
    PlannedWrite,
    WriteKind,
    at_rest,
    next_followup_write,
    next_write,
)
from app.lifecycle.states import Status
from app.policy.model import NO_POLICY, Policy, PolicyFile

log = logging.getLogger("runbot.notify")

#: The writes that follow the status comment (after other PRs' comments).
_DEPLOYMENT_KINDS = frozenset(
    {
        WriteKind.DEPLOYMENT,
        WriteKind.DEPLOYMENT_STATUS,
        WriteKind.CHECK_RUN,
        WriteKind.CHECK_RUN_UPDATE,
        WriteKind.TIDY,
    }
)

BACKOFF = (2.0, 5.0, 15.0, 60.0, 300.0)
#: How long a state in flux is held before it is shown, in write intervals (pacing). Without
#: pacing (tests, local mode) nothing is held: a write then costs the next one nothing.
SETTLE_INTERVALS = 3.0
#: How long the writes owed to a suspended installation are parked before they are looked at
#: again (`unsuspend` releases them at once).
PARK_SECONDS = 3600.0
#: Outcomes of one sync pass.
DONE, STALE, DEFERRED = "done", "stale", "deferred"


@dataclass
class _Write:
    """A planned write and the I/O that performs it; a comment showing an outcome keeps what
    it showed, so the deployment can catch up with exactly that."""

    planned: PlannedWrite
    send: Callable[[], Awaitable[None]]
    env: Environment | None = None
    view: StatusView | None = None

    @property
    def kind(self) -> WriteKind:
        return self.planned.kind


@dataclass
class _Pass:
    """A PR whose comment went out and whose deployment writes follow."""

    version: int  # the sync_version the comment showed
    env: Environment | None = None  # set when the comment showed an outcome
    view: StatusView | None = None


class Notifier(Sending):
    def __init__(
        self,
        db: Database,
        gateway: Gateway,
        *,
        public_url: str,
        app_slug: str | None,
        worker_id: str,
        commands_help: str,
        lease_seconds: float = 60.0,
        policy_for: Callable[[str], Policy] | None = None,
        host_paths: Sequence[str] = (),
        delete_environments: bool = False,
        currency: str = "USD",
        policy_file: Callable[[], PolicyFile] | None = None,
    ) -> None:
        self.db = db
        #: `RUNBOT_CURRENCY`, and the whole policy in force (its budgets, per repository and silo).
        self.currency = currency
        self.policy_file = policy_file or (lambda: NO_POLICY)
        #: The operator's opt-in: delete a closed PR's GitHub environment (`administration`).
        self.delete_environments = delete_environments
        #: The operator policy in force for a repository (its `quote_logs`).
        self.policy_for = policy_for or (lambda repository: Policy())
        #: Never named in a comment: the data dir, the catalog, working directories.
        self.host_paths = tuple(host_paths)
        self.gateway = gateway
        self.public_url = public_url.rstrip("/")
        self.app_slug = app_slug
        self.commands_help = commands_help
        self.worker_id = worker_id
        self.lease = timedelta(seconds=lease_seconds)
        self.wakeup = asyncio.Event()
        #: The gateway's spacing of writes per installation (0 for the outbox and in tests).
        self.write_interval = float(getattr(gateway, "min_write_interval", 0.0) or 0.0)
        self.settle = SETTLE_INTERVALS * self.write_interval
        self._last_write: dict[Any, float] = {}  # installation (or repo) -> monotonic time
        self.queue = SyncQueue(db, worker_id, self.lease)
        #: PRs in the middle of a pass: their comment went out and their deployment writes
        #: follow, after other PRs' comments.
        self._passing: dict[str, _Pass] = {}
        self._no_comment: set[str] = set()  # looked up on GitHub: no status comment yet
        #: Lower-priority writes, done one per call when no PR sync is claimable; True when it
        #: did one (the command handler's answers to limited commenters).
        self.idle_work: Callable[[], Awaitable[bool]] | None = None

    async def sync_one(self) -> bool:
        claimed = self.queue.claim(self._passing)
        if claimed is None:
            return False
        key, version = claimed
        gate = self._gate(key)
        if gate is not WriteGate.SEND:
            self._hold_back(key, version, gate)
            return True
        try:
            async with kept_alive(lambda: self.queue.renew(key), self.lease.total_seconds() / 3):
                outcome = await self.sync(key, version)
        except RetryLater as exc:
            log.warning("sync of %s postponed %.0fs: %s", key, exc.retry_after, exc)
            self.queue.release(key, retry_in=max(exc.retry_after, 1.0))
            return True
        except GitHubError as exc:
            with self.db.session() as session:
                pull = session.get(PullRequest, key)
                attempts = pull.sync_attempts if pull else 0
            delay = BACKOFF[min(attempts, len(BACKOFF) - 1)]
            log.warning("sync of %s failed, retrying in %.0fs: %s", key, delay, exc)
            self.queue.release(key, retry_in=delay)
            return True
        except Exception:
            log.exception("sync of %s failed unexpectedly", key)
            self.queue.release(key, retry_in=BACKOFF[-1])
            return True
        if outcome == DONE:
            self._passing.pop(key, None)
            self._no_comment.discard(key)
            self.queue.release(key, synced=version)
        else:  # newer state to render, or set aside in memory: claimable again right away
            self.queue.release(key)
        return True

    def _gate(self, key: str) -> WriteGate:
        """Whether the PR's installation still lets runbot write to its repository."""
        with self.db.session() as session:
            pull = session.get(PullRequest, key)
            if pull is None or pull.installation_id is None:
                return WriteGate.SEND
            record = record_of(session.get(Installation, pull.installation_id))
        return write_gate(cutoff(record, pull.repository))

    def _hold_back(self, key: str, version: int, gate: WriteGate) -> None:
        """No token covers the repository: never retry forever. Writes that can never land
        (uninstalled, removed) are dropped; a suspended installation's wait for `unsuspend`."""
        self._passing.pop(key, None)
        if gate is WriteGate.DROP:
            log.info("%s: the App's access is withdrawn; its GitHub writes are dropped", key)
            self.queue.release(key, synced=version)
            return
        log.info("%s: the App's installation is suspended; its GitHub writes wait", key)
        with self.db.session() as session:
            session.exec(
                update(PullRequest)
                .where(
                    col(PullRequest.id) == key, col(PullRequest.sync_lease_owner) == self.worker_id
                )
                .values(
                    sync_lease_owner=None,
                    sync_lease_expires_at=None,
                    next_sync_at=utcnow() + timedelta(seconds=PARK_SECONDS),
                )
            )
            session.commit()

    async def run(self, stop: asyncio.Event, poll_interval: float = 1.0) -> None:
        while not stop.is_set():
            self.wakeup.clear()
            while not stop.is_set() and (await self.sync_one() or await self._idle()):
                pass
            due = self._next_due()
            timeout = poll_interval if due is None else min(poll_interval, due)
            waiters = [asyncio.create_task(self.wakeup.wait()), asyncio.create_task(stop.wait())]
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()

    def _next_due(self) -> float | None:
        if len(self._passing) > 10_000:
            self._passing.clear()  # only an ordering hint: safe to forget
        if len(self._no_comment) > 10_000:
            self._no_comment.clear()  # only saves a lookup: safe to forget
        return self.queue.next_due()

    async def _idle(self) -> bool:
        if self.idle_work is None:
            return False
        try:
            return await self.idle_work()
        except Exception:
            log.exception("the notifier's idle work failed")
            return False

    # ----- rendering ---------------------------------------------------------------------------

    def _environment_of(self, pull: PullRequest) -> Environment | None:
        with self.db.session() as session:
            return session.exec(
                select(Environment)
                .where(
                    Environment.repository == pull.repository, Environment.pr_number == pull.number
                )
                .order_by(col(Environment.created_at).desc())
                .limit(1)
            ).first()

    def _log_tail(self, env: Environment) -> tuple[str, ...]:
        if env.last_run_id is None:
            return ()
        text, _ = read_log(self.db, env.last_run_id)
        return tuple(text.splitlines()[-30:])

    def may_quote_logs(self, pull: PullRequest) -> bool:
        """May a failed run's comment quote its log? Not on a public repository (or one not
        known to be private), unless the operator policy's `quote_logs` allows it."""
        if self.gateway.local or pull.public is False:
            return True
        return self.policy_for(pull.repository).quote_logs

    def view(self, pull: PullRequest, env: Environment | None) -> StatusView | None:
        """What the PR's comments show: no host path or catalog listing in any of it."""
        failed = env is not None and env.status in (Status.FAILED, Status.DESTROY_FAILED)
        quote = self.may_quote_logs(pull)
        log_tail = self._log_tail(env) if env is not None and failed and quote else ()
        view = status_view(
            pull,
            env,
            public_url=self.public_url,
            app_slug=self.app_slug,
            commands_help=self.commands_help,
            log_tail=tuple(public_text(line, self.host_paths) for line in log_tail),
        )
        if view is None:
            return None
        reason = public_text(view.reason, self.host_paths) if view.reason else view.reason
        return dataclasses.replace(
            view,
            reason=reason,
            quote_log=quote,
            ready_phases=ready_phases(self.db, env) if view.state == "ready" else (),
            **money_fields(self.db, self.policy_file(), self.currency, pull, env, view.now),
        )

    # ----- syncing -----------------------------------------------------------------------------

    async def sync(self, key: str, version: int | None = None) -> str:
        """Send what the PR is owed, one write at a time, each rendered from fresh state.

        Returns DONE when nothing more is owed for `version`, STALE when a newer state arrived
        (the caller claims it again, comment first), DEFERRED when the PR was set aside.
        """
        while True:
            with self.db.session() as session:
                pull = session.get(PullRequest, key)
            if pull is None:
                self._passing.pop(key, None)
                return DONE
            write: _Write | None
            if key in self._passing:
                write = self._pass_write(pull, self._passing[key])
                if write is None:
                    del self._passing[key]
                    continue
            else:
                if version is not None and pull.sync_version != version:
                    return STALE
                write = await self._next_write(pull)
                if write is None:
                    return DONE
                if write.kind == WriteKind.SETTLE:
                    return DEFERRED
                if write.kind in _DEPLOYMENT_KINDS:
                    self._passing[key] = _Pass(pull.sync_version)
                    if version is not None:
                        return STALE  # other PRs' comments go before this deployment write
            wait = self._slot_wait(pull)
            if wait > 0:
                if version is None:  # called directly (CLI, tests): just wait
                    await asyncio.sleep(wait)
                    continue
                self.queue.set_aside(key, version, time.monotonic() + wait)
                return DEFERRED
            try:
                await write.send()
            finally:
                self._stamp(pull)
            if write.kind == WriteKind.COMMENT:
                self._passing[key] = _Pass(pull.sync_version, write.env, write.view)
                if version is not None:
                    return STALE  # other PRs' comments go before this PR's deployment writes

    def _pass_write(self, pull: PullRequest, current: _Pass) -> _Write | None:
        """The next deployment write of a pass, or None when the pass is over.

        A pass follows a comment. When that comment showed an outcome (a URL, a failure, the
        end), the deployment catches up with exactly that outcome, as it was shown, whatever
        happened since: every outcome people saw in the comment is in the deployment history
        (created, `in_progress`, then `success` with its URL...). Otherwise the deployment
        follows the current state, and a newer state interrupts the pass so that its comment
        goes first; but a deployment just created always gets its first status before that.
        """
        if current.env is not None and current.view is not None:
            return self._deployment(pull, current.env, current.view)
        env = self._environment_of(pull)
        view = self.view(pull, env)
        just_created = pull.deployment_id is not None and pull.deployment_state is None
        if pull.sync_version != current.version and not just_created:
            return None
        return self._deployment(pull, env, view)

    def _writer(self, pull: PullRequest) -> Any:
        return pull.installation_id if pull.installation_id is not None else pull.repository

    def _slot_wait(self, pull: PullRequest) -> float:
        last = self._last_write.get(self._writer(pull))
        if last is None or not self.write_interval:
            return 0.0
        return max(0.0, last + self.write_interval - time.monotonic())

    def _stamp(self, pull: PullRequest) -> None:
        if self.write_interval:
            self._last_write[self._writer(pull)] = time.monotonic()

    async def _next_write(self, pull: PullRequest) -> _Write | None:
        """The most important write this PR is owed now, or None when it is up to date."""
        env = self._environment_of(pull)
        view = self.view(pull, env)
        settle_left = self._settle_left(env, view)
        planned = next_write(
            pull,
            env,
            view,
            config_body=(
                render_config_error(public_text(pull.config_error, self.host_paths))
                if pull.config_error
                else None
            ),
            status_body=render_status_comment(view) if view is not None else None,
            settling=settle_left > 0,
        )
        if planned is None:
            return None
        if planned.kind == WriteKind.SETTLE:
            self.queue.set_aside(pull.id, pull.sync_version, time.monotonic() + settle_left)
        if (
            planned.kind == WriteKind.SETTLE
            and pull.comment_id is None
            and pull.id not in self._no_comment
        ):
            # Look for an existing comment now (a read: not paced), so that the write that
            # follows the hold is the only request on the critical path.
            found = await self.gateway.find_comment(
                pull.installation_id, pull.repository, pull.number, MARKER
            )
            if found is None:
                self._no_comment.add(pull.id)
            else:
                self._save(pull.id, comment_id=found)
        outcome = planned.kind == WriteKind.COMMENT and planned.shows_outcome
        return _Write(
            planned,
            self._sender(pull, planned),
            env=env if outcome else None,
            view=view if outcome else None,
        )

    def _deployment(
        self, pull: PullRequest, env: Environment | None, view: StatusView | None
    ) -> _Write | None:
        planned = next_followup_write(pull, env, view)
        return None if planned is None else _Write(planned, self._sender(pull, planned))

    def _settle_left(self, env: Environment | None, view: StatusView | None) -> float:
        """Seconds a state in flux is still too new to be worth a write (0: write now).

        In flux: a transitional state, or a desired change no worker has finished yet (a ready
        environment that was just told to update or go away would otherwise be re-rendered as
        "ready", spending the write slot its real outcome needs a moment later).
        """
        if not self.settle or env is None or view is None:
            return 0.0
        if view.state not in IN_FLUX and at_rest(env):
            return 0.0
        return max(0.0, self.settle - (utcnow() - env.updated_at).total_seconds())
