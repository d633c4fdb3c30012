"""Which GitHub write a PR is owed next, as a pure function of what was last written.

The notifier gathers the PR row, its newest environment and the rendered bodies, asks
`next_write`, performs the write it names and records its effect. Deciding here and writing
there keeps the order of writes (the comment before deployment statuses, a superseded
deployment made inactive before a new one) testable without GitHub.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum

from app.db.models import Environment, PullRequest
from app.github.comment import StatusView, deployment_state
from app.lifecycle.states import Status

__all__ = [
    "IN_FLUX",
    "IN_FLUX_STATUSES",
    "PlannedWrite",
    "WriteKind",
    "at_rest",
    "digest",
    "next_deployment_write",
    "next_write",
]

#: View states that usually last only as long as one engine run.
IN_FLUX = frozenset({"queued", "creating", "updating", "destroying"})
IN_FLUX_STATUSES = frozenset(
    {Status.PENDING, Status.QUEUED, Status.CREATING, Status.UPDATING, Status.DESTROYING}
)


class WriteKind(StrEnum):
    CONFIG_ERROR = "config_error"  # create or edit the `.runbot.yml` problem comment
    COMMENT = "comment"  # create or edit the status comment
    SETTLE = "settle"  # nothing yet: the state is in flux, write once it settles
    DEPLOYMENT = "deployment"  # create the deployment of the environment's commit
    DEPLOYMENT_STATUS = "deployment_status"  # add a status to the current deployment


@dataclass(frozen=True)
class PlannedWrite:
    """One write; only the fields its kind uses are set."""

    kind: WriteKind
    body: str = ""  # CONFIG_ERROR, COMMENT
    shows_outcome: bool = False  # COMMENT: the state it shows rests (a URL, a failure, the end)
    deployment_id: int | None = None  # DEPLOYMENT_STATUS
    state: str = ""  # DEPLOYMENT_STATUS: GitHub's deployment state
    url: str | None = None  # DEPLOYMENT_STATUS: the environment URL of a success
    log_url: str | None = None  # DEPLOYMENT_STATUS: where the run log is
    description: str = ""
    sha: str = ""  # DEPLOYMENT: its commit; COMMENT: the PR head it was rendered for
    key: str = ""  # DEPLOYMENT: "<environment id>@<sha>", what the deployment belongs to


def at_rest(env: Environment) -> bool:
    """Its state lasts: the desired state is reached, or its destroy failed and waits for a
    retry (however soon that retry comes, the failure is worth showing)."""
    return env.generation == env.observed_generation or env.status == Status.DESTROY_FAILED


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def next_write(
    pull: PullRequest,
    env: Environment | None,
    view: StatusView | None,
    *,
    config_body: str | None,
    status_body: str | None,
    settling: bool,
) -> PlannedWrite | None:
    """The most important write this PR is owed now, or None when it is up to date.

    ``config_body``/``status_body`` are the rendered comments (None when there is none to
    show); ``settling``: the view is in flux and too new to be worth a write yet.
    """
    if config_body is not None and pull.config_comment_digest != digest(config_body):
        return PlannedWrite(WriteKind.CONFIG_ERROR, body=config_body)
    if view is None or status_body is None:
        return None
    if not (pull.comment_digest == digest(status_body) and pull.comment_id):
        if settling:
            return PlannedWrite(WriteKind.SETTLE)
        outcome = view.state not in IN_FLUX and env is not None and at_rest(env)
        return PlannedWrite(
            WriteKind.COMMENT,
            body=status_body,
            shows_outcome=outcome,
            sha=pull.head_sha,
        )
    if env is not None:
        return next_deployment_write(pull, env, view)
    return None


def next_deployment_write(
    pull: PullRequest, env: Environment, view: StatusView
) -> PlannedWrite | None:
    """The next step of the PR's deployment, each step recorded once it landed.

    Steps: mark the superseded deployment inactive, create the new one, `in_progress` (a
    deployment always shows that it started, even if the apply finished meanwhile), then
    the state the view maps to.
    """
    state, description = deployment_state(view)
    sha = env.deployed_sha if env.status == Status.DESTROYED else env.head_sha
    if not sha or (env.status in (Status.PENDING, Status.QUEUED) and not pull.deployment_id):
        return None
    key = f"{env.id}@{sha}"
    current = pull.deployment_id

    def status(value: str, url: str | None, text: str) -> PlannedWrite:
        return PlannedWrite(
            WriteKind.DEPLOYMENT_STATUS,
            deployment_id=current,
            state=value,
            url=url,
            log_url=view.log_url,
            description=text,
        )

    if pull.deployment_key != key:
        if env.status == Status.DESTROYED:
            if current and pull.deployment_state != "inactive":
                return status("inactive", None, description)
            return None
        if current and pull.deployment_state not in (None, "inactive"):
            return status("inactive", None, "superseded by a newer commit")
        return PlannedWrite(
            WriteKind.DEPLOYMENT,
            sha=sha,
            key=key,
            description=f"runbot environment {env.id}",
        )
    assert current is not None
    if pull.deployment_state is None:
        return status("in_progress", None, "deploying")
    if pull.deployment_state == state:
        return None
    return status(state, env.url if state == "success" else None, description)
