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
    pr_number: int
    pr_url: str
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


class UsageOut(BaseModel):
    days: list[date]
    series: list[UsageSeries]
    counts: dict[str, int] = Field(description="Environments now, by status (destroyed omitted)")
    live: int
    silos: int


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


def pr_url(github_url: str, repository: str, number: int) -> str:
    return f"{github_url}/{repository}/pull/{number}"


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
