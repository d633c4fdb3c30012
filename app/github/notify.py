"""The status comment and deployment of each PR, reconciled like the engine.

They are a pure rendering of current state. Syncing re-renders at send time, so the newest state
always wins; an identical rendering is not sent again (no comment spam); a failed or rate-limited
sync is retried with backoff until it lands, so a GitHub outage delays updates but never loses one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, update
from sqlmodel import col, select

from app.db.models import Environment, PullRequest, utcnow
from app.db.session import Database
from app.engine.logs import read_log
from app.github.comment import (
    CONFIG_MARKER,
    MARKER,
    StatusView,
    deployment_state,
    render_config_error,
    render_status_comment,
)
from app.github.gateway import Gateway, GitHubError, NotFoundOnGitHub, RetryLater
from app.lifecycle.states import Status

log = logging.getLogger("runbot.notify")

BACKOFF = (2.0, 5.0, 15.0, 60.0, 300.0)
STATUS_TO_VIEW = {
    Status.PENDING: "queued",
    Status.QUEUED: "queued",
    Status.CREATING: "creating",
    Status.READY: "ready",
    Status.UPDATING: "updating",
    Status.SLEEPING: "sleeping",
    Status.FAILED: "failed",
    Status.DESTROYING: "destroying",
    Status.DESTROYED: "destroyed",
}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Notifier:
    def __init__(
        self,
        db: Database,
        gateway: Gateway,
        *,
        public_url: str,
        app_slug: str | None,
        worker_id: str,
        lease_seconds: float = 60.0,
    ) -> None:
        self.db = db
        self.gateway = gateway
        self.public_url = public_url.rstrip("/")
        self.app_slug = app_slug
        self.worker_id = worker_id
        self.lease = timedelta(seconds=lease_seconds)
        self.wakeup = asyncio.Event()

    def claim(self) -> tuple[str, int] | None:
        now = utcnow()
        with self.db.session() as session:
            query = (
                select(PullRequest)
                .where(PullRequest.sync_version != PullRequest.synced_version)
                .where(
                    or_(
                        col(PullRequest.next_sync_at).is_(None),
                        col(PullRequest.next_sync_at) <= now,
                    )
                )
                .where(
                    or_(
                        col(PullRequest.sync_lease_expires_at).is_(None),
                        col(PullRequest.sync_lease_expires_at) < now,
                    )
                )
                .order_by(col(PullRequest.updated_at))
                .limit(1)
            )
            if self.db.is_postgres:
                query = query.with_for_update(skip_locked=True)
            pull = session.exec(query).first()
            if pull is None:
                return None
            pull.sync_lease_owner, pull.sync_lease_expires_at = self.worker_id, now + self.lease
            session.add(pull)
            session.commit()
            return pull.id, pull.sync_version

    def _release(
        self, key: str, *, synced: int | None = None, retry_in: float | None = None
    ) -> None:
        with self.db.session() as session:
            pull = session.get(PullRequest, key)
            if pull is None or pull.sync_lease_owner != self.worker_id:
                return
            pull.sync_lease_owner, pull.sync_lease_expires_at = None, None
            if synced is not None:
                pull.synced_version, pull.sync_attempts, pull.next_sync_at = synced, 0, None
            if retry_in is not None:
                pull.sync_attempts += 1
                pull.next_sync_at = utcnow() + timedelta(seconds=retry_in)
            session.add(pull)
            session.commit()

    async def sync_one(self) -> bool:
        claimed = self.claim()
        if claimed is None:
            return False
        key, version = claimed
        try:
            await self.sync(key)
        except RetryLater as exc:
            log.warning("sync of %s postponed %.0fs: %s", key, exc.retry_after, exc)
            self._release(key, retry_in=max(exc.retry_after, 1.0))
            return True
        except GitHubError as exc:
            with self.db.session() as session:
                pull = session.get(PullRequest, key)
                attempts = pull.sync_attempts if pull else 0
            delay = BACKOFF[min(attempts, len(BACKOFF) - 1)]
            log.warning("sync of %s failed, retrying in %.0fs: %s", key, delay, exc)
            self._release(key, retry_in=delay)
            return True
        except Exception:
            log.exception("sync of %s failed unexpectedly", key)
            self._release(key, retry_in=BACKOFF[-1])
            return True
        self._release(key, synced=version)
        return True

    async def run(self, stop: asyncio.Event, poll_interval: float = 1.0) -> None:
        while not stop.is_set():
            self.wakeup.clear()
            while not stop.is_set() and await self.sync_one():
                pass
            waiters = [asyncio.create_task(self.wakeup.wait()), asyncio.create_task(stop.wait())]
            await asyncio.wait(waiters, timeout=poll_interval, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()

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

    def view(self, pull: PullRequest, env: Environment | None) -> StatusView | None:
        if not pull.enabled:
            return None
        stamp = max(pull.updated_at, env.updated_at) if env else pull.updated_at
        if env is None or (
            env.status == Status.DESTROYED and pull.hold_reason and pull.state == "open"
        ):
            if not pull.hold_reason or pull.hold_reason == "closed":
                return None
            state = (
                "waiting_ci"
                if "checks" in pull.hold_reason
                else ("queued" if pull.hold_reason.startswith("queued:") else "not_deployed")
            )
            return StatusView(
                repository=pull.repository,
                pr_number=pull.number,
                state=state,
                now=stamp,
                reason=pull.hold_reason,
                head_sha=pull.head_sha,
                app_slug=self.app_slug,
            )
        state = STATUS_TO_VIEW[Status(env.status)]
        reason = env.reason
        if pull.hold_reason and env.status in (Status.READY, Status.SLEEPING):
            reason = pull.hold_reason  # e.g. checks failed: staying at the last good SHA
        expires = env.expires_at if env.status != Status.DESTROYED else None
        policy_max = env.ttl.get("max") if env.ttl else None
        run_link = f"{self.public_url}/environments/{env.id}"
        if env.last_run_id:
            run_link += f"#run-{env.last_run_id}"
        return StatusView(
            repository=pull.repository,
            pr_number=pull.number,
            state=state,
            now=stamp,
            reason=reason,
            environment_id=env.id,
            silo=env.silo_name,
            url=env.url if env.status == Status.READY else None,
            deployed_sha=env.deployed_sha,
            head_sha=env.head_sha,
            expires_at=expires,
            max_expires_at=(
                env.created_at + timedelta(seconds=policy_max) if policy_max and expires else None
            ),
            warning=bool(expires and env.warned_for and env.warned_for == expires),
            log_url=run_link,
            log_tail=self._log_tail(env) if env.status == Status.FAILED else (),
            app_slug=self.app_slug,
        )

    # ----- syncing -----------------------------------------------------------------------------

    async def sync(self, key: str) -> None:
        with self.db.session() as session:
            pull = session.get(PullRequest, key)
        if pull is None:
            return
        if pull.config_error:
            await self._sync_config_error(pull)
        env = self._environment_of(pull)
        view = self.view(pull, env)
        if view is None:
            return
        await self._sync_comment(pull, render_status_comment(view))
        if env is not None:
            await self._sync_deployment(pull, env, view)

    def _save(self, key: str, **values: Any) -> None:
        with self.db.session() as session:
            session.execute(update(PullRequest).where(PullRequest.id == key).values(**values))
            session.commit()

    async def _sync_config_error(self, pull: PullRequest) -> None:
        body = render_config_error(pull.config_error or "")
        digest = _digest(body)
        if pull.config_comment_digest == digest:
            return
        existing = await self.gateway.find_comment(
            pull.installation_id, pull.repository, pull.number, CONFIG_MARKER
        )
        if existing:
            await self.gateway.update_comment(pull.installation_id, pull.repository, existing, body)
        else:
            await self.gateway.create_comment(
                pull.installation_id, pull.repository, pull.number, body
            )
        self._save(pull.id, config_comment_digest=digest)

    async def _sync_comment(self, pull: PullRequest, body: str) -> None:
        digest = _digest(body)
        if pull.comment_digest == digest and pull.comment_id:
            return
        comment_id = pull.comment_id
        if comment_id is None:
            # Found again by its marker if the database lost the id.
            comment_id = await self.gateway.find_comment(
                pull.installation_id, pull.repository, pull.number, MARKER
            )
        if comment_id is not None:
            try:
                await self.gateway.update_comment(
                    pull.installation_id, pull.repository, comment_id, body
                )
            except NotFoundOnGitHub:
                comment_id = None  # someone deleted it: post a fresh one
        if comment_id is None:
            comment_id = await self.gateway.create_comment(
                pull.installation_id, pull.repository, pull.number, body
            )
        self._save(pull.id, comment_id=comment_id, comment_digest=digest)

    async def _sync_deployment(self, pull: PullRequest, env: Environment, view: StatusView) -> None:
        state, description = deployment_state(view)
        sha = env.deployed_sha if env.status == Status.DESTROYED else env.head_sha
        if not sha or (env.status in (Status.PENDING, Status.QUEUED) and not pull.deployment_id):
            return
        key = f"{env.id}@{sha}"
        deployment_id = pull.deployment_id
        if pull.deployment_key != key:
            if env.status == Status.DESTROYED:
                if deployment_id and pull.deployment_state != "inactive":
                    await self.gateway.create_deployment_status(
                        pull.installation_id,
                        pull.repository,
                        deployment_id,
                        "inactive",
                        None,
                        view.log_url,
                        description,
                    )
                    self._save(pull.id, deployment_state="inactive")
                return
            if deployment_id and pull.deployment_state not in (None, "inactive"):
                await self.gateway.create_deployment_status(
                    pull.installation_id,
                    pull.repository,
                    deployment_id,
                    "inactive",
                    None,
                    view.log_url,
                    "superseded by a newer commit",
                )
            deployment_id = await self.gateway.create_deployment(
                pull.installation_id,
                pull.repository,
                sha,
                f"pr-{pull.number}",
                f"runbot environment {env.id}",
            )
            self._save(
                pull.id, deployment_id=deployment_id, deployment_key=key, deployment_state=None
            )
            # A deployment always shows that it started, even if the apply finished meanwhile.
            await self.gateway.create_deployment_status(
                pull.installation_id,
                pull.repository,
                deployment_id,
                "in_progress",
                None,
                view.log_url,
                "deploying",
            )
            self._save(pull.id, deployment_state="in_progress")
            pull.deployment_state, pull.deployment_key = "in_progress", key
        if pull.deployment_state == state:
            return
        assert deployment_id is not None
        await self.gateway.create_deployment_status(
            pull.installation_id,
            pull.repository,
            deployment_id,
            state,
            env.url if state == "success" else None,
            view.log_url,
            description,
        )
        self._save(pull.id, deployment_state=state)
