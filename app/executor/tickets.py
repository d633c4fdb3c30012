"""Run tickets in the database: what the dispatcher writes, and what the run-token API serves.

The pod never talks to the dispatching replica, only to runbot's API (any replica) and so to
the database: the dispatcher writes the ticket, the pod's pushes land in it, and whichever
replica dispatches (or adopts) the run reads them back. Nothing here depends on pod logs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, select

from app.db.models import RunTicket, RunTicketLine, table_of, utcnow
from app.db.session import Database
from app.executor.spec import token_hash, token_matches

MAX_LINES_PER_PUSH = 2000
MAX_PHASES = 8  # init, plan, apply or destroy, output, with room to spare
PHASE_NAME = re.compile(r"[a-z]{1,20}")
MAX_LINE_CHARS = 16384
RESULT_STATUSES = ("succeeded", "failed", "cancelled")


class TicketError(Exception):
    """A refused call of the run-token API: an HTTP status and a sentence."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Progress:
    #: Every phase the pod reported, in order.
    phases: tuple[str, ...]
    result: dict[str, Any] | None
    last_seq: int
    #: When the token was last minted: a dispatcher may be between that and creating the Job.
    minted_at: datetime | None = None


def create(
    db: Database,
    run_id: int,
    target: str,
    token: str,
    envelope: str,
    template: bytes,
    expires_at: datetime,
) -> bool:
    """Insert the run's ticket unless it exists; True when this call wrote it."""
    values = {
        "run_id": run_id,
        "target": target,
        "token_hash": token_hash(token),
        "expires_at": expires_at,
        "spec": envelope,
        "template": template,
        "last_seq": 0,
        "created_at": utcnow(),
    }
    table = table_of(RunTicket)
    dialect = postgresql if db.is_postgres else sqlite
    statement = (
        dialect.insert(table).values(**values).on_conflict_do_nothing().returning(table.c.run_id)
    )
    with db.session() as session:
        written = session.execute(statement).first()
        session.commit()
    return written is not None


def rotate(
    db: Database, run_id: int, token: str, envelope: str, template: bytes, expires_at: datetime
) -> None:
    """A new token for a run no pod holds a token of yet (its Job or its Secret is missing)."""
    with db.session() as session:
        session.execute(
            update(table_of(RunTicket))
            .where(col(RunTicket.run_id) == run_id, col(RunTicket.result).is_(None))
            .values(
                token_hash=token_hash(token),
                created_at=utcnow(),
                spec=envelope,
                template=template,
                expires_at=expires_at,
            )
        )
        session.commit()


def progress(db: Database, run_id: int) -> Progress | None:
    with db.session() as session:
        row = session.exec(
            select(
                RunTicket.phases, RunTicket.result, RunTicket.last_seq, RunTicket.created_at
            ).where(RunTicket.run_id == run_id)
        ).first()
    if row is None:
        return None
    result = dict(row[1]) if row[1] is not None else None
    return Progress(phases=tuple(row[0].split()), result=result, last_seq=row[2], minted_at=row[3])


def lines_after(db: Database, run_id: int, seq: int, limit: int = 1000) -> list[tuple[int, str]]:
    with db.session() as session:
        rows = session.exec(
            select(RunTicketLine.seq, RunTicketLine.text)
            .where(RunTicketLine.run_id == run_id, RunTicketLine.seq > seq)
            .order_by(col(RunTicketLine.seq))
            .limit(limit)
        ).all()
    return [(int(s), str(t)) for s, t in rows]


# The run-token API's side.


def authorize(db: Database, run_id: int, header: str | None, now: datetime) -> RunTicket:
    """The ticket a bearer run token opens: 401 without one, 403 for another run's, 410 once
    expired. Unknown runs get 403 too, so a token cannot probe which runs exist."""
    scheme, _, presented = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise TicketError(401, "send Authorization: Bearer <run token> (RUNBOT_RUN_TOKEN)")
    with db.session() as session:
        ticket = session.get(RunTicket, run_id)
    if ticket is None or not token_matches(presented.strip(), ticket.token_hash):
        raise TicketError(403, f"this token is not the run token of run {run_id}")
    if ticket.expires_at <= now:
        raise TicketError(410, f"the run token of run {run_id} has expired")
    return ticket


def open_for_fetch(ticket: RunTicket) -> None:
    if ticket.result is not None:
        raise TicketError(410, f"run {ticket.run_id} has finished; its spec is gone")


def after_phase(history: str, phase: str) -> str:
    """The phase history with `phase` appended, unless it is already the last one."""
    if not PHASE_NAME.fullmatch(phase):
        raise TicketError(422, "a phase is 1 to 20 lowercase letters, such as init or apply")
    seen = history.split()
    if seen and seen[-1] == phase:
        return history
    if len(seen) >= MAX_PHASES:
        raise TicketError(422, f"a run reports at most {MAX_PHASES} phases")
    return " ".join([*seen, phase])


def push_lines(db: Database, run_id: int, lines: list[tuple[int, str]], phase: str | None) -> int:
    """Store pushed lines, ignoring those (run_id, seq) already has: a resend changes nothing.
    Returns the highest sequence number stored so far."""
    if len(lines) > MAX_LINES_PER_PUSH:
        raise TicketError(413, f"push at most {MAX_LINES_PER_PUSH} lines at a time")
    if any(seq < 1 for seq, _ in lines):
        raise TicketError(422, "line sequence numbers start at 1")
    table = table_of(RunTicketLine)
    dialect = postgresql if db.is_postgres else sqlite
    with db.session() as session:
        if lines:
            rows = [
                # A pod's lines are untrusted: a NUL would make PostgreSQL refuse the whole push.
                {
                    "run_id": run_id,
                    "seq": seq,
                    "text": text[:MAX_LINE_CHARS].replace("\x00", "\ufffd"),
                }
                for seq, text in lines
            ]
            session.execute(dialect.insert(table).values(rows).on_conflict_do_nothing())
        ticket = session.get(RunTicket, run_id, with_for_update=db.is_postgres)
        assert ticket is not None
        top = max([ticket.last_seq, *(seq for seq, _ in lines)])
        ticket.last_seq = top
        if phase:
            ticket.phases = after_phase(ticket.phases, phase)
        session.add(ticket)
        session.commit()
    return top


def push_result(db: Database, run_id: int, result: dict[str, Any]) -> bool:
    """Record the run's result once; a resend is accepted and changes nothing. The spec and
    the template (credentials, the engine role's password) are dropped with it."""
    if result.get("status") not in RESULT_STATUSES:
        raise TicketError(422, f"status must be one of {', '.join(RESULT_STATUSES)}")
    with db.session() as session:
        written = session.execute(
            update(table_of(RunTicket))
            .where(col(RunTicket.run_id) == run_id, col(RunTicket.result).is_(None))
            .values(result=result, spec="", template=None)
        ).rowcount  # type: ignore[attr-defined]
        session.commit()
    return bool(written)
