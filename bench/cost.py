"""Cost: a simulated month with automatic sleep against without, and the tick at 10,000.

- The month: 30 days from a fixed seed. PRs open, get pushes and close in working hours
  (weekdays 09:00-18:00 UTC); reviewers open some environments' URLs (traffic), also in
  working hours. The same events are replayed twice on a `ManualClock` against the real
  database (a SQLite file), the real `Lifecycle` calls (`create_environment`,
  `update_environment`, `record_traffic`, `wake_up`, `destroy_environment`) and the real
  scheduler ticks (`Ticks.sleep_idle`, `Ticks.reap_expired`, every 5 simulated minutes):
  once with `ttl: {idle: 48h, max: 7d}` and once adding `sleep_after: 2h`. No engine runs:
  each desired change is settled the way a worker's apply records it (`EnvironmentKind.applied`
  / `destroyed` on the claimed row), so the cost ledger (`CostSpan`, written by the mapper
  event on every status change) records the time at the stack's rates, here
  `runbot_hourly_cost = 0.12` and `runbot_hourly_cost_asleep = 0.01`. Reported: environment
  hours awake and asleep, money, and the saving, both from the ledger. Traffic to a sleeping
  environment wakes it as the ingress would (`wake_up`); a push wakes one slept for idleness.
- The tick: 10,000 live environments with `sleep_after` (none due, plus 100 asleep), on SQLite
  and PostgreSQL; one `sleep_idle` + `reap_expired` + `warn_expiring` tick timed on the real
  `Ticks` (median of the repeats after a warm-up), as a share of the default 30 s
  `RUNBOT_SCHEDULER_INTERVAL` (target: at most 1%). The sleep tick asks the
  (desired, sleep_due_at) index for candidates only.

Not simulated: apply durations (an apply settles at the next 5-minute tick) and weekends'
stray pushes. `--quick` replays 10 days and seeds 2,000 environments.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import insert
from sqlalchemy.engine import make_url
from sqlmodel import col, select

from app import clock
from app.cost.money import Span
from app.cost.money import money as money_of
from app.cost.rates import ASLEEP_STATUSES, AWAKE_STATUSES
from app.db.ledger import spans as ledger_spans
from app.db.models import Environment, Silo, utcnow, warning_time
from app.github.outbox import OutboxGateway
from app.lifecycle.kinds import EnvironmentKind, Subject
from app.lifecycle.lease import Claim
from app.lifecycle.states import Desired, Status
from app.runtime import Runtime
from app.schedule.ticks import Ticks
from app.ttl.policy import TTLPolicy, sleep_due_at
from bench.harness import Context, runtime_for
from bench.stats import Row, check, fmt_seconds, median, ratio

NAME = "cost"
SEED = 17
START = datetime(2030, 3, 4, 0, 0, tzinfo=UTC)  # a Monday
DAYS = 30
PRS = 68  # the month of the issue: 68 PRs
STEP = timedelta(minutes=5)
AWAKE_RATE, ASLEEP_RATE = 0.12, 0.01
SLEEP_AFTER = timedelta(hours=2)
COUNT = 10_000
INTERVAL = 30.0  # RUNBOT_SCHEDULER_INTERVAL's default
PG_ADMIN = os.environ.get(
    "RUNBOT_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"
)
OUTPUTS = {
    "url": {"value": "http://127.0.0.1:1/", "sensitive": False},
    "runbot_hourly_cost": {"value": AWAKE_RATE, "sensitive": False},
    "runbot_hourly_cost_asleep": {"value": ASLEEP_RATE, "sensitive": False},
}


@dataclass(frozen=True, order=True)
class Event:
    at: datetime
    kind: str  # open | push | traffic | close
    pr: int


def _working_time(rng: random.Random, day: datetime) -> datetime:
    return day + timedelta(hours=9, seconds=rng.randrange(9 * 3600))


def _working_days(start: datetime, days: int) -> list[datetime]:
    return [
        start + timedelta(days=n) for n in range(days) if (start + timedelta(days=n)).weekday() < 5
    ]


def simulate(days: int, prs: int, seed: int = SEED) -> list[Event]:
    """The month's events: each PR opens on a working day, lives 1-8 working days with 1-3
    pushes a day and, for 40% of them, 1-4 review visits a day, then closes."""
    rng = random.Random(seed)
    workdays = _working_days(START, days)
    events: list[Event] = []
    for pr in range(1, prs + 1):
        first = rng.randrange(len(workdays))
        span = rng.randint(1, 8)
        lifetime = workdays[first : first + span]
        opened = _working_time(rng, lifetime[0])
        events.append(Event(opened, "open", pr))
        reviewed = rng.random() < 0.4
        last = opened
        for day in lifetime:
            for _ in range(rng.randint(1, 3)):
                at = _working_time(rng, day)
                if at > opened:
                    events.append(Event(at, "push", pr))
                    last = max(last, at)
            for _ in range(rng.randint(1, 4) if reviewed else 0):
                at = _working_time(rng, day)
                if at > opened:
                    events.append(Event(at, "traffic", pr))
                    last = max(last, at)
        if first + span <= len(workdays):  # closes within the month; the rest stay open
            events.append(Event(last + timedelta(minutes=rng.randint(5, 120)), "close", pr))
    return sorted(events)


# ----------------------------------------------------------------------------- replay


class Replay:
    """One run of the events against a fresh database under one TTL policy."""

    def __init__(self, rt: Runtime, policy: TTLPolicy) -> None:
        self.rt = rt
        self.policy = policy
        self.kind = EnvironmentKind(rt.db, 100)
        self.ticks = Ticks(rt.db, rt.lifecycle, OutboxGateway(rt.db, None))
        self.envs: dict[int, str] = {}  # PR -> its live environment
        self.open: set[int] = set()

    def start(self) -> None:
        self.rt.lifecycle.create_silo("sim", "local", {"capacity": 200})
        with self.rt.db.session() as session:
            silo = session.get(Silo, "sim")
            assert silo is not None
            silo.status, silo.capacity, silo.observed_generation = "ready", 200, silo.generation
            session.add(silo)
            session.commit()

    def live(self, pr: int) -> str | None:
        env_id = self.envs.get(pr)
        if env_id is None:
            return None
        env = self.rt.lifecycle.get_environment(env_id)
        if env.desired == Desired.ABSENT or env.status == Status.DESTROYED:
            return None
        return env_id

    def create(self, pr: int, now: datetime) -> None:
        env = self.rt.lifecycle.create_environment(
            "sim", "acme/shop", pr, f"{pr:07x}", trigger="pull_request", ttl=self.policy, now=now
        )
        self.envs[pr] = env.id

    def handle(self, event: Event) -> None:
        now, pr = event.at, event.pr
        env_id = self.live(pr)
        if event.kind == "open":
            self.open.add(pr)
            self.create(pr, now)
        elif event.kind == "close":
            self.open.discard(pr)
            if env_id is not None:
                self.rt.lifecycle.destroy_environment(env_id, "closed", "pull_request")
        elif event.kind == "push" and pr in self.open:
            if env_id is None:  # expired meanwhile: the push asks for a new one
                self.create(pr, now)
            else:
                self.rt.lifecycle.update_environment(
                    env_id,
                    head_sha=f"{(pr * 7919 + int(now.timestamp())) % 16**7:07x}",
                    trigger="push",
                    now=now,
                )
        elif (
            event.kind == "traffic"
            and env_id is not None
            and not self.rt.lifecycle.wake_up(env_id, "ingress", now)
        ):
            # What the silo's ingress does: wake a sleeping one, else report the request.
            self.rt.lifecycle.record_traffic({env_id: now})

    def settle(self) -> None:
        """Converge every changed row the way a worker's apply or destroy records it."""
        with self.rt.db.session() as session:
            pending = session.exec(
                select(Environment.id)
                .where(col(Environment.generation) != col(Environment.observed_generation))
                .where(col(Environment.status) != Status.DESTROYED)
            ).all()
        for env_id in pending:
            with self.rt.db.session() as session:
                row = session.get(Environment, env_id)
                assert row is not None
                silo = session.get(Silo, row.silo_name)
                assert silo is not None
                claim = Claim("environment", row.id, row.generation)
                subject = Subject(row, silo)
                if row.desired == Desired.ABSENT:
                    self.kind.destroyed(subject, claim).mutate(row)
                else:
                    if row.status in (Status.PENDING, Status.QUEUED):
                        row.status = Status.CREATING
                        session.add(row)
                        session.flush()  # the apply's first write, as the reconciler's
                    self.kind.applied(subject, claim, OUTPUTS).mutate(row)
                session.add(row)
                session.commit()

    async def run(self, events: list[Event], end: datetime, manual: clock.ManualClock) -> None:
        self.start()
        queue = list(events)
        tick = START
        while tick <= end:
            while queue and queue[0].at <= tick:
                event = queue.pop(0)
                manual.set(max(event.at, manual.now()))
                self.handle(event)
            manual.set(tick)
            await self.ticks.sleep_idle()
            await self.ticks.reap_expired()
            self.settle()
            tick += STEP

    def totals(self, end: datetime) -> dict[str, float]:
        with self.rt.db.session() as session:
            found = ledger_spans(session)
        awake = sum(_hours(s, end) for s in found if s.status in AWAKE_STATUSES)
        asleep = sum(_hours(s, end) for s in found if s.status in ASLEEP_STATUSES)
        return {
            "awake_hours": awake,
            "asleep_hours": asleep,
            "money": money_of(found, end),
            "environments": float(len({s.environment_id for s in found})),
        }


def _hours(span: Span, end: datetime) -> float:
    return max(0.0, ((span.ended_at or end) - span.started_at).total_seconds() / 3600)


def replay(ctx: Context, label: str, policy: TTLPolicy, events: list[Event], days: int) -> Any:
    root = ctx.scratch(f"{NAME}-{label}")
    end = START + timedelta(days=days)
    with clock.using(clock.ManualClock(START)) as manual:
        assert isinstance(manual, clock.ManualClock)
        rt = runtime_for(root / "data")
        try:
            started = time.perf_counter()
            simulation = Replay(rt, policy)
            asyncio.run(simulation.run(events, end, manual))
            figures = simulation.totals(end)
            ctx.log(
                f"cost {label}: {len(events)} events over {days} days replayed in"
                f" {time.perf_counter() - started:.0f}s: {figures}"
            )
            return figures
        finally:
            rt.db.dispose()


# ----------------------------------------------------------------------------- the tick at scale


def seed(rt: Runtime, count: int, now: datetime) -> None:
    ttl = {"idle": 172800.0, "max": 604800.0, "warn_before": 3600.0, "sleep_after": 7200.0}
    with rt.db.engine.begin() as conn:
        conn.execute(
            insert(Silo.__table__),  # type: ignore[attr-defined]
            [
                {
                    "name": "scale",
                    "stack": "local",
                    "stack_source": {"kind": "catalog"},
                    "vars": {},
                    "outputs": {},
                    "status": "ready",
                    "desired": "present",
                    "capacity": count + 10,
                    "generation": 1,
                    "observed_generation": 1,
                    "created_at": now,
                    "updated_at": now,
                }
            ],
        )
        rows = []
        for index in range(count):
            asleep = index < 100
            active = now - timedelta(seconds=index % 3600)  # within sleep_after: none due
            if asleep:
                active = now - timedelta(hours=5)
            expires_at = now + timedelta(hours=2) + timedelta(seconds=50 * index)
            rows.append(
                {
                    "id": f"pr-{index + 1}-{uuid.uuid4().hex[:5]}",
                    "silo_name": "scale",
                    "stack": "local",
                    "stack_source": {"kind": "catalog"},
                    "repository": f"org/repo-{index % 50}",
                    "pr_number": index + 1,
                    "installation_id": 1,
                    "author": f"dev{index % 200}",
                    "head_sha": f"{index:040x}",
                    "head_ref": f"feature/{index}",
                    "deployed_sha": f"{index:040x}",
                    "vars": {},
                    "desired": "suspended" if asleep else "present",
                    "generation": 2,
                    "observed_generation": 2,
                    "status": "sleeping" if asleep else "ready",
                    "trigger": "push",
                    "slot": index,
                    "url": f"http://127.0.0.1:{20000 + index % 40000}/",
                    "outputs": OUTPUTS,
                    "ttl": ttl,
                    "last_activity_at": active,
                    "sleep_due_at": sleep_due_at(ttl, active),
                    "slept_at": now - timedelta(hours=3) if asleep else None,
                    "sleep_reason": "idle" if asleep else None,
                    "expires_at": expires_at,
                    "warn_at": warning_time(expires_at, ttl),
                    "sync_version": 1,
                    "created_at": now - timedelta(days=1),
                    "updated_at": now - timedelta(days=1),
                }
            )
        conn.execute(insert(Environment.__table__), rows)  # type: ignore[attr-defined]


def time_tick(rt: Runtime, repeats: int) -> dict[str, float]:
    ticks = Ticks(rt.db, rt.lifecycle, OutboxGateway(rt.db, None))
    jobs = {
        "sleep_idle": ticks.sleep_idle,
        "reap_expired": ticks.reap_expired,
        "warn_expiring": ticks.warn_expiring,
    }
    figures: dict[str, list[float]] = {name: [] for name in jobs}

    async def once() -> None:
        for name, job in jobs.items():
            started = time.perf_counter()
            result = await job()
            figures[name].append(time.perf_counter() - started)
            if result:
                raise RuntimeError(f"{name} acted on a seed where nothing is due: {result}")

    for _ in range(repeats + 1):
        asyncio.run(once())
    return {name: median(values[1:]) for name, values in figures.items()}


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def tick_at_scale(ctx: Context, database: str, count: int, repeats: int) -> Row:
    root = ctx.scratch(f"{NAME}-tick-{database}")
    admin_name = None
    url = None
    if database == "postgres":
        admin_name = f"runbot_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(_libpq(PG_ADMIN), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{admin_name}"')  # type: ignore[arg-type]
        url = make_url(PG_ADMIN).set(database=admin_name).render_as_string(hide_password=False)
    try:
        rt = runtime_for(root / "data", url)
        try:
            seed(rt, count, utcnow())
            figures = time_tick(rt, repeats)
        finally:
            rt.db.dispose()
    finally:
        if admin_name:
            with psycopg.connect(_libpq(PG_ADMIN), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{admin_name}" WITH (FORCE)')  # type: ignore[arg-type]
    tick = sum(figures.values())
    share = 100.0 * tick / INTERVAL
    ctx.log(f"cost tick {database}: {count} environments, {fmt_seconds(tick)} ({share:.3f}%)")
    return Row(
        NAME,
        f"{database}: sleep + reap + warn tick / interval",
        fmt_seconds(tick),
        f"{INTERVAL:.0f} s",
        share,
        "<= 1%",
        check(share, 1.0),
        unit="%",
        details={"environments": count, **figures},
    )


# ----------------------------------------------------------------------------- run


def run(ctx: Context) -> list[Row]:
    days = 10 if ctx.quick else DAYS
    prs = PRS * days // DAYS
    events = simulate(days, prs)
    never = TTLPolicy(idle=timedelta(hours=48), max=timedelta(days=7))
    sleepy = TTLPolicy(idle=timedelta(hours=48), max=timedelta(days=7), sleep_after=SLEEP_AFTER)
    without = replay(ctx, "without-sleep", never, events, days)
    with_sleep = replay(ctx, "with-sleep", sleepy, events, days)
    saving = 100.0 * (1 - with_sleep["money"] / without["money"]) if without["money"] else 0.0
    counts = {
        kind: sum(1 for e in events if e.kind == kind)
        for kind in ("open", "push", "traffic", "close")
    }
    month = {"days": days, "seed": SEED, "events": counts, "step_minutes": STEP.seconds // 60}
    rows = [
        Row(
            NAME,
            "environment-hours awake, sleep_after 2h vs none",
            f"{with_sleep['awake_hours']:.0f} h",
            f"{without['awake_hours']:.0f} h",
            ratio(with_sleep["awake_hours"], without["awake_hours"]),
            "-",
            None,
            details={
                **month,
                "asleep_hours_with_sleep": round(with_sleep["asleep_hours"], 1),
                "environments": with_sleep["environments"],
            },
        ),
        Row(
            NAME,
            "money, sleep_after 2h vs none",
            f"${with_sleep['money']:.2f}",
            f"${without['money']:.2f}",
            ratio(with_sleep["money"], without["money"]),
            "-",
            None,
            details={"awake_rate": AWAKE_RATE, "asleep_rate": ASLEEP_RATE},
        ),
        Row(
            NAME,
            "saving from automatic sleep",
            f"${without['money'] - with_sleep['money']:.2f}",
            f"${without['money']:.2f}",
            saving,
            "-",
            None,
            unit="%",
        ),
    ]
    count = 2_000 if ctx.quick else COUNT
    repeats = 3 if ctx.quick else 7
    rows.append(tick_at_scale(ctx, "sqlite", count, repeats))
    try:
        rows.append(tick_at_scale(ctx, "postgres", count, repeats))
    except psycopg.OperationalError as exc:
        rows.append(Row(NAME, "postgres", f"not reachable: {exc}"[:60], passed=None))
    if ctx.quick:
        ctx.notes.append(f"cost: quick mode replays {days} days and seeds {count} environments")
    return rows
