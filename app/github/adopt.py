"""GitHub creates that survive a crash between the request and the record of its id.

Just before it creates a deployment or a check run, the notifier records what it is about
to create (`PullRequest.deployment_creating`, `check_run_creating`); with the new id it
clears the mark. A mark still set on the next attempt means a create may have landed
unrecorded (the process was killed in between): what it left is looked up, then adopted when
it is for the same thing, or completed (`inactive`, `neutral`) when it is not. Nothing stays
pending on GitHub, and no request is spent on the lookup unless a create was cut off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.db.models import PullRequest
from app.github.gateway import CheckRunFields, Gateway

__all__ = ["create_check_run", "create_deployment"]

#: Stores column values on the PR's row: ``save(pull_id, **values)``.
Save = Callable[..., None]

_LEFT_BEHIND = "Left behind by an interrupted run; a newer one follows"


async def create_deployment(
    gateway: Gateway, pull: PullRequest, key: str, sha: str, description: str, save: Save
) -> None:
    """Create the PR's deployment for ``key`` (its environment and commit) and record it."""
    installation, repository, environment = (
        pull.installation_id,
        pull.repository,
        f"pr-{pull.number}",
    )
    if pull.deployment_creating is not None:
        known = pull.deployment_id or 0
        listed = await gateway.list_deployments(installation, repository, environment)
        strays = sorted(found for found in listed if found > known)
        adopted = strays.pop() if strays and pull.deployment_creating == key else None
        for stray in strays:
            await gateway.create_deployment_status(
                installation, repository, stray, "inactive", None, None, _LEFT_BEHIND
            )
        if adopted is not None:
            save(pull.id, **_deployment_recorded(adopted, key))
            return
    save(pull.id, deployment_creating=key)
    created = await gateway.create_deployment(
        installation, repository, sha, environment, description
    )
    save(pull.id, **_deployment_recorded(created, key))


def _deployment_recorded(deployment_id: int, key: str) -> dict[str, Any]:
    return {
        "deployment_id": deployment_id,
        "deployment_key": key,
        "deployment_state": None,
        "deployment_creating": None,
    }


async def create_check_run(
    gateway: Gateway,
    pull: PullRequest,
    sha: str,
    fields: CheckRunFields,
    recorded: dict[str, Any],
    save: Save,
) -> None:
    """Create the `runbot` check run on ``sha`` showing ``fields``; ``recorded`` is what the
    row stores with its id."""
    installation, repository, marked = (
        pull.installation_id,
        pull.repository,
        pull.check_run_creating,
    )
    if marked is not None:
        stray = await gateway.find_check_run(installation, repository, marked)
        if stray is not None and marked == sha:
            await gateway.update_check_run(installation, repository, stray, fields)
            save(pull.id, check_run_id=stray, check_run_creating=None, **recorded)
            return
        if stray is not None:
            done = CheckRunFields(
                status="completed",
                conclusion="neutral",
                title="Superseded",
                summary=_LEFT_BEHIND + ".",
            )
            await gateway.update_check_run(installation, repository, stray, done)
    save(pull.id, check_run_creating=sha)
    created = await gateway.create_check_run(installation, repository, sha, fields)
    save(pull.id, check_run_id=created, check_run_creating=None, **recorded)
