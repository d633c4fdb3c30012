"""What a PR's status comment shows, from its row and its newest environment (pure)."""

from __future__ import annotations

from app.db.models import Environment, PullRequest, Run
from app.db.session import Database
from app.github.comment import StatusView
from app.github.origin import PoolOrigin
from app.lifecycle.outputs import wakes_on_request
from app.lifecycle.pool import CLAIMED, CLAIMING, FALLBACK, FALLBACK_TRIGGER
from app.lifecycle.service import lifetime_limit
from app.lifecycle.states import HoldKind, Status
from app.lifecycle.timings import ordered
from app.ttl.policy import record_sleep_after

__all__ = ["HOLD_TO_VIEW", "STATUS_TO_VIEW", "pool_origin", "ready_phases", "status_view"]

#: The view state of a PR held back, by why; every other hold shows as "not_deployed".
HOLD_TO_VIEW = {
    HoldKind.WAITING_FOR_CI: "waiting_ci",
    HoldKind.CI_FAILED: "waiting_ci",
    HoldKind.QUEUED: "queued",
}
STATUS_TO_VIEW = {
    Status.PENDING: "queued",
    Status.QUEUED: "queued",
    Status.CREATING: "creating",
    Status.READY: "ready",
    Status.UPDATING: "updating",
    Status.SLEEPING: "sleeping",
    Status.FAILED: "failed",
    Status.DESTROYING: "destroying",
    Status.DESTROY_FAILED: "destroy_failed",
    Status.DESTROYED: "destroyed",
}


def pool_origin(env: Environment) -> PoolOrigin:
    """Where the PR's environment came from, by its `pool_state`.

    A claim that failed is `claiming` and failed until the pool keeper falls back; the keeper
    then marks it `claimed` only to win it over other replicas, and destroys it with the
    trigger `pool-fallback`: that one still reads as the failed claim it is.
    """
    if env.pool_state == FALLBACK:
        return PoolOrigin.FALLBACK
    if env.pool_state == CLAIMING:
        return PoolOrigin.CLAIM_FAILED if env.status == Status.FAILED else PoolOrigin.CLAIMING
    if env.pool_state == CLAIMED:
        return PoolOrigin.CLAIM_FAILED if env.trigger == FALLBACK_TRIGGER else PoolOrigin.CLAIMED
    return PoolOrigin.NONE


def status_view(
    pull: PullRequest,
    env: Environment | None,
    *,
    public_url: str,
    app_slug: str | None,
    commands_help: str = "",
    log_tail: tuple[str, ...] = (),
) -> StatusView | None:
    """None when there is nothing to show (no config, or a closed PR that never ran)."""
    if not pull.enabled:
        return None
    stamp = max(pull.updated_at, env.updated_at) if env else pull.updated_at
    if env is None or (env.status == Status.DESTROYED and pull.hold_kind and pull.state == "open"):
        if not pull.hold_kind or pull.hold_kind == HoldKind.CLOSED:
            return None
        return StatusView(
            repository=pull.repository,
            pr_number=pull.number,
            state=HOLD_TO_VIEW.get(HoldKind(pull.hold_kind), "not_deployed"),
            now=stamp,
            reason=pull.hold_reason,
            head_sha=pull.head_sha,
            app_slug=app_slug,
            commands_help=commands_help,
        )
    reason = env.reason
    if pull.hold_kind and env.status in (Status.READY, Status.SLEEPING):
        reason = pull.hold_reason  # e.g. checks failed: staying at the last good SHA
    expires = env.expires_at if env.status != Status.DESTROYED else None
    failed = env.status in (Status.FAILED, Status.DESTROY_FAILED)
    wakes = env.status == Status.SLEEPING and wakes_on_request(env.outputs)
    run_link = f"{public_url}/environments/{env.id}"
    if env.last_run_id:
        run_link += f"#run-{env.last_run_id}"
    return StatusView(
        repository=pull.repository,
        pr_number=pull.number,
        state=STATUS_TO_VIEW[Status(env.status)],
        now=stamp,
        reason=reason,
        environment_id=env.id,
        silo=env.silo_name,
        url=env.url if env.status == Status.READY or wakes else None,
        deployed_sha=env.deployed_sha,
        head_sha=env.head_sha,
        expires_at=expires,
        max_expires_at=lifetime_limit(env) if expires else None,
        warning=bool(expires and env.warned_for and env.warned_for == expires),
        log_url=run_link,
        log_tail=log_tail if failed else (),
        retry_at=env.next_attempt_at if env.status == Status.DESTROY_FAILED else None,
        slept_at=env.slept_at,
        sleep_reason=env.sleep_reason,
        sleep_after=record_sleep_after(env.ttl),
        wakes_on_request=wakes,
        pool_origin=pool_origin(env),
        app_slug=app_slug,
        commands_help=commands_help,
    )


def ready_phases(db: Database, env: Environment | None) -> tuple[tuple[str, float], ...]:
    """The phases of the apply that made the environment ready (its last run), in order."""
    if env is None or env.last_run_id is None:
        return ()
    with db.session() as session:
        run = session.get(Run, env.last_run_id)
    if run is None or run.operation != "apply" or run.status != "succeeded":
        return ()
    return tuple(ordered(run.timings))
