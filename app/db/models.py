"""SQLModel tables.

Every target row carries *desired* state (what people asked for, bumped as `generation`) and
*observed* state (what the last finished run achieved, `observed_generation`). Workers converge
the two; events never run the engine. Lease columns make claims survive a killed worker.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import Mapper
from sqlmodel import Field, SQLModel

from app import clock
from app.cost.rates import hourly_of
from app.ttl.policy import policy_from_record, sleep_due_at, warning_due_at

#: A live row that belongs to a PR: an unclaimed warm-pool instance (no PR yet) is not one.
LIVE_PR_CONDITION = (
    "desired != 'absent' AND status != 'destroyed' AND (pool_state IS NULL OR pool_state != 'warm')"
)


def utcnow() -> datetime:
    """The time on runbot's one clock (`app.clock`), which tests and benchmarks may set."""
    return clock.now()


def table_of(model: type[SQLModel]) -> Table:
    """The Core table of a table model, for Core statements: SQLModel sets `__table__` on each
    table class but does not declare it, so type checkers cannot see it."""
    table = inspect(model).local_table
    if not isinstance(table, Table):
        raise TypeError(f"{model.__name__} is not mapped to a table")
    return table


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC: SQLite drops tzinfo, so normalise on both engines."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Silo(SQLModel, table=True):
    name: str = Field(primary_key=True, max_length=63)
    stack: str = Field(max_length=200)
    stack_source: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    #: Where the stack comes from ("catalog:local", "repo:owner/name:path", "git:URL#ref:path"):
    #: a silo is found by this, not by a folder name (`app.intent.sources.source_key`).
    source_key: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    #: The repository whose configuration created the silo (None: the operator's).
    owner: str | None = Field(default=None, max_length=200, index=True)
    vars: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    desired: str = Field(default="present", max_length=20)
    force_destroy: bool = False
    generation: int = 1
    observed_generation: int = 0
    status: str = Field(default="pending", max_length=20, index=True)
    reason: str | None = Field(default=None, sa_column=Column(Text))
    capacity: int | None = None
    attempts: int = 0
    outputs: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    #: Bumped to rotate `runbot_silo_token`: the token is derived from a key and this number,
    #: so the database holds no token.
    token_version: int = Field(
        default=1, sa_column=Column(Integer, nullable=False, server_default="1")
    )
    #: When the generation now wanted was asked for: a run's queue wait is measured from it.
    requested_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    lease_owner: str | None = Field(default=None, max_length=120)
    lease_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    next_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Environment(SQLModel, table=True):
    __table_args__ = (
        UniqueConstraint("silo_name", "slot", name="uq_environment_silo_slot"),
        Index("ix_environment_repo_pr", "repository", "pr_number"),
        Index("ix_environment_pending", "generation", "observed_generation"),
        # The sleep tick asks for awake ones whose sleep time has come, never scanning the rest.
        Index("ix_environment_sleep_due", "desired", "sleep_due_at"),
        # The database itself guarantees one live environment per PR, whichever replica or
        # coroutine (webhook, resync, command) tries to create a second one at the same time.
        Index(
            "uq_environment_live_pr",
            "repository",
            "pr_number",
            unique=True,
            sqlite_where=text(LIVE_PR_CONDITION),
            postgresql_where=text(LIVE_PR_CONDITION),
        ),
    )

    id: str = Field(primary_key=True, max_length=63)
    silo_name: str = Field(foreign_key="silo.name", max_length=63, index=True)
    stack: str = Field(max_length=200)
    stack_source: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    #: The default-branch commit whose `.runbot.yml` asked for this environment.
    config_sha: str | None = Field(default=None, max_length=64)
    repository: str = Field(max_length=200)
    pr_number: int
    installation_id: int | None = Field(default=None, sa_type=BigInteger)
    author: str = Field(default="", max_length=100)
    head_sha: str = Field(default="", max_length=64)
    head_ref: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    deployed_sha: str | None = Field(default=None, max_length=64)
    vars: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    desired: str = Field(default="present", max_length=20)
    generation: int = 1
    observed_generation: int = 0
    status: str = Field(default="pending", max_length=20, index=True)
    reason: str | None = Field(default=None, sa_column=Column(Text))
    trigger: str = Field(default="cli", max_length=40)
    slot: int | None = None
    url: str | None = Field(default=None, sa_column=Column(Text))
    outputs: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    ttl: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    last_activity_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    #: Since when it has been asked to sleep, and why (`idle`, `command`, `budget`); None
    #: while it is wanted awake.
    slept_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    sleep_reason: str | None = Field(default=None, max_length=20)
    # last_activity_at + ttl.sleep_after (None: never sleeps), kept by the flush hook below and
    # by the Core updates that move last_activity_at: lets the sleep tick use an index.
    sleep_due_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    expires_at: datetime | None = Field(default=None, index=True, sa_type=UTCDateTime)
    # expires_at - ttl.warn_before, kept by the flush hook below: lets the warning tick ask the
    # index for the few environments inside their window instead of scanning every live one.
    warn_at: datetime | None = Field(default=None, index=True, sa_type=UTCDateTime)
    warned_for: datetime | None = Field(default=None, sa_type=UTCDateTime)
    lease_owner: str | None = Field(default=None, max_length=120)
    lease_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    next_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    attempts: int = 0
    last_run_id: int | None = None
    #: When the generation now wanted was asked for: a run's queue wait is measured from it.
    requested_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    sync_version: int = 1  # bumped on every visible change; the PR's notifier follows it
    #: The warm pool (`app.pool`): None for an environment created for its PR; `warm` while
    #: unclaimed (pr_number 0), `claiming` once a PR took it until the PR's values are
    #: applied, then `claimed`; `fallback` for a fresh create after a claim failed to update.
    pool_state: str | None = Field(default=None, max_length=20, index=True)
    #: What a warm instance was made for (`app.pool.plan.pool_key`): one that no longer
    #: matches its pool's is remade.
    pool_key: str | None = Field(default=None, max_length=64)
    claimed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, index=True, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    destroyed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class WarmPool(SQLModel, table=True):
    """A repository's wish for warm instances in one silo, as its PRs' events last showed it.

    Written by intent when a PR of the repository is reconciled with a usable config; the
    pool keeper (`app.pool.keeper`) keeps that many unclaimed instances applied with these
    neutral values: no PR, the default branch's head, the configuration's vars."""

    silo_name: str = Field(primary_key=True, max_length=63)
    repository: str = Field(primary_key=True, max_length=200)
    installation_id: int | None = Field(default=None, sa_type=BigInteger)
    #: The default branch and its head commit, whose `.runbot.yml` was read.
    default_branch: str = Field(default="", max_length=255)
    config_sha: str = Field(default="", max_length=64)
    vars: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    #: The unclaimed instances wanted now, as last resolved (0: none; the stack asks for none).
    size: int = 0
    key: str = Field(default="", max_length=64)
    #: Unclaimed instances whose apply failed in a row, and until when none is made again.
    failures: int = 0
    paused_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


def warning_time(expires_at: datetime | None, ttl: dict[str, Any] | None) -> datetime | None:
    """When the expiry warning of ``expires_at`` falls due under the row's TTL record."""
    if expires_at is None:
        return None
    return warning_due_at(policy_from_record(ttl), expires_at)


@event.listens_for(Silo, "before_insert")
@event.listens_for(Silo, "before_update")
@event.listens_for(Environment, "before_insert")
@event.listens_for(Environment, "before_update")
def _stamp_request(
    _mapper: Mapper[Any], _connection: Connection, target: Silo | Environment
) -> None:
    """A new generation is a new request: its run's queue wait starts now. A hook rather than
    a line at each of the places that bump the generation, so none can forget it."""
    history = inspect(target).attrs.generation.history
    if target.requested_at is None or history.has_changes():
        target.requested_at = utcnow()


@event.listens_for(Environment, "before_insert")
@event.listens_for(Environment, "before_update")
def _keep_warn_at(_mapper: Mapper[Environment], _connection: Connection, env: Environment) -> None:
    """Every ORM write of an environment keeps ``warn_at`` in step with its expiry, and
    ``sleep_due_at`` with its last activity."""
    env.warn_at = warning_time(env.expires_at, env.ttl)
    env.sleep_due_at = sleep_due_at(env.ttl, env.last_activity_at)


class PullRequest(SQLModel, table=True):
    """What runbot knows of a PR, and the GitHub side effects it owes it.

    The status comment and deployment are reconciled like the engine: every visible change bumps
    `sync_version`, and the notifier converges `synced_version` to it, retrying until it lands.
    """

    __table_args__ = (
        Index("ix_pullrequest_pending_sync", "sync_version", "synced_version"),
        Index("ix_pullrequest_head", "repository", "head_sha"),
        Index("ix_pullrequest_hold_kind", "hold_kind"),
    )

    id: str = Field(primary_key=True, max_length=220)  # "owner/name#123"
    repository: str = Field(max_length=200)
    number: int
    installation_id: int | None = None
    head_sha: str = Field(default="", max_length=64)
    head_ref: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    base_ref: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    base_sha: str = Field(default="", max_length=64)
    #: The repository's default branch, and the commit of it whose `.runbot.yml` was last read.
    default_branch: str = Field(
        default="", sa_column=Column(String(255), nullable=False, server_default="")
    )
    config_sha: str | None = Field(default=None, max_length=64)
    author: str = Field(default="", max_length=100)
    state: str = Field(default="open", max_length=20)
    draft: bool = False
    fork: bool = False
    #: The repository is public (its comments are world-readable); None until an event said.
    public: bool | None = None
    labels: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    approved_sha: str | None = Field(default=None, max_length=64)  # fork approval (/runbot deploy)
    enabled: bool = False  # the default branch has a valid .runbot.yml
    #: Why the head is not deployed (`app.intent.decide.HoldKind`); code branches on this.
    hold_kind: str | None = Field(default=None, max_length=40)
    hold_reason: str | None = Field(default=None, sa_column=Column(Text))  # the same, for people
    config_error: str | None = Field(default=None, sa_column=Column(Text))
    pr_updated_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    comment_id: int | None = Field(default=None, sa_type=BigInteger)
    comment_digest: str | None = Field(default=None, max_length=64)
    #: The head commit the status comment last showed: what `/runbot deploy` approves.
    shown_sha: str | None = Field(default=None, max_length=64)
    config_comment_digest: str | None = Field(default=None, max_length=64)
    deployment_id: int | None = Field(default=None, sa_type=BigInteger)
    deployment_key: str | None = Field(default=None, max_length=140)  # env id + sha it belongs to
    deployment_state: str | None = Field(default=None, max_length=20)
    #: The `runbot` check run on a head commit: its id, commit, what it last showed
    #: (`app.github.writes.CheckRunWant.digest`) and whether it was completed.
    check_run_id: int | None = Field(default=None, sa_type=BigInteger)
    check_run_sha: str | None = Field(default=None, max_length=64)
    check_run_digest: str | None = Field(default=None, max_length=64)
    check_run_done: bool | None = None
    #: Written just before a deployment or check run is created, cleared once its id is
    #: recorded: a create cut off in between (a crash) is found and adopted, never left
    #: pending on GitHub (the deployment's key; the check run's commit).
    deployment_creating: str | None = Field(default=None, max_length=140)
    check_run_creating: str | None = Field(default=None, max_length=64)
    #: `.runbot.yml` `comments: quiet` and `deployments: keep`, as last read.
    quiet: bool | None = None
    keep_deployments: bool | None = None
    #: The environment whose inactive deployments were deleted after the PR closed.
    tidied_env: str | None = Field(default=None, max_length=63)
    warned_digest: str | None = Field(default=None, max_length=64)
    sync_version: int = 1
    synced_version: int = 0
    sync_attempts: int = 0
    next_sync_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    sync_lease_owner: str | None = Field(default=None, max_length=120)
    sync_lease_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class CommentCommand(SQLModel, table=True):
    """A ``/runbot`` comment being handled: the ledger that makes each command run once.

    A delivery can be retried (GitHub outage, worker killed); the row keyed by the comment id
    keeps a retry from extending twice or replying twice. ``status`` moves received →
    executed (outcome and reply decided, state changed) → done (reply posted, reaction set).
    """

    __table_args__ = (Index("ix_commentcommand_author", "author", "created_at"),)

    comment_id: int = Field(primary_key=True, sa_type=BigInteger)
    repository: str = Field(max_length=200)
    pr_number: int
    author: str = Field(default="", max_length=100)
    command: str = Field(default="", max_length=40)  # canonical name, or "invalid"
    status: str = Field(default="received", max_length=20)
    outcome: str | None = Field(default=None, max_length=20)  # ok | refused | failed
    reply: str | None = Field(default=None, sa_column=Column(Text))
    reply_id: int | None = Field(default=None, sa_type=BigInteger)
    #: The commenter is below triage and not the PR's author: runbot's answer is capped
    #: (`app.commands.limits`) and sent by the notifier when no status comment is owed.
    limited: bool = False
    writes: int = 0  # GitHub writes runbot made in answer (what the per-user budget counts)
    replied_at: datetime | None = Field(default=None, sa_type=UTCDateTime)  # posted a new reply
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Installation(SQLModel, table=True):
    """An App installation: which repositories it lets runbot act for
    (`app.github.installations` folds its webhooks into this row)."""

    id: int = Field(primary_key=True, sa_type=BigInteger)
    account: str = Field(default="", max_length=100)
    repositories: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    #: `app.github.installations.InstallState`: active, suspended or deleted.
    state: str = Field(default="active", max_length=20)
    #: Repositories removed from the installation (and not added back): runbot is cut off there.
    removed_repositories: list[str] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class CostSpan(SQLModel, table=True):
    """A stretch of time one environment spent in one status at one hourly rate.

    Money is the sum of rate x duration over these; an open span (``ended_at`` None) runs up
    to now. Kept apart from the environment so a day's or a month's spend per repository or
    silo is one indexed range query, and so a destroyed environment's cost stays on record.
    """

    __table_args__ = (
        Index("ix_costspan_environment_open", "environment_id", "ended_at"),
        Index("ix_costspan_repository_time", "repository", "started_at"),
        Index("ix_costspan_silo_time", "silo_name", "started_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    environment_id: str = Field(max_length=63)
    repository: str = Field(max_length=200)
    silo_name: str = Field(max_length=63)
    status: str = Field(max_length=20)
    #: Money per hour during the span, in `RUNBOT_CURRENCY`.
    hourly: float = 0.0
    started_at: datetime = Field(sa_type=UTCDateTime)
    ended_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


@event.listens_for(Environment, "after_insert")
@event.listens_for(Environment, "after_update")
def _keep_cost_ledger(
    _mapper: Mapper[Environment], connection: Connection, env: Environment
) -> None:
    """Every ORM write that changes an environment's status or outputs keeps its ledger: the
    open span closes and one at the new status's rate opens (none once destroyed). In the
    flush's own transaction, so a status change and its span land together on any replica."""
    attrs = inspect(env).attrs
    if not (attrs.status.history.has_changes() or attrs.outputs.history.has_changes()):
        return
    write_span(connection, env, utcnow())


def write_span(connection: Connection, env: Environment, now: datetime) -> None:
    """Close the open span of ``env`` and open one for its current status and outputs,
    unless the open one already says the same."""
    table = table_of(CostSpan)
    hourly = hourly_of(env.status, env.outputs)
    open_spans = connection.execute(
        select(table.c.id, table.c.status, table.c.hourly).where(
            table.c.environment_id == env.id, table.c.ended_at.is_(None)
        )
    ).all()
    gone = env.status == "destroyed"
    if not gone and [(row.status, row.hourly) for row in open_spans] == [(env.status, hourly)]:
        return
    if open_spans:
        connection.execute(
            update(table).where(table.c.id.in_([row.id for row in open_spans])).values(ended_at=now)
        )
    if not gone:
        connection.execute(
            insert(table).values(
                environment_id=env.id,
                repository=env.repository,
                silo_name=env.silo_name,
                status=env.status,
                hourly=hourly,
                started_at=now,
            )
        )


class Run(SQLModel, table=True):
    __table_args__ = (Index("ix_run_target", "target_kind", "target_id"),)

    id: int | None = Field(default=None, primary_key=True)
    target_kind: str = Field(max_length=20)
    target_id: str = Field(max_length=63)
    operation: str = Field(max_length=20)
    trigger: str = Field(default="", max_length=40)
    status: str = Field(default="running", max_length=20, index=True)
    phase: str = Field(default="queued", max_length=20)
    exit_code: int | None = None
    generation: int = 0
    head_sha: str | None = Field(default=None, max_length=64)
    stack_commit: str | None = Field(default=None, max_length=64)
    #: The default-branch commit whose `.runbot.yml` this run applies (environments only).
    config_sha: str | None = Field(default=None, max_length=64)
    worker: str = Field(default="", max_length=120)
    error: str | None = Field(default=None, sa_column=Column(Text))
    #: Seconds spent in each phase, in order: ``queue`` (asked for until started), then the
    #: engine's (``init``, ``plan``, ``apply`` or ``destroy``, ``output``). None: older runs.
    timings: dict[str, float] | None = Field(
        default=None, sa_column=Column(JSON(none_as_null=True), nullable=True)
    )
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class TargetRecord(SQLModel, table=True):
    """What runbot applied to one engine target, kept until its state is destroyed.

    Written before each apply, so neither a `kill -9` mid-apply nor a target row deleted by
    hand loses the template and inputs that the orphan sweep (`app.lifecycle.sweep`) needs
    to destroy what the state still holds.
    """

    name: str = Field(primary_key=True, max_length=80)  # the engine target: "env-pr-42-k3x9q"
    kind: str = Field(max_length=20)  # "silo" | "environment"
    target_id: str = Field(max_length=63)
    stack: str = Field(max_length=200)
    #: The stack's source as applied, its commit pinned (`Silo.stack_source`).
    stack_source: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    variables: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    #: Names of variables whose values are secret: scrubbed from the destroy's log.
    sensitive: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    declared_backend: str | None = Field(default=None, max_length=40)
    recorded_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class RunLogChunk(SQLModel, table=True):
    """Log lines are appended in chunks so a run's log can be tailed while it is still going."""

    __table_args__ = (Index("ix_runlogchunk_run_seq", "run_id", "seq", unique=True),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id")
    seq: int
    text: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class RunTicket(SQLModel, table=True):
    """What a run executed elsewhere (a Kubernetes pod) may fetch and push, by a run token.

    Only the token's sha256 is kept; the spec is signed with a key derived from the token, so
    a pod can tell it was written by whoever minted its token. The spec and the template are
    emptied once the result lands: provider credentials and the engine role's password do not
    outlive the run.
    """

    run_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    target: str = Field(max_length=200)
    token_hash: str = Field(max_length=64)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    spec: str = Field(default="", sa_column=Column(Text, nullable=False))
    template: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    #: The phases the pod went through, in order, space-separated: the executor polls, and a
    #: phase shorter than its poll interval must still be seen.
    phases: str = Field(default="", max_length=200)
    #: {"status": succeeded|failed|cancelled, "outputs", "error", "phase", "exit_code"}
    result: dict[str, Any] | None = Field(
        default=None, sa_column=Column(JSON(none_as_null=True), nullable=True)
    )
    last_seq: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class RunTicketLine(SQLModel, table=True):
    """A log line a pod pushed; (run_id, seq) is its key, so a resent batch changes nothing."""

    run_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    text: str = Field(sa_column=Column(Text, nullable=False))


class Delivery(SQLModel, table=True):
    # Every query on deliveries filters on status and then on the two times: the claim of the
    # oldest pending ones, the lease sweep, the backlog metric, retention. On SQLite a row's
    # times sit after its payload (overflow pages); unindexed, listing 50 claimable ids out of
    # a 7,000-delivery backlog read all their payloads and sorted them: 57 ms, every 50
    # deliveries. Covered by this index it takes 0.1 ms.
    __table_args__ = (Index("ix_delivery_claim", "status", "received_at", "processed_at", "id"),)

    id: str = Field(primary_key=True, max_length=100)
    event: str = Field(max_length=60)
    action: str | None = Field(default=None, max_length=60)
    payload: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(default="pending", max_length=20)
    error: str | None = Field(default=None, sa_column=Column(Text))
    attempts: int = 0
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    processed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class OutboxMessage(SQLModel, table=True):
    """In local mode, the GitHub writes the App would have made."""

    id: int | None = Field(default=None, primary_key=True)
    method: str = Field(max_length=10)
    path: str = Field(sa_column=Column(Text, nullable=False))
    body: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class RevokedSession(SQLModel, table=True):
    """A dashboard session signed out before its cookie expired: its cookie is refused.

    Kept until `expires_at`, when the cookie's own signature would refuse it anyway.
    """

    sid: str = Field(primary_key=True, max_length=64)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)
