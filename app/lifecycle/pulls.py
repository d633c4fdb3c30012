"""A PR's row as the lifecycle touches it: its key, and "its comment must be re-rendered"."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlmodel import col

from app.db.models import PullRequest


def pull_id(repository: str, number: int) -> str:
    return f"{repository}#{number}"


def mark_pull_dirty(
    session: Any, repository: str, pr_number: int, *, withdraw_approval: bool = False
) -> None:
    """The PR's status comment and deployment must be re-rendered: bump its sync version.
    ``withdraw_approval``: a teardown runbot decided (expiry) ends what `/runbot deploy`
    approved, so the code does not come back without a maintainer looking again."""
    values: dict[str, Any] = {"sync_version": PullRequest.sync_version + 1}
    if withdraw_approval:
        values["approved_sha"] = None
    session.exec(
        update(PullRequest)
        .where(col(PullRequest.id) == pull_id(repository, pr_number))
        .values(**values)
    )
