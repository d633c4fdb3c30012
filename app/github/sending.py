"""Sending what the notifier planned: the I/O of each write, and the record that it landed.

Mixed into `Notifier`, apart from its planning and pacing (which PR, which write, when) to keep
each file small: here a `PlannedWrite` becomes GitHub requests, and what GitHub answered
(a comment id, a digest of what was shown, a deployment state) is saved on the PR's row.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import update
from sqlmodel import col

from app.db.models import PullRequest
from app.db.session import Database
from app.github import adopt
from app.github.comment import CONFIG_MARKER, MARKER
from app.github.gateway import CheckRunFields, ForbiddenOnGitHub, Gateway, NotFoundOnGitHub
from app.github.writes import CheckRunWant, PlannedWrite, WriteKind, digest

__all__ = ["Sending"]

log = logging.getLogger("runbot.notify")


class Sending:
    """The senders of `Notifier`, by `WriteKind`."""

    db: Database
    gateway: Gateway
    delete_environments: bool
    _no_comment: set[str]

    def _sender(self, pull: PullRequest, planned: PlannedWrite) -> Callable[[], Awaitable[None]]:
        """The I/O that performs a planned write and records that it landed."""
        installation, repository = pull.installation_id, pull.repository
        if planned.kind == WriteKind.CONFIG_ERROR:
            return lambda: self._sync_config_error(pull, planned.body)
        if planned.kind == WriteKind.COMMENT:
            return lambda: self._sync_comment(pull, planned.body, planned.sha or None)
        if planned.kind == WriteKind.DEPLOYMENT:
            key, sha, text = planned.key, planned.sha, planned.description
            return lambda: adopt.create_deployment(self.gateway, pull, key, sha, text, self._save)
        if planned.kind == WriteKind.DEPLOYMENT_STATUS:
            assert planned.deployment_id is not None
            target = planned.deployment_id

            async def status() -> None:
                await self.gateway.create_deployment_status(
                    installation,
                    repository,
                    target,
                    planned.state,
                    planned.url,
                    planned.log_url,
                    planned.description,
                )
                self._save(pull.id, deployment_state=planned.state)

            return status
        if planned.kind in (WriteKind.CHECK_RUN, WriteKind.CHECK_RUN_UPDATE):
            return lambda: self._sync_check_run(pull, planned)
        if planned.kind == WriteKind.TIDY:
            return lambda: self._tidy(pull, planned)
        return _nothing

    async def _sync_check_run(self, pull: PullRequest, planned: PlannedWrite) -> None:
        """Create or edit the `runbot` check run and record what it shows.

        An installation that has not accepted `checks: write` yet answers 403: the check run
        is skipped for this state (one refused request per change), so it never holds back
        the deployment writes that follow it; the planner asks again on the next commit."""
        want = planned.check
        assert want is not None
        try:
            await self._write_check_run(pull, planned, want)
        except ForbiddenOnGitHub as exc:
            log.warning("%s: check run skipped: %s", pull.id, exc)
            self._save(
                pull.id,
                check_run_sha=want.sha,
                check_run_digest=want.digest,
                check_run_done=True,
                check_run_creating=None,
            )

    async def _write_check_run(
        self, pull: PullRequest, planned: PlannedWrite, want: CheckRunWant
    ) -> None:
        fields = CheckRunFields(
            status=want.status,
            conclusion=want.conclusion,
            title=want.title,
            summary=want.summary,
            details_url=want.details_url,
        )
        if planned.kind == WriteKind.CHECK_RUN_UPDATE and planned.check_run_id is not None:
            # Gone with its commit (a force-push): nothing left to complete.
            with contextlib.suppress(NotFoundOnGitHub):
                await self.gateway.update_check_run(
                    pull.installation_id, pull.repository, planned.check_run_id, fields
                )
            if want.sha != pull.head_sha:  # the superseded run: done, the head's is next
                self._save(pull.id, check_run_done=True, check_run_digest=want.digest)
                return
            self._save(pull.id, check_run_digest=want.digest, check_run_done=want.done)
            return
        recorded = {
            "check_run_sha": want.sha,
            "check_run_digest": want.digest,
            "check_run_done": want.done,
        }
        await adopt.create_check_run(self.gateway, pull, want.sha, fields, recorded, self._save)

    async def _tidy(self, pull: PullRequest, planned: PlannedWrite) -> None:
        """Delete a closed PR's deployments (each made inactive first if need be) and, when
        the operator opted in, its GitHub environment."""
        environment = planned.description
        for deployment_id in await self.gateway.list_deployments(
            pull.installation_id, pull.repository, environment
        ):
            await self.gateway.delete_deployment(
                pull.installation_id, pull.repository, deployment_id
            )
        if self.delete_environments:
            await self.gateway.delete_environment(
                pull.installation_id, pull.repository, environment
            )
        self._save(pull.id, tidied_env=planned.key)

    def _save(self, key: str, **values: Any) -> None:
        with self.db.session() as session:
            session.exec(update(PullRequest).where(col(PullRequest.id) == key).values(**values))
            session.commit()

    async def _sync_config_error(self, pull: PullRequest, body: str) -> None:
        sent = digest(body)
        existing = await self.gateway.find_comment(
            pull.installation_id, pull.repository, pull.number, CONFIG_MARKER
        )
        if existing:
            await self.gateway.update_comment(pull.installation_id, pull.repository, existing, body)
        else:
            await self.gateway.create_comment(
                pull.installation_id, pull.repository, pull.number, body
            )
        self._save(pull.id, config_comment_digest=sent)

    async def _sync_comment(self, pull: PullRequest, body: str, shown_sha: str | None) -> None:
        """Create or edit the status comment; remember which head commit it showed, the one
        a maintainer's `/runbot deploy` approves."""
        sent = digest(body)
        if pull.comment_digest == sent and pull.comment_id:
            return
        comment_id = pull.comment_id
        if comment_id is None and pull.id not in self._no_comment:
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
        self._save(pull.id, comment_id=comment_id, comment_digest=sent, shown_sha=shown_sha)


async def _nothing() -> None:
    return None
