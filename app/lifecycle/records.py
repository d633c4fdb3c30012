"""The target records: the template and inputs each engine target was last applied with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlmodel import select

from app.db.models import TargetRecord, utcnow
from app.db.session import Database


def record_apply(
    db: Database,
    name: str,
    kind: str,
    target_id: str,
    stack: str,
    stack_source: dict[str, Any],
    variables: dict[str, Any],
    sensitive: list[str],
    declared_backend: str | None,
) -> None:
    """Keep what this apply runs with, before it runs: a crash mid-apply must not lose it."""
    with db.session() as session:
        row = session.get(TargetRecord, name) or TargetRecord(
            name=name, kind=kind, target_id=target_id, stack=stack
        )
        row.kind, row.target_id, row.stack = kind, target_id, stack
        row.stack_source, row.variables, row.sensitive = stack_source, variables, sensitive
        row.declared_backend, row.recorded_at = declared_backend, utcnow()
        session.add(row)
        session.commit()


def drop_record(db: Database, name: str) -> None:
    """The target's state is destroyed: nothing is left to destroy with its record."""
    with db.session() as session:
        row = session.get(TargetRecord, name)
        if row is not None:
            session.delete(row)
            session.commit()


def all_records(db: Database) -> dict[str, TargetRecord]:
    with db.session() as session:
        return {row.name: row for row in session.exec(select(TargetRecord))}


def recorded_workspace(db: Database, name: str) -> Path | None:
    """The workspace directory target `name` was last applied with, if its template takes one.

    A silo applied by another replica names that replica's data dir; its environments' runs must
    see that directory (the local stack's servers live there), not one of their own.
    """
    with db.session() as session:
        row = session.get(TargetRecord, name)
    value = row.variables.get("runbot_workspace_dir") if row is not None else None
    return Path(value) if isinstance(value, str) and value else None
