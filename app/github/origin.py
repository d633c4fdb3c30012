"""Where a PR's environment came from (made for it, or taken from the warm pool), in words.

Issue 18: a PR that took a warm instance, or whose claim failed and got a fresh create, is
told so in its status comment and its check run. The one sentence per origin lives here, so
both say the same thing (pure: no I/O, no rows).
"""

from __future__ import annotations

from enum import StrEnum

from app.github.markdown import inline_code

__all__ = ["PoolOrigin", "pool_origin_line"]


class PoolOrigin(StrEnum):
    """The environment's relation to the warm pool, as the PR sees it."""

    #: Made for this PR (no pool, or none was ready).
    NONE = "none"
    #: Taken from the pool; this PR's values are being applied to it.
    CLAIMING = "claiming"
    #: Taken from the pool, and this PR's values were applied.
    CLAIMED = "claimed"
    #: Taken from the pool, but applying this PR's values failed: a fresh one follows.
    CLAIM_FAILED = "claim_failed"
    #: Made fresh because the warm instance this PR took failed to take its values.
    FALLBACK = "fallback"


def _pool_of(silo: str | None) -> str:
    return f"the warm pool of silo {inline_code(silo)}" if silo else "the warm pool"


def pool_origin_line(origin: PoolOrigin, silo: str | None) -> str | None:
    """The sentence (markdown, the silo escaped) saying where the environment came from;
    None when it was simply made for the PR."""
    if origin is PoolOrigin.CLAIMING:
        return (
            f"This environment was taken from {_pool_of(silo)}; "
            "only this PR's change is being applied."
        )
    if origin is PoolOrigin.CLAIMED:
        return (
            f"This environment was taken from {_pool_of(silo)}; only this PR's change was applied."
        )
    if origin is PoolOrigin.CLAIM_FAILED:
        return "The warm instance failed to take this PR's change; runbot makes a fresh one."
    if origin is PoolOrigin.FALLBACK:
        return "The warm instance failed to take this PR's change; runbot made a fresh one."
    return None
