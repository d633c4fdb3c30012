"""The doctor's check of environments and silos whose destroy failed and is being retried."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool
from sqlmodel import Session, col, select

from app.db.models import Environment, Silo
from app.doctor.report import Row, ok, warn
from app.lifecycle.states import Status
from app.settings import Settings

#: Stuck targets named in full; the rest are counted.
SHOWN = 10
_REASON_CHARS = 120


def check_stuck_destroys(settings: Settings) -> Row:
    """Warn, naming each, about targets in `destroy_failed`: they keep slots and resources."""
    url = settings.resolved_database_url
    if not settings.is_postgres and not Path(make_url(url).database or "").exists():
        return ok("stuck destroys", "none: no database yet")
    engine = create_engine(url, poolclass=NullPool)
    try:
        with Session(engine) as session:
            stuck: list[tuple[str, Any]] = [
                (f"environment {env.id} ({env.repository}#{env.pr_number})", env)
                for env in session.exec(
                    select(Environment)
                    .where(Environment.status == Status.DESTROY_FAILED)
                    .order_by(col(Environment.updated_at))
                )
            ]
            stuck += [
                (f"silo {silo.name}", silo)
                for silo in session.exec(
                    select(Silo)
                    .where(Silo.status == Status.DESTROY_FAILED)
                    .order_by(col(Silo.updated_at))
                )
            ]
    except SQLAlchemyError:
        return warn(
            "stuck destroys",
            "not checked: the database is unreachable",
            "fix the database row first",
        )
    finally:
        engine.dispose()
    if not stuck:
        return ok("stuck destroys", "none: every destroy that failed has since succeeded")
    lines = [_describe(name, row) for name, row in stuck[:SHOWN]]
    if len(stuck) > SHOWN:
        lines.append(f"and {len(stuck) - SHOWN} more")
    return warn(
        "stuck destroys",
        f"{len(stuck)} destroy(s) failed and are being retried: " + "; ".join(lines),
        "read the failed run's log (dashboard, or `runbot env logs <id>`), fix the cause, then"
        " retry now: `/runbot destroy` on the PR, the dashboard's Retry destroy, or"
        " `runbot env destroy <id>` / `runbot silo destroy <name>`",
    )


def _describe(name: str, row: Any) -> str:
    reason = " ".join(str(row.reason or "no reason recorded").split())
    if len(reason) > _REASON_CHARS:
        reason = reason[: _REASON_CHARS - 1] + "…"
    retry: datetime | None = row.next_attempt_at
    when = f", next try {retry:%Y-%m-%d %H:%M} UTC" if retry is not None else ""
    return f"{name}: failed {row.attempts} time(s){when}: {reason}"
