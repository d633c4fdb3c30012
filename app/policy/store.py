"""The policy a process holds: loaded at start, reloaded on SIGHUP and when the file changes.

A bad file at start is a PolicyError that stops the process. A bad new version later keeps the
policy in force and logs why, once per version: a typo in a ConfigMap must not switch every
repository to the built-in defaults, nor stop a running fleet. Readers take `current` once per
decision; a reload swaps the whole `PolicyFile`, so no reader sees half of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from app.policy.explain import Explanation, explain
from app.policy.load import PolicyError, load_policy
from app.policy.merge import effective_policy
from app.policy.model import Policy, PolicyFile

__all__ = ["POLL_SECONDS", "PolicyStore", "Reload", "ReloadResult"]

log = logging.getLogger("runbot.policy")

#: How often `watch` looks at the file's mtime (a stat; Kubernetes takes a minute or so to
#: propagate a ConfigMap change anyway).
POLL_SECONDS = 2.0

_Signature = tuple[int, int, int, int] | None


class Reload(StrEnum):
    UNCHANGED = "unchanged"  # same content: nothing to do
    LOADED = "loaded"  # a new version is in force
    KEPT = "kept"  # the new version is bad (or unreadable): the old one stays


@dataclass(frozen=True)
class ReloadResult:
    outcome: Reload
    in_force: str  # PolicyFile.describe() of the policy in force afterwards
    error: str | None = None


def _signature(path: Path) -> _Signature:
    """What changes when the file does (stat follows the symlinks a ConfigMap mount swaps)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_dev)


class PolicyStore:
    """The operator policy in force in this process."""

    def __init__(self, path: Path | None = None, loaded: PolicyFile | None = None) -> None:
        self.path = path
        self._current = loaded if loaded is not None else PolicyFile()
        self._seen = _signature(path) if path is not None else None
        #: Called (in the reloading thread or task) after a new version comes into force.
        self.listeners: list[Callable[[], None]] = []

    @classmethod
    def open(cls, path: Path | None) -> PolicyStore:
        """Load `path` (None: the built-in defaults); a bad file raises PolicyError."""
        signature = _signature(path) if path is not None else None
        store = cls(path, load_policy(path))
        store._seen = signature  # the version loaded, even if the file moved on since
        return store

    @property
    def current(self) -> PolicyFile:
        return self._current

    def policy_for(self, repository: str) -> Policy:
        """The policy in force for owner/name."""
        return effective_policy(self._current, repository)

    def explain(self, repository: str) -> Explanation:
        return explain(self._current, repository)

    def reload(self) -> ReloadResult:
        """Read the file again now (SIGHUP); keep the policy in force if the new one is bad."""
        if self.path is None:
            return ReloadResult(Reload.UNCHANGED, self._current.describe())
        self._seen = _signature(self.path)
        try:
            loaded = load_policy(self.path)
        except PolicyError as exc:
            log.error("policy not reloaded, keeping %s: %s", self._current.describe(), exc)
            return ReloadResult(Reload.KEPT, self._current.describe(), str(exc))
        if loaded.digest == self._current.digest:
            log.info("policy unchanged: %s", self._current.describe())
            return ReloadResult(Reload.UNCHANGED, self._current.describe())
        previous = self._current.describe()
        self._current = loaded
        log.info("policy reloaded: %s (was %s)", loaded.describe(), previous)
        for listener in self.listeners:
            try:
                listener()
            except Exception:  # a listener must not undo the reload
                log.exception("policy reload listener failed")
        return ReloadResult(Reload.LOADED, loaded.describe())

    def reload_if_changed(self) -> ReloadResult | None:
        """Reload when the file's stat changed since the last look; None when it did not."""
        if self.path is None or _signature(self.path) == self._seen:
            return None
        return self.reload()

    async def watch(self, stop: asyncio.Event, interval: float = POLL_SECONDS) -> None:
        """Look at the file every `interval` seconds until `stop` is set."""
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
            if stop.is_set():
                return
            try:
                self.reload_if_changed()
            except Exception:  # never let the watcher die: the next change must still load
                log.exception("policy watch failed")
