"""Scale: 10,000 environments in the database, on SQLite and on PostgreSQL.

- Scheduler tick: the three jobs that run every `RUNBOT_SCHEDULER_INTERVAL` (TTL reaper, expiry
  warnings, lease recovery), timed on the real `Ticks` object, as a share of the default 30 s
  interval (target: at most 1%). Resync (every 10 ticks, at least 60 s) is GitHub-bound: it
  lists open PRs through the API, so its cost is GitHub's latency, not the database's; it is not
  timed.
- The REST API list page (`GET /api/environments?page=N`, bearer token) and the dashboard list
  page (`GET /?page=N`) of a real `runbot serve`, first and last page of 50, against the raw
  indexed query that page needs (`... ORDER BY created_at DESC, id DESC LIMIT 50 OFFSET ...`
  through the bare DB driver).

PostgreSQL is a scratch database, created and dropped by the run, on the server named by
`RUNBOT_TEST_POSTGRES_URL`. `--quick` seeds 2,000 environments.

All environments are live (ready, expiring over the next week, none inside its warning window
yet). Before the indexed `warn_at` column this was the ticks' worst case: the warning tick
loaded every live environment to test its window in Python (425 ms, 1.42% of the interval); now
the index hands it only the rows whose warning is due.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import psycopg
from sqlalchemy import insert
from sqlalchemy.engine import make_url

from app.db.models import Environment, Silo, utcnow, warning_time
from app.github.outbox import OutboxGateway
from app.schedule.ticks import Ticks
from bench.harness import Context, Serve, process_env, runtime_for
from bench.stats import Row, check, fmt_seconds, median, ratio

NAME = "scale"
COUNT = 10_000
PER_PAGE = 50
INTERVAL = 30.0  # RUNBOT_SCHEDULER_INTERVAL's default
TOKEN = "bench-api-token-0123456789"
PG_ADMIN = os.environ.get(
    "RUNBOT_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"
)


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.contextmanager
def scratch_postgres() -> Iterator[str]:
    """A fresh database on the server of `RUNBOT_TEST_POSTGRES_URL`, dropped afterwards."""
    name = f"runbot_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_libpq(PG_ADMIN), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    try:
        yield make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_libpq(PG_ADMIN), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


def seed(rt: Any, count: int) -> None:
    now = utcnow()
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
        ttl = {"idle": 172800, "max": 604800, "warn_before": 3600}
        for index in range(count):
            created = now - timedelta(minutes=count - index)
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
                    "desired": "present",
                    "generation": 2,
                    "observed_generation": 2,
                    "status": "ready",
                    "trigger": "push",
                    "slot": index,
                    "url": f"http://127.0.0.1:{20000 + index % 40000}/",
                    "outputs": {"url": {"value": "http://x/", "sensitive": False}},
                    "ttl": ttl,
                    "last_activity_at": created,
                    "expires_at": expires_at,
                    "warn_at": warning_time(expires_at, ttl),
                    "sync_version": 1,
                    "created_at": created,
                    "updated_at": created,
                }
            )
        conn.execute(insert(Environment.__table__), rows)  # type: ignore[attr-defined]


def time_ticks(
    rt: Any,
    repeats: int,
    names: tuple[str, ...] = ("reap_expired", "warn_expiring", "recover_leases"),
) -> dict[str, float]:
    """The median time of each named job of the real `Ticks`, after a warm-up round."""
    ticks = Ticks(rt.db, rt.lifecycle, OutboxGateway(rt.db, None))
    jobs = {name: getattr(ticks, name) for name in names}
    figures: dict[str, list[float]] = {name: [] for name in jobs}

    async def once() -> None:
        for name, job in jobs.items():
            started = time.perf_counter()
            await job()
            figures[name].append(time.perf_counter() - started)

    for _ in range(repeats + 1):
        asyncio.run(once())
    return {name: median(values[1:]) for name, values in figures.items()}  # first one warms up


def raw_page(database: str, path_or_url: str, page: int, repeats: int) -> float:
    query = (
        "SELECT * FROM environment WHERE status != 'destroyed'"
        f" ORDER BY created_at DESC, id DESC LIMIT {PER_PAGE} OFFSET {(page - 1) * PER_PAGE}"
    )
    samples = []
    if database == "sqlite":
        conn = sqlite3.connect(path_or_url)
        try:
            for _ in range(repeats + 1):
                started = time.perf_counter()
                conn.execute(query).fetchall()
                samples.append(time.perf_counter() - started)
        finally:
            conn.close()
    else:
        with psycopg.connect(_libpq(path_or_url)) as conn:
            for _ in range(repeats + 1):
                started = time.perf_counter()
                conn.execute(query).fetchall()  # type: ignore[arg-type]
                samples.append(time.perf_counter() - started)
    return median(samples[1:])


def http_page(url: str, repeats: int, headers: dict[str, str]) -> float:
    samples = []
    with httpx.Client(timeout=60, headers=headers) as client:
        for _ in range(repeats + 1):
            started = time.perf_counter()
            response = client.get(url)
            samples.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:300]}")
    return median(samples[1:])


def one_database(ctx: Context, database: str, count: int, repeats: int) -> list[Row]:
    with contextlib.ExitStack() as stack:
        url = None if database == "sqlite" else stack.enter_context(scratch_postgres())
        return _measure(ctx, database, url, count, repeats)


def _measure(ctx: Context, database: str, url: str | None, count: int, repeats: int) -> list[Row]:
    root = ctx.scratch(f"{NAME}-{database}")
    data = root / "data"
    target = str(data / "runbot.db") if url is None else url
    rt = runtime_for(data, url)
    started = time.perf_counter()
    seed(rt, count)
    ctx.log(
        f"scale {database}: {count} environments seeded in {time.perf_counter() - started:.1f}s"
    )
    ticks = time_ticks(rt, repeats)
    rt.db.dispose()
    tick = sum(ticks.values())
    share = 100.0 * tick / INTERVAL
    rows = [
        Row(
            NAME,
            f"{database}: scheduler tick / interval",
            fmt_seconds(tick),
            f"{INTERVAL:.0f} s",
            share,
            "<= 1%",
            check(share, 1.0),
            unit="%",
            details={name: value for name, value in ticks.items()},
        )
    ]
    env_vars = process_env(data, None, url, api_token=TOKEN)
    last = (count + PER_PAGE - 1) // PER_PAGE
    with Serve(env_vars, root / "serve.log") as serve:
        for label, page in (("first page", 1), ("last page", last)):
            raw = raw_page(database, target, page, repeats * 4)
            api = http_page(
                f"{serve.url}/api/environments?page={page}&per_page={PER_PAGE}",
                repeats * 4,
                {"Authorization": f"Bearer {TOKEN}"},
            )
            dash = http_page(f"{serve.url}/?page={page}", repeats * 4, {})
            for what, value in (("API", api), ("dashboard", dash)):
                rows.append(
                    Row(
                        NAME,
                        f"{database}: {what} list, {label}",
                        fmt_seconds(value),
                        f"{fmt_seconds(raw)} (raw query)",
                        ratio(value, raw),
                        "-",
                        None,
                    )
                )
            ctx.log(
                f"scale {database} {label}: API {fmt_seconds(api)}, dashboard"
                f" {fmt_seconds(dash)}, raw {fmt_seconds(raw)}"
            )
    return rows


def run(ctx: Context) -> list[Row]:
    count = 2_000 if ctx.quick else COUNT
    repeats = 3 if ctx.quick else 7
    rows = one_database(ctx, "sqlite", count, repeats)
    try:
        rows += one_database(ctx, "postgres", count, repeats)
    except psycopg.OperationalError as exc:
        rows.append(Row(NAME, "postgres", f"not reachable: {exc}"[:60], passed=None))
    if count != COUNT:
        ctx.notes.append(f"scale: quick mode uses {count} environments instead of {COUNT}")
    return rows
