"""State isolation (issue 15, finding 7): every target has its own PostgreSQL state schema.

Real silos of the local stack, applied and destroyed by the embedded engine with runbot's `pg`
backend on a fresh database of the local server; and migration 0010, which moves the schemas of
an existing install to their new names.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from sqlalchemy import insert, text
from sqlalchemy.engine import make_url
from sqlmodel import col, select

from app.db.models import Run, Silo, utcnow
from app.db.session import Database
from app.engine.backends import schema_name
from app.engine.logs import read_log
from app.lifecycle.states import Status
from app.runtime import Runtime, build_runtime
from tests.conftest import make_settings
from tests.helpers import converge_sync, silo_ready
from tests.test_db_migrations import _upgrade, silo_row

migration = importlib.import_module("app.db.migrations.versions.0010_state_schema_names")

LONG = ("a-long-silo-name-" * 3)[:45]  # two 60-character names share these 45
LONG_A, LONG_B = LONG + "x" * 15, LONG + "y" * 15


def _dsn(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def state_schemas(database_url: str) -> set[str]:
    with psycopg.connect(_dsn(database_url)) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, 'runbot_state_')"
        ).fetchall()
    return {row[0] for row in rows}


def test_state_schema_names_are_distinct_and_fit_postgres() -> None:
    names = ["team-a", "team_a", LONG_A, LONG_B, "local-default", "x" * 63]
    targets = [f"silo-{n}" for n in names] + ["env-pr-42-k3x9q", "env-pr-42-k3x9r"]
    schemas = [schema_name(t) for t in targets]
    assert len(set(schemas)) == len(targets)
    assert all(len(s.encode()) <= 63 and s.startswith("runbot_state_") for s in schemas)
    assert schema_name("silo-team-a").startswith("runbot_state_silo_team_a_")  # still readable
    # The migration freezes today's function; the two must agree for it to move state right.
    assert [migration.new_name(t) for t in targets] == schemas


# ----- the engine, two silos whose old schema names collided ---------------------------------


def _apply(rt: Runtime, name: str, port_base: int) -> dict[str, Any]:
    rt.lifecycle.create_silo(name, "local", {"port_base": port_base, "capacity": 2})
    converge_sync(rt, silo_ready(rt, name))
    silo = rt.lifecycle.get_silo(name)
    assert silo.status == Status.READY, silo.reason
    return silo.outputs


def _last_run(rt: Runtime, name: str) -> Run:
    with rt.db.session() as session:
        run = session.exec(
            select(Run)
            .where(Run.target_kind == "silo", Run.target_id == name)
            .order_by(col(Run.id).desc())
        ).first()
    assert run is not None
    return run


def _destroy_one_and_reapply_the_other(
    tmp_path: Path, postgres_url: str, port_base: int, first: str, second: str
) -> None:
    rt = build_runtime(make_settings(tmp_path, postgres_url))
    try:
        outputs = {first: _apply(rt, first, port_base), second: _apply(rt, second, port_base + 5)}
        mine, theirs = schema_name(f"silo-{first}"), schema_name(f"silo-{second}")
        assert mine != theirs
        assert {mine, theirs} <= state_schemas(postgres_url)

        rt.lifecycle.destroy_silo(first)
        converge_sync(rt, silo_ready(rt, first))
        assert rt.lifecycle.get_silo(first).status == Status.DESTROYED
        schemas = state_schemas(postgres_url)
        assert mine not in schemas
        assert theirs in schemas  # destroying one silo left the other's state alone

        rt.lifecycle.update_silo(second)
        converge_sync(rt, silo_ready(rt, second))
        silo = rt.lifecycle.get_silo(second)
        assert silo.status == Status.READY, silo.reason
        run = _last_run(rt, second)
        assert run.operation == "apply" and run.status == "succeeded"
        log_text, _ = read_log(rt.db, run.id or 0, 0)
        assert "0 added, 0 changed, 0 destroyed" in log_text, log_text  # a no-op
        assert silo.outputs == outputs[second]  # the silo's secret id too: nothing was recreated
    finally:
        for name in (first, second):
            if rt.lifecycle.get_silo(name).status != Status.DESTROYED:
                rt.lifecycle.destroy_silo(name, force=True)
        converge_sync(rt, lambda: all(silo_ready(rt, n)() for n in (first, second)))
        rt.db.dispose()


@pytest.mark.engine
@pytest.mark.postgres
def test_finding_7_team_a_and_team_underscore_a_keep_separate_state(
    tmp_path: Path, postgres_url: str, port_base: int
) -> None:
    _destroy_one_and_reapply_the_other(tmp_path, postgres_url, port_base, "team-a", "team_a")


@pytest.mark.engine
@pytest.mark.postgres
def test_finding_7_sixty_character_names_sharing_45_keep_separate_state(
    tmp_path: Path, postgres_url: str, port_base: int
) -> None:
    assert len(LONG_A) == len(LONG_B) == 60 and LONG_A[:45] == LONG_B[:45]
    _destroy_one_and_reapply_the_other(tmp_path, postgres_url, port_base, LONG_A, LONG_B)


# ----- migration 0010 ---------------------------------------------------------------------------


def _downgrade(db: Database, revision: str) -> None:
    config = db._alembic_config()
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def _run_row(name: str) -> dict[str, Any]:
    return {
        "target_kind": "silo",
        "target_id": name,
        "operation": "apply",
        "trigger": "test",
        "status": "succeeded",
        "phase": "done",
        "generation": 1,
        "worker": "",
        "started_at": utcnow(),
    }


def _state_of(database_url: str, schema: str) -> str | None:
    """The marker the test wrote into a schema's `states` table (None: no such schema)."""
    with psycopg.connect(_dsn(database_url)) as conn:
        found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
        if found is None:
            return None
        row = conn.execute(f'SELECT data FROM "{schema}".states').fetchone()
    return None if row is None else str(row[0])


@pytest.mark.postgres
def test_finding_7_migration_moves_each_schema_to_its_targets_new_name(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = Database(postgres_url)
    try:
        _upgrade(db, "0007")
        silos = ["solo", "team-a", "team_a", LONG_A, LONG_B, "never-applied"]
        with db.engine.begin() as connection:
            connection.execute(insert(Silo.__table__), [silo_row(n) for n in silos])  # type: ignore[attr-defined]
            # team-a ran first and team_a after it: the shared state is team_a's.
            connection.execute(insert(Run.__table__), [_run_row("team-a"), _run_row("team_a")])  # type: ignore[attr-defined]
            # The schemas as the old code left them; the two long names' runs are unknown.
            for name, marker in [
                ("solo", "solo"),
                ("team_a", "team_a last"),
                (LONG_A, "one of the long ones"),
            ]:
                schema = migration.old_name(f"silo-{name}")
                connection.execute(text(f'CREATE SCHEMA "{schema}"'))
                connection.execute(text(f'CREATE TABLE "{schema}".states (data text)'))
                connection.execute(
                    text(f'INSERT INTO "{schema}".states VALUES (:m)'), {"m": marker}
                )
        old_long = migration.old_name(f"silo-{LONG_A}")
        assert old_long == migration.old_name(f"silo-{LONG_B}")  # the bug: one schema for two
        assert migration.old_name("silo-team-a") == migration.old_name("silo-team_a")

        with caplog.at_level(logging.INFO, logger="runbot.db.migrations"):
            _upgrade(db, "head")

        assert _state_of(postgres_url, schema_name("silo-solo")) == "solo"
        assert _state_of(postgres_url, schema_name("silo-team_a")) == "team_a last"
        assert _state_of(postgres_url, schema_name("silo-team-a")) is None  # not given team_a's
        # Nobody can say whose the long names' state is: left where it was, and said so.
        assert _state_of(postgres_url, old_long) == "one of the long ones"
        assert _state_of(postgres_url, schema_name(f"silo-{LONG_A}")) is None
        assert _state_of(postgres_url, schema_name(f"silo-{LONG_B}")) is None
        assert state_schemas(postgres_url) == {
            schema_name("silo-solo"),
            schema_name("silo-team_a"),
            old_long,
        }
        messages = "\n".join(r.getMessage() for r in caplog.records)
        assert (
            "goes to silo-team_a" in messages and "silo-team-a start with empty state" in messages
        )
        assert f"{old_long} was shared by silo-{LONG_A}, silo-{LONG_B}" in messages
        assert "left as it is" in messages

        _downgrade(db, "0007")  # and back: each renamed schema returns to its old name
        assert _state_of(postgres_url, migration.old_name("silo-solo")) == "solo"
        assert _state_of(postgres_url, migration.old_name("silo-team_a")) == "team_a last"
        assert _state_of(postgres_url, old_long) == "one of the long ones"
    finally:
        db.dispose()


def test_finding_7_migration_is_a_no_op_on_sqlite(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'runbot.db'}")
    try:
        _upgrade(db, "0007")
        with db.engine.begin() as connection:
            connection.execute(insert(Silo.__table__), [silo_row("team-a")])  # type: ignore[attr-defined]
        _upgrade(db, "head")
        with db.session() as session:
            assert [s.name for s in session.exec(select(Silo)).all()] == ["team-a"]
    finally:
        db.dispose()
