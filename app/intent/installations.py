"""Installation events and resync lists → the installation row, and the PRs they cut off.

The pure `app.github.installations` says what an event or GitHub's list changed; this module
stores it and re-decides the PRs it touched, through the one level-triggered
`reconcile_pull` (whose decision destroys what a cut-off repository still runs). A repository
given back has its PRs re-decided at once, and its parked GitHub writes released.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

from sqlalchemy import ColumnElement, func, or_, update
from sqlmodel import col, select

from app.db.models import Environment, Installation, PullRequest, utcnow
from app.db.session import Database
from app.github.installations import (
    CUTOFF_REASONS,
    Change,
    Cutoff,
    InstallationRecord,
    cutoff,
    record_after,
    record_listed,
    record_of,
)
from app.github.payloads import InstallationEvent
from app.intent.decide import CUTOFF_HOLDS
from app.lifecycle.service import Lifecycle
from app.lifecycle.states import Desired, Status

log = logging.getLogger("runbot.intent")

Reconcile = Callable[[str], Awaitable[None]]


class Installations:
    def __init__(self, db: Database, lifecycle: Lifecycle) -> None:
        self.db = db
        self.lifecycle = lifecycle

    def record(self, installation_id: int) -> InstallationRecord | None:
        with self.db.session() as session:
            return record_of(session.get(Installation, installation_id))

    def cutoff_of(self, installation_id: int | None, repository: str) -> Cutoff | None:
        """Why runbot may no longer act for this repository (None: it may)."""
        if installation_id is None:
            return None
        return cutoff(self.record(installation_id), repository)

    def active(self) -> list[int]:
        with self.db.session() as session:
            query = select(Installation.id).where(Installation.state == "active")
            return list(session.exec(query))

    async def handle(self, event: InstallationEvent, reconcile: Reconcile) -> bool:
        """A webhook: fold it into the row, then re-decide the PRs it cut off or gave back."""
        change = record_after(self.record(event.installation_id), event)
        self._save(event.installation_id, change.record)
        await self._apply(event.installation_id, change, reconcile)
        return True

    async def listed(self, installation_id: int, repos: list[str], reconcile: Reconcile) -> None:
        """Resync read GitHub's list of the installation's repositories: the truth."""
        record = self.record(installation_id) or InstallationRecord()
        change = record_listed(record, tuple(repos))
        self._save(installation_id, change.record)
        await self._apply(installation_id, change, reconcile)

    def _save(self, installation_id: int, record: InstallationRecord) -> None:
        with self.db.session() as session:
            row = session.get(Installation, installation_id) or Installation(id=installation_id)
            row.state, row.account = record.state, record.account
            row.repositories = list(record.repositories)
            row.removed_repositories = list(record.removed)
            row.updated_at = utcnow()
            session.add(row)
            session.commit()

    async def _apply(self, installation_id: int, change: Change, reconcile: Reconcile) -> None:
        if change.cut is None and not change.resumed:
            return
        names = change.repositories
        if names is None:
            names = change.record.repositories
            keys = self._pulls(installation_id, names, whole=True)
        else:
            keys = self._pulls(installation_id, names, whole=False)
        if change.cut is not None:
            log.warning(
                "installation %s: %s cuts runbot off %s: destroying their environments",
                installation_id,
                change.cut,
                ", ".join(names) if change.repositories is not None else "all its repositories",
            )
        else:
            self._release_writes(keys)
        for key in keys:
            await reconcile(key)
        if change.cut is not None:
            self._destroy_strays(installation_id, change, names)

    def _pulls(self, installation_id: int, names: Iterable[str], *, whole: bool) -> list[str]:
        """The PRs of these repositories (and, for the whole installation, every PR recorded
        under it); a PR that did not know its installation is given this one."""
        lowered = [name.lower() for name in names]
        with self.db.session() as session:
            matches: ColumnElement[bool] = func.lower(PullRequest.repository).in_(lowered)
            if whole:
                matches = or_(matches, col(PullRequest.installation_id) == installation_id)
            pulls = list(session.exec(select(PullRequest).where(matches)))
            for pull in pulls:
                # Given back by a re-install (a new installation id) or an `added` event: the
                # PR now belongs to this installation.
                if pull.installation_id != installation_id:
                    pull.installation_id = installation_id
                    session.add(pull)
            session.commit()
            return [pull.id for pull in pulls]

    def _release_writes(self, keys: list[str]) -> None:
        """GitHub writes parked while the installation was suspended go out now."""
        if not keys:
            return
        with self.db.session() as session:
            session.exec(
                update(PullRequest)
                .where(col(PullRequest.id).in_(keys))
                .values(next_sync_at=None, sync_attempts=0)
            )
            session.commit()

    def _destroy_strays(self, installation_id: int, change: Change, names: Iterable[str]) -> None:
        """Environments no PR decision covered (made from the CLI, a lost PR row) go too."""
        lowered = [name.lower() for name in names]
        with self.db.session() as session:
            matches: ColumnElement[bool] = func.lower(Environment.repository).in_(lowered)
            if change.repositories is None:
                matches = or_(matches, col(Environment.installation_id) == installation_id)
            live = list(
                session.exec(
                    select(Environment.id).where(
                        matches,
                        Environment.desired != Desired.ABSENT,
                        Environment.status != Status.DESTROYED,
                    )
                )
            )
        assert change.cut is not None
        for env_id in live:
            self.lifecycle.destroy_environment(
                env_id, reason=CUTOFF_REASONS[change.cut], trigger=CUTOFF_HOLDS[change.cut]
            )
