"""The shapes the dashboard and the REST API show: pages, environments, silos, runs, logs, usage."""

from __future__ import annotations

import math
from datetime import date, datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field, computed_field

from app.db.models import Environment, Run
from app.github.sleeping import sleep_why, wake_ways
from app.lifecycle.outputs import wakes_on_request
from app.lifecycle.states import Desired, Status
from app.lifecycle.timings import ordered
from app.ttl.policy import record_sleep_after

T = TypeVar("T")

MAX_PER_PAGE = 200
DEFAULT_PER_PAGE = 50
USAGE_DAYS = 30
STATUS_FILTERS = ("live", "all", *(s.value for s in Status))


class PageOut(BaseModel, Generic[T]):
    items: list[T]
    page: int
    per_page: int
    total: int

    # mypy rejects any decorator above @property; pydantic documents this very stacking.
    @computed_field  # type: ignore[prop-decorator]
    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))

    @computed_field  # type: ignore[prop-decorator]  # as above
    @property
    def has_next(self) -> bool:
        return self.page < self.pages


class EnvironmentOut(BaseModel):
    id: str
    repository: str
    pr_number: int = Field(description="0: an unclaimed warm-pool instance (no PR yet)")
    pr_url: str | None = Field(description="The pull request; null for a warm-pool instance")
    author: str
    status: str
    desired: str
    reason: str | None
    url: str | None
    silo: str
    slot: int | None
    stack: str
    head_sha: str
    head_ref: str
    deployed_sha: str | None
    trigger: str
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    max_expires_at: datetime | None = Field(description="Extensions stop here (ttl.max)")
    destroyed_at: datetime | None
    last_run_id: int | None
    outputs: dict[str, Any] = Field(description="Instance outputs; sensitive values masked")
    retry_at: datetime | None = Field(
        default=None, description="destroy_failed: when the destroy is retried by itself"
    )
    failed_attempts: int = Field(default=0, description="Failed runs in a row")
    cost_so_far: float | None = Field(
        default=None, description="Money spent so far, in `currency` (None: no cost output)"
    )
    hourly_cost: float | None = Field(default=None, description="Money per hour now")
    currency: str | None = Field(default=None, description="RUNBOT_CURRENCY")
    last_activity_at: datetime | None = Field(
        default=None, description="Last push, command, dashboard action or request"
    )
    slept_at: datetime | None = Field(
        default=None, description="Asked to sleep since (None while wanted awake)"
    )
    sleep_reason: str | None = Field(default=None, description="idle, command or budget")
    sleep_why: str | None = Field(default=None, description="Why it sleeps, in words")
    sleeps_at: datetime | None = Field(
        default=None, description="When it falls asleep if idle until then (ttl.sleep_after)"
    )
    wake_ways: list[str] = Field(default_factory=list, description="How to wake it")
    pool_state: str | None = Field(
        default=None,
        description="warm (an unclaimed pool instance), claiming, claimed (a PR took it from"
        " the pool), fallback (a fresh create after a failed claim); null: never pooled",
    )
    claimed_at: datetime | None = Field(default=None, description="When a PR took it")


class SiloOut(BaseModel):
    name: str
    stack: str
    status: str
    desired: str
    reason: str | None
    capacity: int = Field(description="Slots in total")
    used: int = Field(description="Slots held by environments")
    environments: int = Field(description="Live environments (that you can see)")
    created_at: datetime
    updated_at: datetime
    outputs: dict[str, Any] = Field(description="Silo outputs; sensitive values masked")
    retry_at: datetime | None = Field(
        default=None, description="destroy_failed: when the destroy is retried by itself"
    )
    failed_attempts: int = Field(default=0, description="Failed runs in a row")


class PoolOut(BaseModel):
    """One repository's warm pool in one silo."""

    silo: str
    repository: str
    size: int = Field(description="Warm instances wanted (stack, silo output, policy cap)")
    ready: int = Field(description="Warm instances applied and ready to be claimed")
    starting: int = Field(description="Warm instances being made (or re-applied)")
    failed: int = Field(description="Warm instances whose apply failed (made again)")
    claiming: int = Field(description="Claimed instances still taking their PR's values")
    failures: int = Field(description="Failed applies in a row; the pool waits after them")
    paused_until: datetime | None = Field(description="No new instance before this")
    members: list[EnvironmentOut] = Field(description="The unclaimed instances")
    updated_at: datetime


class PhaseOut(BaseModel):
    name: str
    seconds: float


class RunOut(BaseModel):
    id: int
    target_kind: str
    target_id: str
    operation: str
    trigger: str
    status: str
    phase: str
    exit_code: int | None
    head_sha: str | None
    error: str | None
    started_at: datetime
    finished_at: datetime | None
    duration_seconds: float | None
    phases: list[PhaseOut] = Field(
        default_factory=list,
        description="Seconds spent in each phase, in order: queue, init, plan, apply or"
        " destroy, output",
    )


class LogOut(BaseModel):
    run_id: int
    text: str
    cursor: int = Field(description="Pass as `after` to get only what came since")
    finished: bool = Field(description="The run is over: nothing more will be appended")
    status: str


class AppLogOut(BaseModel):
    environment_id: str
    path: str
    text: str = Field(description="The last lines of the app's log, secrets redacted")
    truncated: bool = Field(description="Older lines were left out")


class UsageSeries(BaseModel):
    repository: str
    hours: list[float]
    total: float
    money: list[float] = Field(default_factory=list, description="Money per day, in `currency`")
    money_total: float = 0.0


class UsageOut(BaseModel):
    days: list[date]
    series: list[UsageSeries]
    counts: dict[str, int] = Field(
        description="PRs' environments now, by status (destroyed and warm omitted)"
    )
    live: int = Field(description="Environments of PRs now (warm-pool instances apart)")
    pool_instances: int = Field(default=0, description="Unclaimed warm-pool instances now")
    silos: int
    currency: str = "USD"
    pool: list[UsageSeries] = Field(
        default_factory=list,
        description="Warm-pool instances per repository, until claimed (not in `series`):"
        " what keeping the pool costs",
    )


class OutboxOut(BaseModel):
    id: int
    method: str
    path: str
    body: dict[str, Any]
    created_at: datetime


class ActionOut(BaseModel):
    message: str
    environment: EnvironmentOut | None = None
    silo: SiloOut | None = None
    expires_at: datetime | None = None
    capped: bool | None = None


def pr_url(github_url: str, repository: str, number: int) -> str | None:
    """None for number 0: an unclaimed pool instance belongs to no pull request."""
    return f"{github_url}/{repository}/pull/{number}" if number > 0 else None


def _duration(run: Run) -> float | None:
    if run.finished_at is None:
        return None
    return round(max((run.finished_at - run.started_at).total_seconds(), 0.0), 3)


def run_out(run: Run) -> RunOut:
    assert run.id is not None
    return RunOut(
        id=run.id,
        target_kind=run.target_kind,
        target_id=run.target_id,
        operation=run.operation,
        trigger=run.trigger,
        status=run.status,
        phase=run.phase,
        exit_code=run.exit_code,
        head_sha=run.head_sha,
        error=run.error,
        started_at=run.started_at,
        finished_at=run.finished_at,
        duration_seconds=_duration(run),
        phases=[PhaseOut(name=name, seconds=seconds) for name, seconds in ordered(run.timings)],
    )


def sleep_fields(env: Environment, live: bool) -> dict[str, Any]:
    """Since when and why it sleeps and how to wake it, as the status comment says it."""
    if not live:
        return {}
    asleep = env.slept_at is not None
    return {
        "last_activity_at": env.last_activity_at,
        "slept_at": env.slept_at,
        "sleep_reason": env.sleep_reason,
        "sleep_why": sleep_why(env.sleep_reason, record_sleep_after(env.ttl)) if asleep else None,
        "sleeps_at": env.sleep_due_at if env.desired == Desired.PRESENT else None,
        "wake_ways": wake_ways(
            env.status == Status.SLEEPING and wakes_on_request(env.outputs), True
        )
        if asleep
        else [],
    }
