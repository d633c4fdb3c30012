"""The engine's own PostgreSQL role (issue 16): it reaches its state schema and nothing else.

A real apply by the embedded engine with runbot's `pg` backend, on a fresh database. The
template's `local-exec` hands the test the `PG_CONN_STR` it was given (through a file, never
the log), and the test connects with it as a template could.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from app.db.session import Database
from app.engine import pgrole
from app.engine.backends import schema_name
from app.engine.runner import EngineJob, EngineRunner

pytestmark = [pytest.mark.engine, pytest.mark.postgres]

TEMPLATE = """
variable "handoff" {
  type = string
}

resource "terraform_data" "probe" {
  provisioner "local-exec" {
    command     = "printf '%s' \\"$PG_CONN_STR\\" > \\"$HANDOFF\\"; echo probe ran"
    environment = { HANDOFF = var.handoff }
  }
}

output "done" {
  value = "yes"
}
"""


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _apply(runner: EngineRunner, target: str, template: Path, handoff: Path) -> list[str]:
    lines: list[str] = []
    job = EngineJob(target, template, "apply", {"handoff": str(handoff)})
    asyncio.run(runner.execute(job, lines.append))
    return lines


def _denied(conn_str: str, query: str) -> bool:
    with psycopg.connect(conn_str, autocommit=True) as conn:
        try:
            conn.execute(query)
        except psycopg.errors.InsufficientPrivilege:
            return True
    return False


def test_the_engine_connects_as_a_role_that_reaches_only_its_own_state(
    tmp_path: Path, postgres_url: str
) -> None:
    Database(postgres_url).migrate()  # runbot's own tables, which the engine must not read
    template = tmp_path / "template"
    template.mkdir()
    (template / "main.tf").write_text(TEMPLATE)
    runner = EngineRunner("embedded", tmp_path / "data", postgres_url)
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    lines = _apply(runner, "silo-mine", template, mine)
    _apply(runner, "silo-theirs", template, theirs)

    given = mine.read_text()
    engine_url = make_url(given.replace("postgres://", "postgresql://", 1))
    assert engine_url.username == pgrole.role_name(postgres_url, "silo-mine")
    assert engine_url.username != make_url(postgres_url).username
    assert engine_url.password and engine_url.password not in "\n".join(lines)
    assert given not in "\n".join(lines)

    # Its own state: readable and written by this apply.
    with psycopg.connect(given, autocommit=True) as conn:
        (count,) = conn.execute(
            f'SELECT count(*) FROM "{schema_name("silo-mine")}".states'
        ).fetchone() or (0,)
    assert count == 1
    # runbot's tables and the other target's state: refused.
    for table in ("silo", "environment", "run", "alembic_version"):
        assert _denied(given, f"SELECT * FROM public.{table}"), table
    assert _denied(given, f'SELECT * FROM "{schema_name("silo-theirs")}".states')
    assert _denied(given, "CREATE SCHEMA sneaky")
    assert _denied(given, f'DROP TABLE "{schema_name("silo-theirs")}".states')

    # Each run sets a new password: what a template saw last time is no use later (where
    # pg_hba asks for passwords; the test server trusts loopback, so compare the stored hash).
    before = _password_hash(postgres_url, engine_url.username)
    _apply(runner, "silo-mine", template, mine)
    assert _password_hash(postgres_url, engine_url.username) not in (before, None)


def _password_hash(postgres_url: str, role: str) -> str | None:
    with psycopg.connect(_dsn(postgres_url), autocommit=True) as conn:
        row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,))
        found = row.fetchone()
    return found[0] if found else None


def test_forget_drops_the_schema_and_the_role(tmp_path: Path, postgres_url: str) -> None:
    template = tmp_path / "template"
    template.mkdir()
    (template / "main.tf").write_text(TEMPLATE)
    runner = EngineRunner("embedded", tmp_path / "data", postgres_url)
    _apply(runner, "env-gone", template, tmp_path / "handoff")
    role = pgrole.role_name(postgres_url, "env-gone")
    with psycopg.connect(_dsn(postgres_url), autocommit=True) as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    runner.forget("env-gone")
    with psycopg.connect(_dsn(postgres_url), autocommit=True) as conn:
        assert not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        assert not conn.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema_name("env-gone"),)
        ).fetchone()


def test_role_names_are_distinct_per_database_and_fit_postgres() -> None:
    a = "postgresql+psycopg://root@127.0.0.1/one"
    b = "postgresql+psycopg://root@127.0.0.1/two"
    names = {pgrole.role_name(url, t) for url in (a, b) for t in ("silo-x", "silo-y", "x" * 80)}
    assert len(names) == 6
    assert all(len(n.encode()) <= 63 and n.startswith("runbot_engine_") for n in names)


def test_doctor_says_to_grant_createrole_when_runbot_cannot_make_engine_roles(
    tmp_path: Path, postgres_url: str
) -> None:
    from app.doctor.local import check_database
    from app.doctor.report import State
    from tests.conftest import make_settings

    database = make_url(postgres_url).database
    weak = f"runbot_weak_{database}"[:63]
    with psycopg.connect(_dsn(postgres_url), autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{weak}" LOGIN NOCREATEROLE')
        conn.execute(f'GRANT CREATE ON DATABASE "{database}" TO "{weak}"')
    try:
        strong = check_database(make_settings(tmp_path, postgres_url))[0]
        assert strong.state is State.OK, strong
        weak_url = make_url(postgres_url).set(username=weak).render_as_string(hide_password=False)
        row = check_database(make_settings(tmp_path, weak_url))[0]
        assert row.state is State.FAIL
        assert "may not create roles" in row.detail and f'ALTER ROLE "{weak}" CREATEROLE' in row.fix
    finally:
        with psycopg.connect(_dsn(postgres_url), autocommit=True) as conn:
            conn.execute(f'REVOKE ALL ON DATABASE "{database}" FROM "{weak}"')
            conn.execute(f'DROP ROLE "{weak}"')


def test_a_createrole_runbot_role_that_is_no_superuser_sets_up_and_drops_engine_roles(
    tmp_path: Path, postgres_url: str
) -> None:
    """What production looks like: runbot's role owns its database and may create roles, but
    is no superuser. Apply, then forget, must both work as it (on PostgreSQL 15, `DROP OWNED
    BY` would be refused here), and the server stores only a SCRAM verifier."""
    database = make_url(postgres_url).database
    owner = f"runbot_owner_{database}"[:63]
    with psycopg.connect(_dsn(postgres_url), autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{owner}" LOGIN CREATEROLE NOSUPERUSER')
        conn.execute(f'ALTER DATABASE "{database}" OWNER TO "{owner}"')
    owner_url = make_url(postgres_url).set(username=owner).render_as_string(hide_password=False)
    template = tmp_path / "template"
    template.mkdir()
    (template / "main.tf").write_text(TEMPLATE)
    runner = EngineRunner("embedded", tmp_path / "data", owner_url)
    role = pgrole.role_name(owner_url, "env-owned")
    try:
        _apply(runner, "env-owned", template, tmp_path / "handoff")
        stored = _password_hash(postgres_url, role)
        assert stored is not None and stored.startswith("SCRAM-SHA-256$"), stored
        runner.forget("env-owned")
        with psycopg.connect(_dsn(postgres_url), autocommit=True) as conn:
            assert not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    finally:
        with psycopg.connect(_dsn(postgres_url), autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{database}" OWNER TO CURRENT_USER')
            conn.execute(f'REASSIGN OWNED BY "{owner}" TO CURRENT_USER')
            conn.execute(f'DROP OWNED BY "{owner}"')
            conn.execute(f'DROP ROLE "{owner}"')
