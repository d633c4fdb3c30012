"""What the lifecycle answers when it cannot do what was asked: callers show the message."""

from __future__ import annotations

__all__ = ["Conflict", "LifecycleError", "NotFound"]


class LifecycleError(Exception):
    """A request that cannot be honoured; the message says why and what to do instead."""


class NotFound(LifecycleError):
    pass


class Conflict(LifecycleError):
    pass
