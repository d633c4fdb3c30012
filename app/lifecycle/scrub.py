"""Scrubbing a run's stored log of the sensitive outputs that the run itself created.

The engine's lines are redacted as they stream, but only of secrets known before the run: a
sensitive output the run creates (a generated password, an id) is known only once it ends,
when its lines are already stored. Before the run's outcome is saved (and so before any
comment can quote it), its chunks are rewritten without those values.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import select

from app.db.models import RunLogChunk
from app.db.session import Database
from app.engine.credentials import Redactor
from app.lifecycle.outputs import sensitive_values

__all__ = ["scrub_run_log"]


def scrub_run_log(db: Database, run_id: int | None, outputs: dict[str, Any] | None) -> int:
    """Rewrite the run's stored chunks without its sensitive output values; how many changed."""
    secrets = sensitive_values(outputs or {})
    if run_id is None or not secrets:
        return 0
    redact = Redactor(secrets)
    changed = 0
    with db.session() as session:
        for chunk in session.exec(select(RunLogChunk).where(RunLogChunk.run_id == run_id)):
            text = "\n".join(redact(line) for line in chunk.text.split("\n"))
            if text != chunk.text:
                chunk.text = text
                session.add(chunk)
                changed += 1
        session.commit()
    return changed
