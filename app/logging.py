"""Process-wide logging: JSON lines for log collectors, readable text on a terminal.

Every record carries the ids that tie it to runbot's objects (`delivery_id`, `environment_id`,
`run_id`) when they are known, either passed as `extra=` or bound for a stretch of work with
`log_context(...)`; the latter is a context variable, so concurrent asyncio tasks never see each
other's ids. Imports nothing from the rest of runbot, so any room may use it.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["CONTEXT_FIELDS", "JsonFormatter", "TextFormatter", "configure_logging", "log_context"]

CONTEXT_FIELDS = ("delivery_id", "environment_id", "silo", "run_id")
_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "runbot_log_context", default=None
)
_HANDLER_MARK = "_runbot_handler"


@contextlib.contextmanager
def log_context(**ids: Any) -> Iterator[None]:
    """Attach ids to every record logged inside the block (in this task or thread only)."""
    current = dict(_context.get() or {})
    current.update({key: value for key, value in ids.items() if value is not None})
    token = _context.set(current)
    try:
        yield
    finally:
        _context.reset(token)


def _ids(record: logging.LogRecord) -> dict[str, Any]:
    found = dict(_context.get() or {})
    for name in CONTEXT_FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            found[name] = value
    return {name: found[name] for name in CONTEXT_FIELDS if name in found}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what log shippers (Loki, CloudWatch, Datadog) parse as-is."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_ids(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable, with the ids appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ids = _ids(record)
        if not ids:
            return text
        first, newline, rest = text.partition("\n")
        suffix = " ".join(f"{key}={value}" for key, value in ids.items())
        return f"{first} [{suffix}]{newline}{rest}"


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> logging.Handler:
    """Install runbot's handler on the root logger; calling again replaces it (no duplicates)."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    is_tty = hasattr(stream, "isatty") and stream.isatty()
    handler.setFormatter(TextFormatter() if is_tty else JsonFormatter())
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    logging.getLogger("runbot").setLevel(level)
    logging.getLogger("app").setLevel(level)  # root stays as is: libraries keep their levels
    return handler
