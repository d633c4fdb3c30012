"""Run logs, stored in chunks as they arrive so any replica can tail a run in progress."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import func
from sqlmodel import col, select

from app.db.models import RunLogChunk
from app.db.session import Database

MAX_STORED_LOG = 5_000_000  # characters per run; beyond this only the tail matters


class RunLogWriter:
    """Buffers lines and writes them as chunks, at most every `flush_interval` seconds."""

    def __init__(
        self,
        db: Database,
        run_id: int,
        echo: Callable[[str], None] | None = None,
        flush_interval: float = 0.5,
        max_lines: int = 200,
    ) -> None:
        self.db = db
        self.run_id = run_id
        self.echo = echo
        self.flush_interval = flush_interval
        self.max_lines = max_lines
        self._buffer: list[str] = []
        self._seq = 0
        self._stored = 0
        self._last_flush = time.monotonic()
        self.tail: list[str] = []

    def line(self, text: str) -> None:
        self._buffer.append(text)
        self.tail = [*self.tail, text][-40:]
        if self.echo:
            self.echo(text)
        if (
            len(self._buffer) >= self.max_lines
            or time.monotonic() - self._last_flush >= self.flush_interval
        ):
            self.flush()

    def flush(self) -> None:
        chunk = self.take_chunk()
        if chunk is not None:
            with self.db.session() as session:
                session.add(chunk)
                session.commit()

    def take_chunk(self) -> RunLogChunk | None:
        """The buffered lines as the next chunk, for the caller to store in its transaction."""
        self._last_flush = time.monotonic()
        if not self._buffer:
            return None
        text = "\n".join(self._buffer) + "\n"
        self._buffer = []
        if self._stored > MAX_STORED_LOG:
            return None
        self._stored += len(text)
        self._seq += 1
        return RunLogChunk(run_id=self.run_id, seq=self._seq, text=text)


def read_log(db: Database, run_id: int, after: int = 0) -> tuple[str, int]:
    """Log text after chunk `after`, and the cursor to pass next time (for tailing)."""
    with db.session() as session:
        chunks = list(
            session.exec(
                select(RunLogChunk)
                .where(RunLogChunk.run_id == run_id, RunLogChunk.seq > after)
                .order_by(col(RunLogChunk.seq))
            )
        )
    if not chunks:
        return "", after
    return "".join(chunk.text for chunk in chunks), chunks[-1].seq


def log_size(db: Database, run_id: int) -> int:
    with db.session() as session:
        return int(
            session.exec(
                select(func.count()).select_from(RunLogChunk).where(RunLogChunk.run_id == run_id)
            ).one()
        )
