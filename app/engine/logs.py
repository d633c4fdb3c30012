"""Run logs, stored in chunks as they arrive so any replica can tail a run in progress."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from sqlalchemy import func
from sqlmodel import col, select

from app.db.models import RunLogChunk
from app.db.session import Database

MAX_STORED_LOG = 5_000_000  # characters stored per run: its head and its tail
#: The first this-many characters are stored as they come (a live tail of the run sees them);
#: past them the log's last MAX_STORED_LOG - HEAD_LOG characters are kept in memory and stored
#: when the run ends, after a marker that says how much of the middle was left out.
HEAD_LOG = MAX_STORED_LOG // 2


def omitted_marker(count: int) -> str:
    """The line between a long log's head and its tail."""
    return f"… {count} bytes omitted (the log passed {MAX_STORED_LOG} characters) …"


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
        # Past the head: the newest lines (at most MAX_STORED_LOG - HEAD_LOG characters, with
        # their newlines), and the UTF-8 bytes of the lines dropped to stay under that.
        self._kept: deque[str] = deque()
        self._kept_chars = 0
        self._omitted = 0

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

    def take_chunk(self, final: bool = False) -> RunLogChunk | None:
        """The buffered lines as the next chunk, for the caller to store in its transaction.

        Once the head is full, lines are held back as the tail instead; `final` (the run is
        over) returns the omitted-marker and that tail."""
        self._last_flush = time.monotonic()
        head: list[str] = []
        for line in self._buffer:
            if not self._kept and self._stored + len(line) + 1 <= HEAD_LOG:
                head.append(line)
                self._stored += len(line) + 1
            else:
                self._keep(line)
        self._buffer = []
        text = "".join(line + "\n" for line in head)
        if final and self._kept:
            if self._omitted:
                text += omitted_marker(self._omitted) + "\n"
            text += "".join(line + "\n" for line in self._kept)
            self._kept.clear()
            self._kept_chars = 0
        if not text:
            return None
        self._seq += 1
        return RunLogChunk(run_id=self.run_id, seq=self._seq, text=text)

    def _keep(self, line: str) -> None:
        self._kept.append(line)
        self._kept_chars += len(line) + 1
        while self._kept_chars > MAX_STORED_LOG - HEAD_LOG:
            dropped = self._kept.popleft()
            self._kept_chars -= len(dropped) + 1
            self._omitted += len(dropped.encode()) + 1


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
