"""The local stack's app log (`app.log` of an environment running the PR's own app), read for
the API and the dashboard.

The path is never taken from an engine output, which a template could point at any file
runbot may read: it is `<shared_dir>/<environment id>/app.log`, with `shared_dir` the silo's
output, and it is read only when the environment's `runbot_app_log` output names exactly that
file. Each component below the shared directory is opened with O_NOFOLLOW; only a regular file
is read, and only its last `MAX_BYTES`; the text is redacted like a run log.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

APP_LOG_OUTPUT = "runbot_app_log"
APP_LOG_FILE = "app.log"
MAX_BYTES = 64 * 1024
MAX_LINES = 200
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class AppLogUnavailable(Exception):
    """No app log to show; the message says why."""


@dataclass(frozen=True)
class AppLog:
    path: str
    text: str
    truncated: bool  # older lines were left out


def app_log_path(env_id: str, env_outputs: dict[str, Any], silo_outputs: dict[str, Any]) -> str:
    """Where the environment's app log is, decided from runbot's own facts only."""
    named = (env_outputs.get(APP_LOG_OUTPUT) or {}).get("value")
    shared = (silo_outputs.get("shared_dir") or {}).get("value")
    if not named:
        raise AppLogUnavailable("this environment runs no app of its own (no runbot_app_log)")
    if not isinstance(shared, str) or not posixpath.isabs(shared) or not _ID_RE.fullmatch(env_id):
        raise AppLogUnavailable("its silo has no shared_dir output: not a local-stack silo")
    expected = posixpath.join(posixpath.normpath(shared), env_id, APP_LOG_FILE)
    if named != expected:
        raise AppLogUnavailable(f"runbot_app_log is not {expected}; only that file is shown")
    return expected


def read_app_log(path: str, redact: Callable[[str], str]) -> AppLog:
    """The last lines of `path` (from `app_log_path`), opened without following any link."""
    shared, env_id, name = path.rsplit("/", 2)
    nofollow = os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        root = os.open(shared, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            inst = os.open(env_id, os.O_RDONLY | os.O_DIRECTORY | nofollow, dir_fd=root)
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | nofollow, dir_fd=inst)
            finally:
                os.close(inst)
        finally:
            os.close(root)
    except OSError as exc:
        raise AppLogUnavailable(f"{path} cannot be opened: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise AppLogUnavailable(f"{path} is not a regular file")
        start = max(0, info.st_size - MAX_BYTES)
        fh.seek(start)
        raw = fh.read(MAX_BYTES)
    lines = raw.decode("utf-8", "replace").splitlines()
    if start > 0 and lines:
        lines = lines[1:]  # the first one is cut
    truncated = start > 0 or len(lines) > MAX_LINES
    return AppLog(path, "\n".join(redact(line) for line in lines[-MAX_LINES:]), truncated)
