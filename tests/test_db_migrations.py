"""The Alembic migrations against the models, on SQLite and PostgreSQL.

A model change without its migration would pass every test that builds the schema from head
and still break every existing install; comparing the two catches it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import insert, select
from sqlmodel import SQLModel

from app.db.models import Environment, Installation, PullRequest, Silo
from app.db.session import Database
from app.lifecycle.states import HoldKind

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def _upgrade(db: Database, revision: str) -> None:
    config = db._alembic_config()
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def silo_row(name: str) -> dict[str, Any]:
    """A silo as any revision since 0001 stores it, for inserting before a migration."""
    return {
        "name": name,
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
            connection.execute(insert(Silo.__table__), [silo_row("s")])  # type: ignore[attr-defined]
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


def test_hold_kind_is_backfilled_from_the_old_hold_sentences(database_url: str) -> None:
    """0006: the last time the wording decides anything; every sentence the 0005 code wrote."""
    sentences = {
        "closed": "closed",
        "queued": "queued: this repository is at its limit of 10 environments (...)",
        "ci_failed": "checks failed on abc1234; staying at def5678 (`wait_for_ci: true`)",
        "waiting_for_ci": "waiting for checks on abc1234 (`wait_for_ci: true`)",
        "fork_off": "PRs from forks are not deployed here (`forks: off` in .runbot.yml)",
        "fork_awaiting_approval": "PRs from forks wait for a maintainer with write access to ...",
        "draft": "draft PRs are not deployed (`drafts: false`); mark it ready for review",
        "labels": "waiting for the label(s) `preview`",
        "cannot_deploy": "cannot deploy: silo 'x' runs stack 'y'",
    }
    db = Database(database_url)
    try:
        _upgrade(db, "0005")
        table = PullRequest.__table__  # type: ignore[attr-defined]
        base = {
            "repository": "o/r",
            "head_sha": "",
            "head_ref": "",
            "base_ref": "",
            "base_sha": "",
            "author": "",
            "state": "open",
            "draft": False,
            "fork": False,
            "labels": [],
            "enabled": True,
            "sync_version": 1,
            "synced_version": 0,
            "sync_attempts": 0,
            "created_at": NOW,
            "updated_at": NOW,
        }
        rows = [
            {**base, "id": f"o/r#{n}", "number": n, "hold_reason": text, "config_error": None}
            for n, text in enumerate(sentences.values(), start=1)
        ]
        rows.append(
            {**base, "id": "o/r#90", "number": 90, "hold_reason": None, "config_error": None}
        )
        rows.append(
            {
                **base,
                "id": "o/r#91",
                "number": 91,
                "enabled": False,
                "hold_reason": None,
                "config_error": "**bad**",
            }
        )
        with db.engine.begin() as connection:
            connection.execute(insert(table), rows)
        _upgrade(db, "head")
        with db.engine.connect() as connection:
            kinds = dict(connection.execute(select(table.c.id, table.c.hold_kind)).all())
        expected = {f"o/r#{n}": kind for n, kind in enumerate(sentences, start=1)}
        assert kinds == {**expected, "o/r#90": None, "o/r#91": "config_error"}
        # Kinds added later never had a sentence to backfill.
        newer = {HoldKind.UNINSTALLED, HoldKind.SUSPENDED, HoldKind.POLICY, HoldKind.BUDGET}
        assert set(sentences) | {"config_error"} == {kind.value for kind in HoldKind} - newer
    finally:
        db.dispose()


def test_an_inactive_installation_is_backfilled_as_deleted(database_url: str) -> None:
    """0009: `active` could not tell suspended from uninstalled; inactive reads as deleted, so
    its environments are destroyed and its GitHub writes, which can never land, dropped."""
    db = Database(database_url)
    try:
        _upgrade(db, "0007")
        with db.engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO installation (id, account, repositories, active, updated_at)"
                " VALUES (1, 'a', '[\"a/x\"]', true, '2030-01-01'),"
                " (2, 'b', '[]', false, '2030-01-01')"
            )
        _upgrade(db, "head")
        c = Installation.__table__.c  # type: ignore[attr-defined]
        with db.engine.connect() as connection:
            rows = connection.execute(
                select(c.id, c.state, c.removed_repositories, c.repositories)
            ).all()
        assert sorted(tuple(row) for row in rows) == [
            (1, "active", [], ["a/x"]),
            (2, "deleted", [], []),
        ]
    finally:
        db.dispose()
