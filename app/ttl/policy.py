"""TTL arithmetic for preview environments: when they expire, when to warn, how far they extend.

Everything here is pure so the scheduler, the comment handlers and the UI agree on the same
numbers. All datetimes must be timezone-aware; naive ones are rejected loudly because mixing
them with aware values is the classic source of off-by-hours expiry bugs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = [
    "ExtendResult",
    "TTLPolicy",
    "expiry_after_activity",
    "extend",
    "humanize_until",
    "is_expired",
    "needs_warning",
    "policy_from_record",
    "policy_record",
    "sleep_due_at",
    "warning_due_at",
]


@dataclass(frozen=True)
class TTLPolicy:
    """How long an environment lives: ``idle`` after the last activity, never beyond ``max``
    after creation, with a heads-up ``warn_before`` the expiry. ``sleep_after`` (None: never)
    puts it to sleep that long after its last activity, keeping the expiry."""

    idle: timedelta = timedelta(hours=48)
    max: timedelta = timedelta(days=7)
    warn_before: timedelta = timedelta(hours=1)
    sleep_after: timedelta | None = None

    def __post_init__(self) -> None:
        if self.idle <= timedelta(0):
            raise ValueError(f"idle must be positive, got {self.idle}")
        if self.max <= timedelta(0):
            raise ValueError(f"max must be positive, got {self.max}")
        if self.warn_before < timedelta(0):
            raise ValueError(f"warn_before must not be negative, got {self.warn_before}")
        if self.sleep_after is not None and self.sleep_after <= timedelta(0):
            raise ValueError(f"sleep_after must be positive, got {self.sleep_after}")


@dataclass(frozen=True)
class ExtendResult:
    """Outcome of an extend request; ``capped`` tells the reply to explain the ``cap``."""

    expires_at: datetime
    capped: bool
    cap: datetime


def policy_from_record(record: Mapping[str, float] | None) -> TTLPolicy:
    """The policy stored with an environment (seconds per field); none stored: the defaults.
    Records written before `sleep_after` existed have no such key: they never sleep."""
    if not record:
        return TTLPolicy()
    return TTLPolicy(
        idle=timedelta(seconds=record["idle"]),
        max=timedelta(seconds=record["max"]),
        warn_before=timedelta(seconds=record["warn_before"]),
        sleep_after=record_sleep_after(record),
    )


def record_sleep_after(record: Mapping[str, float] | None) -> timedelta | None:
    """The stored ``sleep_after``, None when the record has none (or a zero/garbage one)."""
    seconds = record.get("sleep_after") if record else None
    if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds > 0:
        return timedelta(seconds=seconds)
    return None


def policy_record(policy: TTLPolicy) -> dict[str, float]:
    """What `policy_from_record` reads back: the policy in seconds, JSON-ready (no
    ``sleep_after`` key when it is off, so such records read the same as older ones)."""
    record = {
        "idle": policy.idle.total_seconds(),
        "max": policy.max.total_seconds(),
        "warn_before": policy.warn_before.total_seconds(),
    }
    if policy.sleep_after is not None:
        record["sleep_after"] = policy.sleep_after.total_seconds()
    return record


def sleep_due_at(record: Mapping[str, float] | None, last_activity_at: datetime) -> datetime | None:
    """When an environment idle since ``last_activity_at`` falls asleep; None: it never does."""
    sleep_after = record_sleep_after(record)
    if sleep_after is None:
        return None
    return _aware("last_activity_at", last_activity_at) + sleep_after


def _aware(name: str, value: datetime) -> datetime:
    """Reject naive datetimes: comparing them with aware ones fails late and confusingly."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got naive {value.isoformat()}")
    return value


def expiry_after_activity(
    policy: TTLPolicy, created_at: datetime, activity_at: datetime
) -> datetime:
    """Expiry after a push/comment: ``idle`` from the activity, but never past the max lifetime."""
    _aware("created_at", created_at)
    _aware("activity_at", activity_at)
    return min(activity_at + policy.idle, created_at + policy.max)


def warning_due_at(policy: TTLPolicy, expires_at: datetime) -> datetime:
    """When the "about to expire" comment should go out."""
    return _aware("expires_at", expires_at) - policy.warn_before


def extend(
    policy: TTLPolicy,
    created_at: datetime,
    now: datetime,
    current_expiry: datetime,
    by: timedelta,
) -> ExtendResult:
    """Push the expiry ``by`` further, counted from now if the environment already expired.

    The result never passes ``created_at + policy.max``; ``capped`` is True when that limit
    cut the request short (including when the expiry already sits at the cap). An extend never
    moves the expiry earlier, so an environment whose expiry is beyond the cap (e.g. after the
    repo lowered ``ttl.max``) keeps it and the result reports ``capped``.
    """
    _aware("created_at", created_at)
    _aware("now", now)
    _aware("current_expiry", current_expiry)
    if by <= timedelta(0):
        raise ValueError(f"extend needs a positive duration, got {by}")
    cap = created_at + policy.max
    wanted = max(current_expiry, now) + by
    if wanted <= cap:
        return ExtendResult(expires_at=wanted, capped=False, cap=cap)
    return ExtendResult(expires_at=max(cap, current_expiry), capped=True, cap=cap)


SUGGESTED_EXTENSION = timedelta(hours=4)


def suggested_extension(expires_at: datetime, max_expires_at: datetime | None) -> timedelta | None:
    """What an expiry warning suggests extending by: 4 h, or less when the max lifetime leaves
    less (whole hours, else whole minutes, else whole seconds), so the suggested command is
    never cut short. None when nothing is left to extend by."""
    if max_expires_at is None:
        return SUGGESTED_EXTENSION
    room = _aware("max_expires_at", max_expires_at) - _aware("expires_at", expires_at)
    if room >= SUGGESTED_EXTENSION:
        return SUGGESTED_EXTENSION
    unit = next(
        (size for size in (timedelta(hours=1), timedelta(minutes=1)) if room >= size),
        timedelta(seconds=1),
    )
    whole = (room // unit) * unit
    return whole if whole > timedelta(0) else None


def is_expired(expires_at: datetime, now: datetime) -> bool:
    """An environment is expired at its expiry instant, not one tick later."""
    return _aware("now", now) >= _aware("expires_at", expires_at)


def needs_warning(
    expires_at: datetime, warned_for: datetime | None, now: datetime, policy: TTLPolicy
) -> bool:
    """Whether to post the expiry warning now.

    ``warned_for`` is the expiry we last warned about: one warning per expiry value, so a
    scheduler tick that runs twice stays quiet, while a new expiry (after an extend) may warn
    again. Already-expired environments get destroyed, not warned.
    """
    _aware("expires_at", expires_at)
    _aware("now", now)
    if warned_for is not None and _aware("warned_for", warned_for) == expires_at:
        return False
    return expires_at - policy.warn_before <= now < expires_at


_HUMAN_UNITS = (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1))


def humanize_until(target: datetime, now: datetime) -> str:
    """``"in 3h 5m"``, ``"in 45s"``, ``"2d ago"``: the two largest units, for comments and UI.

    Truncates toward zero (a comment saying "in 3h" when 3h 59s remain is the safe side);
    anything under a second is ``"now"``.
    """
    delta = _aware("target", target) - _aware("now", now)
    magnitude = abs(delta)
    remaining = magnitude.days * 86_400 + magnitude.seconds
    if remaining == 0:
        return "now"
    counts: list[tuple[int, str]] = []
    for unit, size in _HUMAN_UNITS:
        count, remaining = divmod(remaining, size)
        counts.append((count, unit))
    first = next(i for i, (count, _) in enumerate(counts) if count)
    # The largest unit and the one right below it; a zero in the second slot is left out.
    text = " ".join(f"{count}{unit}" for count, unit in counts[first : first + 2] if count)
    return f"in {text}" if delta > timedelta(0) else f"{text} ago"
