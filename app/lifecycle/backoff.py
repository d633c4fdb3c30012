"""When a failed destroy is tried again: capped exponential backoff with jitter (pure)."""

from __future__ import annotations


def destroy_retry_delay(attempt: int, base: float, cap: float, spread: float) -> float:
    """Seconds to wait before retrying after the `attempt`-th failure in a row (1, 2, ...).

    The window doubles from `base` on each failure up to `cap`; the delay is its upper half
    scaled by `spread` (a draw in [0, 1)): "equal jitter", so replicas whose destroys failed
    together spread out, yet no retry comes sooner than half the window.
    """
    if attempt < 1:
        raise ValueError("attempt counts failures and starts at 1")
    if not 0.0 <= spread < 1.0:
        raise ValueError("spread is a draw in [0, 1)")
    # 2 ** 60 already dwarfs any cap; bounding the exponent keeps the float finite.
    window = min(cap, base * 2.0 ** min(attempt - 1, 60))
    return window / 2 + window / 2 * spread
