"""Shared fixtures: real databases (SQLite and PostgreSQL), settings, and free loopback ports.

PostgreSQL tests use RUNBOT_TEST_POSTGRES_URL (default: the local server). Without a reachable
server they skip and say why, unless RUNBOT_REQUIRE_POSTGRES=1 (set by .ci/run), where a missing
server is a failure rather than a silent skip.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from app.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "infra-templates"
DEFAULT_PG = "postgresql+psycopg://root@127.0.0.1:5432/test"


def _admin_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def postgres_admin_url() -> str:
    """The server to create test databases on, or skip/fail saying why."""
    url = os.environ.get("RUNBOT_TEST_POSTGRES_URL", DEFAULT_PG)
    try:
        with psycopg.connect(_admin_dsn(url), connect_timeout=3):
            pass
    except psycopg.Error as exc:
        reason = f"PostgreSQL not reachable at {make_url(url).render_as_string()}: {exc}".strip()
        if os.environ.get("RUNBOT_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason + " (RUNBOT_REQUIRE_POSTGRES=1)")
        pytest.skip(reason + "; set RUNBOT_TEST_POSTGRES_URL to run the PostgreSQL tests")
    return url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    admin = postgres_admin_url()
    name = f"runbot_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_admin_dsn(admin), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_admin_dsn(admin), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            drop_engine_roles(conn)


def drop_engine_roles(conn: psycopg.Connection[Any]) -> None:
    """The engine roles no database uses any more: roles outlive the test databases."""
    rows = conn.execute(
        "SELECT rolname FROM pg_roles WHERE starts_with(rolname, 'runbot_engine_')"
        " AND NOT EXISTS (SELECT 1 FROM pg_shdepend WHERE refobjid = pg_roles.oid)"
    ).fetchall()
    for (role,) in rows:
        with contextlib.suppress(psycopg.Error):
            conn.execute(f'DROP ROLE "{role}"')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Runs a test once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runbot.db'}"
    return request.getfixturevalue("postgres_url")


def port_range_free(base: int, count: int) -> bool:
    for port in range(base, base + count):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux's default elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port_range(count: int) -> int:
    """A base port with `count` free loopback ports above it, for one local silo."""
    rng = random.Random()
    step = 50 * -(-count // 50)  # bases a whole range apart
    # Below the kernel's ephemeral range: any outgoing connection (to PostgreSQL, to the fake
    # GitHub) takes its local port from there, and could take a slot's port between this check
    # and the server's bind.
    top = min(32768, ephemeral_ports()[0]) - count
    for _ in range(200):
        base = rng.randrange(10000, top, step)
        if port_range_free(base, count):
            return base
    raise RuntimeError("no free port range on loopback")


@pytest.fixture
def port_base() -> int:
    """A base port with 25 free ports above it, for one local silo."""
    return free_port_range(25)


def make_settings(tmp_path: Path, database_url: str | None = None, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "templates_dir": TEMPLATES,
        "engine": "embedded",
        "database_url": database_url,
        "lease_seconds": 6.0,
        "engine_cancel_grace": 10.0,
    }
    values.update(overrides)
    return load_settings(**values)


def processes_under(root: Path) -> list[int]:
    """Pids of processes whose command line names a path under `root`."""
    marker = os.fsencode(root) + b"/"
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if marker in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test(tmp_path: Path) -> Iterator[None]:
    """A test that fails half way (a drill, say) leaves its local-stack servers running,
    reparented out of reach in their sandbox's PID namespace; they would hold ports and match
    later tests' process searches. Torn down after every other fixture of the test."""
    yield
    if sys.platform != "linux":
        return
    for pid in processes_under(tmp_path):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests never read a developer's .env or RUNBOT_* variables by accident."""
    for key in list(os.environ):
        if key.startswith("RUNBOT_") and key not in (
            "RUNBOT_TEST_POSTGRES_URL",
            "RUNBOT_REQUIRE_POSTGRES",
        ):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def manual_clock() -> Iterator[Any]:
    """runbot's clock stopped at 2030-03-04 09:00 UTC for the test; move it with `.advance`."""
    from datetime import UTC, datetime

    from app import clock

    with clock.using(clock.ManualClock(datetime(2030, 3, 4, 9, 0, tzinfo=UTC))) as manual:
        yield manual
