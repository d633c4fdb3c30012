"""Which GitHub write a PR is owed next, as a pure function of what was last written.

The notifier gathers the PR row, its newest environment and the rendered bodies, asks
`next_write`, performs the write it names and records its effect. Deciding here and writing
there keeps the order of writes (the comment before deployment statuses, a superseded
deployment made inactive before a new one) testable without GitHub.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from enum import StrEnum

from app.db.models import Environment, PullRequest
from app.github.checkrun import CheckRunWant, CheckStatus, desired_check_run, superseded
from app.github.comment import StatusView, deployment_state
from app.lifecycle.states import Status

__all__ = [
    "IN_FLUX",
    "IN_FLUX_STATUSES",
    "CheckRunWant",
    "PlannedWrite",
    "WriteKind",
    "at_rest",
    "digest",
    "next_check_run_write",
    "next_deployment_write",
    "next_followup_write",
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
    CHECK_RUN = "check_run"  # create the check run on the PR's head commit
    CHECK_RUN_UPDATE = "check_run_update"  # edit (or complete) the existing check run
    TIDY = "tidy"  # delete a closed PR's inactive deployments (and its GitHub environment)


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
    key: str = ""  # DEPLOYMENT: "<environment id>@<sha>"; TIDY: the environment id
    check: CheckRunWant | None = None  # CHECK_RUN, CHECK_RUN_UPDATE: what it shows
    check_run_id: int | None = None  # CHECK_RUN_UPDATE


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
        return next_check_run_write(pull, env, None)
    # Quiet: no status comment, unless the environment failed (or one is already there).
    quiet = pull.quiet and view.state != "failed" and not pull.comment_id
    if not quiet and not (pull.comment_digest == digest(status_body) and pull.comment_id):
        if settling:
            return PlannedWrite(WriteKind.SETTLE)
        outcome = view.state not in IN_FLUX and env is not None and at_rest(env)
        return PlannedWrite(
            WriteKind.COMMENT,
            body=status_body,
            shows_outcome=outcome,
            sha=pull.head_sha,
        )
    return next_followup_write(pull, env, view)


def next_followup_write(
    pull: PullRequest, env: Environment | None, view: StatusView | None
) -> PlannedWrite | None:
    """What follows the comment: the check run, then the deployment, then the tidy-up."""
    check = next_check_run_write(pull, env, view)
    if check is not None or env is None or view is None:
        return check
    return next_deployment_write(pull, env, view) or next_tidy_write(pull, env)


def next_check_run_write(
    pull: PullRequest, env: Environment | None, view: StatusView | None
) -> PlannedWrite | None:
    """Complete the check run of a superseded commit, then create or edit the head's."""
    want = desired_check_run(pull, env, view)
    if (
        pull.check_run_id is not None
        and not pull.check_run_done
        and (want is None or want.sha != pull.check_run_sha)
    ):
        return PlannedWrite(
            WriteKind.CHECK_RUN_UPDATE,
            check=superseded(pull, pull.head_sha),
            check_run_id=pull.check_run_id,
        )
    if want is None:
        return None
    if pull.check_run_id is None or pull.check_run_sha != want.sha:
        if want.conclusion in ("success", "failure"):
            # Like the deployment: a run on a new commit always shows that it started.
            want = dataclasses.replace(
                want,
                status=CheckStatus.IN_PROGRESS,
                conclusion=None,
                title="Deploying",
                summary="runbot is deploying this commit.",
            )
        refused = pull.check_run_id is None and pull.check_run_sha == want.sha
        if refused and pull.check_run_digest == want.digest:
            return None  # GitHub refused this commit's run (no `checks: write`): once is enough
        return PlannedWrite(WriteKind.CHECK_RUN, check=want)
    if pull.check_run_digest == want.digest:
        return None
    if pull.check_run_done:  # a completed run is not reopened: a new run on the commit
        return PlannedWrite(WriteKind.CHECK_RUN, check=want)
    return PlannedWrite(WriteKind.CHECK_RUN_UPDATE, check=want, check_run_id=pull.check_run_id)


def next_tidy_write(pull: PullRequest, env: Environment) -> PlannedWrite | None:
    """A closed PR whose environment is gone: delete its (inactive) deployments, once."""
    if (
        pull.state == "open"
        or env.status != Status.DESTROYED
        or pull.keep_deployments
        or pull.deployment_id is None
        or pull.deployment_state != "inactive"
        or pull.tidied_env == env.id
    ):
        return None
    return PlannedWrite(WriteKind.TIDY, key=env.id, description=f"pr-{pull.number}")


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
