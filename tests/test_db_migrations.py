"""The Alembic migrations against the models, on SQLite and PostgreSQL.

A model change without its migration would pass every test that builds the schema from head
and still break every existing install; comparing the two catches it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import insert, select
from sqlmodel import SQLModel

from app.db.models import Environment, Silo
from app.db.session import Database

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def _upgrade(db: Database, revision: str) -> None:
    config = db._alembic_config()
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def test_migrations_build_exactly_the_models_schema(database_url: str) -> None:
    db = Database(database_url)
    try:
        db.migrate()
        with db.engine.connect() as connection:
            context = MigrationContext.configure(connection)
            differences = compare_metadata(context, SQLModel.metadata)
        assert differences == [], f"models and migrations disagree: {differences}"
    finally:
        db.dispose()


def test_warn_at_is_backfilled_from_each_rows_ttl(database_url: str) -> None:
    db = Database(database_url)
    try:
        _upgrade(db, "0003")
        environment = Environment.__table__.c  # type: ignore[attr-defined]
        with db.engine.begin() as connection:
            connection.execute(
                insert(Silo.__table__),  # type: ignore[attr-defined]
                [
                    {
                        "name": "s",
                        "stack": "local",
                        "stack_source": {},
                        "vars": {},
                        "outputs": {},
                        "desired": "present",
                        "force_destroy": False,
                        "status": "ready",
                        "generation": 1,
                        "observed_generation": 1,
                        "capacity": 10,
                        "attempts": 0,
                        "created_at": NOW,
                        "updated_at": NOW,
                    }
                ],
            )
            base = {
                "silo_name": "s",
                "stack": "local",
                "stack_source": {},
                "repository": "o/r",
                "head_ref": "",
                "vars": {},
                "outputs": {},
                "desired": "present",
                "generation": 1,
                "observed_generation": 1,
                "status": "ready",
                "trigger": "push",
                "author": "",
                "head_sha": "",
                "attempts": 0,
                "sync_version": 1,
                "last_activity_at": NOW,
                "created_at": NOW,
                "updated_at": NOW,
            }
            rows = [
                {
                    **base,
                    "id": "pr-1-a",
                    "pr_number": 1,
                    "expires_at": NOW,
                    "ttl": {"idle": 7200, "max": 21600, "warn_before": 1800},
                },
                {**base, "id": "pr-2-b", "pr_number": 2, "expires_at": NOW, "ttl": {}},
                {**base, "id": "pr-3-c", "pr_number": 3, "expires_at": None, "ttl": {}},
            ]
            # Rows as a 0003 install holds them: no warn_at column yet.
            connection.execute(insert(Environment.__table__), rows)  # type: ignore[attr-defined]
        _upgrade(db, "head")
        with db.engine.connect() as connection:
            warn_at = dict(connection.execute(select(environment.id, environment.warn_at)).all())
        assert warn_at == {
            "pr-1-a": NOW - timedelta(minutes=30),
            "pr-2-b": NOW - timedelta(hours=1),  # no TTL record: the default policy's hour
            "pr-3-c": None,
        }
    finally:
        db.dispose()
