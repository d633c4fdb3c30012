"""GET /metrics: Prometheus text format.

Three kinds of numbers, each from where it is true:

- Events this process saw (webhook deliveries, engine runs it executed, GitHub calls it made)
  are counters in this process. Summed over replicas they stay correct.
- State (environments by status, queue depth and age) is read from the database at scrape
  time, so every replica reports the same value: use `max` across replicas, not `sum`.
- Engine runs are recorded by the reconcile workers in the `run` table; rather than reaching
  into the workers, each scrape picks up the runs this process's worker finished since the
  last scrape and counts them once.

Each app gets its own registry, so several apps in one process (tests) never collide.
"""

from __future__ import annotations

import threading
from collections import Counter as Counter_
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func
from sqlalchemy import select as sql_select
from sqlmodel import Session, col, select

from app.cost.money import money_by_repository
from app.db.ledger import spans
from app.db.models import Delivery, Environment, PullRequest, Run, Silo, WarmPool, utcnow
from app.db.session import Database
from app.github.intake import HANDLED_EVENTS
from app.github.transport import GATEWAY_STATS
from app.lifecycle.orphans import OrphanKind
from app.lifecycle.pool import CLAIM_STATS, CLAIMING, WARM, pool_standing
from app.lifecycle.states import Status
from app.lifecycle.sweep import SweepReport
from app.lifecycle.timings import ORDER

KNOWN_EVENTS = HANDLED_EVENTS | {"push", "check_run", "deployment", "deployment_status"}
RUN_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, float("inf"))
PHASE_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))
PHASES = frozenset(ORDER)


class RunObserver:
    """Counts the runs one worker finished, each exactly once, without touching the worker."""

    def __init__(
        self,
        db: Database,
        runs: Counter,
        durations: Histogram,
        destroy_failures: Counter,
        phases: Histogram,
    ) -> None:
        self.db = db
        self.runs = runs
        self.durations = durations
        self.destroy_failures = destroy_failures
        self.phases = phases
        self._after = 0  # every run id <= this was seen, finished or in `_open`
        self._open: set[int] = set()
        self._lock = threading.Lock()

    def poll(self, worker_id: str | None) -> None:
        if worker_id is None:
            return
        with self._lock, self.db.session() as session:
            query = select(Run).where(Run.worker == worker_id)
            if self._open:
                query = query.where((col(Run.id) > self._after) | col(Run.id).in_(self._open))
            else:
                query = query.where(col(Run.id) > self._after)
            rows = list(session.exec(query.order_by(col(Run.id))))
            stacks = _stacks_of(session, rows)
        for run in rows:
            assert run.id is not None
            self._after = max(self._after, run.id)
            if run.finished_at is None:
                self._open.add(run.id)
                continue
            self._open.discard(run.id)
            stack = stacks.get((run.target_kind, run.target_id), "")
            self.runs.labels(run.operation, stack, run.status).inc()
            if run.operation == "destroy" and run.status == "failed":
                self.destroy_failures.labels(run.target_kind, stack).inc()
            seconds = max((run.finished_at - run.started_at).total_seconds(), 0.0)
            self.durations.labels(run.operation, stack).observe(seconds)
            for phase, spent in (run.timings or {}).items():
                if phase in PHASES:  # the names come from runners and pods: bound the labels
                    self.phases.labels(phase, run.operation, run.target_kind).observe(spent)


def _stacks_of(session: Session, runs: list[Run]) -> dict[tuple[str, str], str]:
    envs = {r.target_id for r in runs if r.target_kind == "environment"}
    silos = {r.target_id for r in runs if r.target_kind == "silo"}
    found: dict[tuple[str, str], str] = {}
    if envs:
        rows = session.exec(
            select(Environment.id, Environment.stack).where(col(Environment.id).in_(envs))
        )
        found.update({("environment", key): stack for key, stack in rows})
    if silos:
        rows = session.exec(select(Silo.name, Silo.stack).where(col(Silo.name).in_(silos)))
        found.update({("silo", key): stack for key, stack in rows})
    return found


def _age(oldest: datetime | None, now: datetime) -> float:
    return max((now - oldest).total_seconds(), 0.0) if oldest else 0.0


class StateCollector(Collector):
    """Gauges read from the database at scrape time."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[Metric]:
        now = utcnow()
        envs = GaugeMetricFamily(
            "runbot_environments", "Environments by status (not destroyed)", labels=["status"]
        )
        silos = GaugeMetricFamily("runbot_silos", "Silos by status", labels=["status"])
        depth = GaugeMetricFamily(
            "runbot_queue_depth",
            "Work waiting: reconcile (targets whose desired state is not reached and no worker"
            " holds), deliveries (webhooks not yet processed), notify (PRs whose comment or"
            " deployment is behind)",
            labels=["queue"],
        )
        age = GaugeMetricFamily(
            "runbot_queue_oldest_age_seconds",
            "Age of the oldest waiting item per queue",
            labels=["queue"],
        )
        stuck = GaugeMetricFamily(
            "runbot_destroy_stuck",
            "Environments and silos whose destroy failed and is being retried (destroy_failed)",
            labels=["kind"],
        )
        with self.db.session() as session:
            for kind, model in (("environment", Environment), ("silo", Silo)):
                n = session.exec(
                    select(func.count())
                    .select_from(model)
                    .where(model.status == Status.DESTROY_FAILED)
                ).one()
                stuck.add_metric([kind], n)
            counts = dict(
                session.exec(
                    select(Environment.status, func.count())
                    .where(Environment.status != Status.DESTROYED)
                    .group_by(Environment.status)
                ).all()
            )
            for status in Status:
                if status is not Status.DESTROYED:
                    envs.add_metric([status.value], counts.get(status.value, 0))
            for silo_status, count in session.exec(
                select(Silo.status, func.count()).group_by(Silo.status)
            ).all():
                silos.add_metric([silo_status], count)
            waiting = 0
            oldest: datetime | None = None
            for model in (Silo, Environment):
                n, first = session.exec(
                    select(func.count(), func.min(model.updated_at))
                    .where(model.generation != model.observed_generation)
                    .where(col(model.lease_owner).is_(None))
                ).one()
                waiting += n
                if (since := _aware(first)) is not None:
                    oldest = since if oldest is None else min(oldest, since)
            depth.add_metric(["reconcile"], waiting)
            age.add_metric(["reconcile"], _age(oldest, now))
            n, first = session.exec(
                select(func.count(), func.min(Delivery.received_at)).where(
                    Delivery.status == "pending"
                )
            ).one()
            depth.add_metric(["deliveries"], n)
            age.add_metric(["deliveries"], _age(_aware(first), now))
            n, first = session.exec(
                select(func.count(), func.min(PullRequest.updated_at)).where(
                    PullRequest.sync_version != PullRequest.synced_version
                )
            ).one()
            depth.add_metric(["notify"], n)
            age.add_metric(["notify"], _age(_aware(first), now))
        yield from (envs, silos, depth, age, stuck)


class CostCollector(Collector):
    """Money, from the cost ledger at scrape time (the same on every replica: use `max`).

    Per repository only when ``by_repository`` (a /metrics behind RUNBOT_METRICS_TOKEN): an
    open endpoint must not name private repositories, so it reports one series for all of
    them, labelled ``repository=""``.
    """

    def __init__(self, db: Database, by_repository: bool = False) -> None:
        self.db = db
        self.by_repository = by_repository

    def collect(self) -> Iterator[Metric]:
        now = utcnow()
        spent = GaugeMetricFamily(
            "runbot_cost_total",
            "Money spent by each repository's environments since runbot began counting, in"
            " RUNBOT_CURRENCY (only grows: rate() works on it)",
            labels=["repository"],
        )
        hourly = GaugeMetricFamily(
            "runbot_environment_hourly_cost",
            "Money per hour each repository's environments cost now, in RUNBOT_CURRENCY",
            labels=["repository"],
        )
        with self.db.session() as session:
            found = spans(session)
        if not self.by_repository:
            found = [replace(span, repository="") for span in found]
        rates: dict[str, float] = {}
        for span in found:
            if span.ended_at is None:
                rates[span.repository] = rates.get(span.repository, 0.0) + span.hourly
        for repository, amount in sorted(money_by_repository(found, now).items()):
            spent.add_metric([repository], amount)
        for repository, rate in sorted(rates.items()):
            hourly.add_metric([repository], rate)
        yield from (spent, hourly)


def _aware(value: datetime | str | None) -> datetime | None:
    """Aggregates (min) bypass the column type, so SQLite hands back naive UTC or a string."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=utcnow().tzinfo)


class OrphanCollector(Collector):
    """The orphans the latest sweep on this host found, by kind (absent before the first)."""

    def __init__(self, latest: Callable[[], SweepReport | None]) -> None:
        self.latest = latest

    def collect(self) -> Iterator[Metric]:
        report = self.latest()
        if report is None:
            return
        gauge = GaugeMetricFamily(
            "runbot_orphans",
            "Orphans the latest sweep found on this host: state no live target owns, targets"
            " whose state vanished, local-stack servers of no live environment",
            labels=["kind"],
        )
        counts = Counter_(o.kind for o in report.orphans)
        for kind in OrphanKind:
            gauge.add_metric([kind.value], counts.get(kind, 0))
        swept = GaugeMetricFamily(
            "runbot_orphan_sweep_timestamp_seconds", "When the latest orphan sweep ran"
        )
        swept.add_metric([], report.at.timestamp())
        yield from (gauge, swept)


#: `runbot_pool_instances` states, and `runbot_pool_claims` outcomes.
POOL_STATES = ("ready", "starting", "failed", "retiring", "claiming")
CLAIM_OUTCOMES = ("claimed", "empty", "fallback")


class PoolCollector(Collector):
    """The warm pools per silo, from the database at scrape time (use `max` across
    replicas), and the claims this process made (a counter: `sum` them). By silo only: an
    open /metrics names no repository."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[Metric]:
        instances = GaugeMetricFamily(
            "runbot_pool_instances",
            "Warm-pool instances by silo and state: ready (to be claimed), starting (being"
            " made), failed (made again), retiring (being destroyed), claiming (taken by a PR,"
            " still taking its values)",
            labels=["silo", "state"],
        )
        wanted = GaugeMetricFamily(
            "runbot_pool_size",
            "Warm-pool instances wanted per silo (all its repositories' pools)",
            labels=["silo"],
        )
        with self.db.session() as session:
            rows = session.execute(
                # SQLAlchemy's own select: sqlmodel's is typed for at most four columns.
                sql_select(
                    col(Environment.silo_name),
                    col(Environment.pool_state),
                    col(Environment.status),
                    col(Environment.desired),
                    col(Environment.generation) == col(Environment.observed_generation),
                ).where(
                    col(Environment.pool_state).in_([WARM, CLAIMING]),
                    col(Environment.status) != Status.DESTROYED,
                )
            ).all()
            sizes = session.exec(
                select(WarmPool.silo_name, func.sum(WarmPool.size)).group_by(WarmPool.silo_name)
            ).all()
        counts: Counter_[tuple[str, str]] = Counter_()
        for silo, pool_state, status, desired, settled in rows:
            counts[(silo, pool_standing(pool_state, status, desired, bool(settled)))] += 1
        silos = sorted({silo for silo, _ in sizes} | {silo for silo, _ in counts})
        for silo in silos:
            for state in POOL_STATES:
                instances.add_metric([silo, state], counts.get((silo, state), 0))
        for silo, size in sorted(sizes):
            wanted.add_metric([silo], int(size or 0))
        claims = CounterMetricFamily(
            "runbot_pool_claims",
            "PRs that looked for a warm instance, by outcome: claimed (took one), empty (the"
            " pool had none ready: a cold create), fallback (a claimed one failed to take the"
            " PR's values: a fresh create)",
            labels=["outcome"],
        )
        stats = dict(CLAIM_STATS)
        for outcome in CLAIM_OUTCOMES:
            claims.add_metric([outcome], stats.get(outcome, 0))
        yield from (instances, wanted, claims)


class GitHubCollector(Collector):
    """The gateway's process-wide call counters, as Prometheus counters."""

    def collect(self) -> Iterator[Metric]:
        stats = dict(GATEWAY_STATS)
        calls = CounterMetricFamily("runbot_github_api_calls", "HTTP requests sent to GitHub")
        calls.add_metric([], stats.get("calls", 0))
        errors = CounterMetricFamily(
            "runbot_github_api_errors", "GitHub requests that failed (any reason)"
        )
        errors.add_metric([], stats.get("errors", 0))
        waits = CounterMetricFamily(
            "runbot_github_rate_limit_waits",
            "Rate limits waited out inline, by kind (primary, secondary)",
            labels=["kind"],
        )
        deferred = CounterMetricFamily(
            "runbot_github_retry_later",
            "GitHub work deferred for later, by cause (primary, secondary, outage)",
            labels=["kind"],
        )
        for kind in ("primary", "secondary"):
            waits.add_metric([kind], stats.get(f"rate_limit_waits:{kind}", 0))
        for kind in ("primary", "secondary", "outage"):
            deferred.add_metric([kind], stats.get(f"retry_later:{kind}", 0))
        yield from (calls, errors, waits, deferred)


class Metrics:
    def __init__(
        self,
        db: Database,
        worker_id: Callable[[], str | None],
        orphans: Callable[[], SweepReport | None] = lambda: None,
        *,
        by_repository: bool = False,
    ) -> None:
        self.registry = CollectorRegistry()
        self.deliveries = Counter(
            "runbot_deliveries",
            "Webhook deliveries received, by event and outcome",
            ["event", "outcome"],
            registry=self.registry,
        )
        runs = Counter(
            "runbot_runs",
            "Engine runs finished by this process, by operation, stack and result",
            ["operation", "stack", "result"],
            registry=self.registry,
        )
        durations = Histogram(
            "runbot_run_duration_seconds",
            "Wall time of engine runs finished by this process",
            ["operation", "stack"],
            buckets=RUN_BUCKETS,
            registry=self.registry,
        )
        destroy_failures = Counter(
            "runbot_destroy_failures",
            "Destroys that failed in runs finished by this process, by target kind and stack"
            " (each is retried until it succeeds)",
            ["kind", "stack"],
            registry=self.registry,
        )
        phases = Histogram(
            "runbot_run_phase_seconds",
            "Time runs finished by this process spent in each phase: queue (asked for until"
            " started), init, plan, apply, destroy, output",
            ["phase", "operation", "kind"],
            buckets=PHASE_BUCKETS,
            registry=self.registry,
        )
        self.observer = RunObserver(db, runs, durations, destroy_failures, phases)
        self.worker_id = worker_id
        self.registry.register(StateCollector(db))
        self.registry.register(CostCollector(db, by_repository))
        self.registry.register(GitHubCollector())
        self.registry.register(PoolCollector(db))
        self.registry.register(OrphanCollector(orphans))

    def count_delivery(self, event: str, outcome: str) -> None:
        # The event header is unauthenticated until the signature is checked: bound the labels.
        self.deliveries.labels(event if event in KNOWN_EVENTS else "other", outcome).inc()

    def refresh(self) -> None:
        self.observer.poll(self.worker_id())
