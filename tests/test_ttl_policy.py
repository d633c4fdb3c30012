"""TTL arithmetic: expiry, warnings, extend and its cap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.ttl.policy import (
    ExtendResult,
    TTLPolicy,
    expiry_after_activity,
    extend,
    humanize_until,
    is_expired,
    needs_warning,
    policy_from_record,
    policy_record,
    suggested_extension,
    warning_due_at,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
POLICY = TTLPolicy()
H = timedelta(hours=1)
D = timedelta(days=1)


def test_default_policy() -> None:
    assert (POLICY.idle, POLICY.max, POLICY.warn_before) == (48 * H, 7 * D, H)


@pytest.mark.parametrize(
    "kwargs",
    [{"idle": timedelta(0)}, {"max": -H}, {"warn_before": -timedelta(seconds=1)}],
)
def test_policy_rejects_nonsense(kwargs: dict[str, timedelta]) -> None:
    with pytest.raises(ValueError):
        TTLPolicy(**kwargs)


def test_expiry_after_activity_is_idle_from_activity() -> None:
    assert expiry_after_activity(POLICY, T0, T0 + 10 * H) == T0 + 58 * H


def test_expiry_after_activity_is_capped_by_max_lifetime() -> None:
    assert expiry_after_activity(POLICY, T0, T0 + 6 * D) == T0 + 7 * D


def test_expiry_works_across_timezones() -> None:
    plus_two = timezone(timedelta(hours=2))
    created = T0.astimezone(plus_two)
    assert expiry_after_activity(POLICY, created, T0) == T0 + 48 * H


def test_naive_datetime_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        expiry_after_activity(POLICY, T0, datetime(2024, 5, 1, 13, 0))


def test_warning_due_at() -> None:
    assert warning_due_at(POLICY, T0 + 48 * H) == T0 + 47 * H


def test_extend_adds_to_current_expiry() -> None:
    result = extend(POLICY, T0, T0 + H, T0 + 48 * H, 4 * H)
    assert result == ExtendResult(expires_at=T0 + 52 * H, capped=False, cap=T0 + 7 * D)


def test_extend_after_expiry_counts_from_now() -> None:
    now = T0 + 3 * D
    result = extend(POLICY, T0, now, T0 + 2 * D, 4 * H)
    assert result.expires_at == now + 4 * H
    assert not result.capped


def test_extend_past_max_is_capped() -> None:
    result = extend(POLICY, T0, T0 + 6 * D, T0 + 6 * D + H, 2 * D)
    assert result.expires_at == T0 + 7 * D
    assert result.capped
    assert result.cap == T0 + 7 * D


def test_extend_exactly_to_the_cap_is_not_capped() -> None:
    result = extend(POLICY, T0, T0, T0 + 6 * D, D)
    assert result.expires_at == T0 + 7 * D
    assert not result.capped


def test_extend_when_already_at_cap_is_capped_with_no_change() -> None:
    result = extend(POLICY, T0, T0 + 5 * D, T0 + 7 * D, 4 * H)
    assert result.expires_at == T0 + 7 * D
    assert result.capped


def test_extend_never_shortens_an_expiry_beyond_a_lowered_cap() -> None:
    lowered = TTLPolicy(idle=H * 2, max=D)
    result = extend(lowered, T0, T0 + H, T0 + 3 * D, H)
    assert result.expires_at == T0 + 3 * D
    assert result.capped


@pytest.mark.parametrize("by", [timedelta(0), -H])
def test_extend_rejects_non_positive_amount(by: timedelta) -> None:
    with pytest.raises(ValueError, match="positive"):
        extend(POLICY, T0, T0, T0 + H, by)


def test_is_expired_at_the_instant() -> None:
    assert not is_expired(T0, T0 - timedelta(microseconds=1))
    assert is_expired(T0, T0)
    assert is_expired(T0, T0 + H)


def test_needs_warning_before_window_is_false() -> None:
    assert not needs_warning(T0 + 2 * H, None, T0, POLICY)


def test_needs_warning_inside_window() -> None:
    assert needs_warning(T0 + 30 * timedelta(minutes=1), None, T0, POLICY)
    assert needs_warning(T0 + H, None, T0, POLICY)


def test_needs_warning_once_per_expiry_value() -> None:
    expires = T0 + 30 * timedelta(minutes=1)
    assert not needs_warning(expires, expires, T0, POLICY)


def test_needs_warning_again_for_a_new_expiry_after_extend() -> None:
    old = T0 - 3 * H
    new = T0 + 30 * timedelta(minutes=1)
    assert needs_warning(new, old, T0, POLICY)


def test_needs_warning_same_instant_in_another_timezone_counts_as_warned() -> None:
    expires = T0 + 30 * timedelta(minutes=1)
    assert not needs_warning(expires, expires.astimezone(timezone(-5 * H)), T0, POLICY)


def test_no_warning_once_expired() -> None:
    assert not needs_warning(T0, None, T0, POLICY)
    assert not needs_warning(T0 - H, None, T0, POLICY)


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (3 * H + timedelta(minutes=5), "in 3h 5m"),
        (timedelta(seconds=45), "in 45s"),
        (-2 * D, "2d ago"),
        (2 * D + timedelta(minutes=5), "in 2d"),
        (2 * D + H + timedelta(minutes=5), "in 2d 1h"),
        (H + timedelta(seconds=59), "in 1h"),
        (-timedelta(seconds=61), "1m 1s ago"),
        (timedelta(milliseconds=900), "now"),
        (timedelta(0), "now"),
    ],
)
def test_humanize_until(delta: timedelta, text: str) -> None:
    assert humanize_until(T0 + delta, T0) == text


_offsets = st.timedeltas(min_value=-30 * D, max_value=30 * D)
_policies = st.builds(
    TTLPolicy,
    idle=st.timedeltas(min_value=timedelta(seconds=1), max_value=30 * D),
    max=st.timedeltas(min_value=timedelta(seconds=1), max_value=30 * D),
    warn_before=st.timedeltas(min_value=timedelta(0), max_value=D),
)


@given(
    _policies,
    _offsets,
    _offsets,
    st.timedeltas(min_value=timedelta(microseconds=1), max_value=365 * D),
)
def test_extend_never_passes_the_cap(
    policy: TTLPolicy, now_offset: timedelta, expiry_offset: timedelta, by: timedelta
) -> None:
    now, current = T0 + now_offset, T0 + expiry_offset
    result = extend(policy, T0, now, current, by)
    assert result.cap == T0 + policy.max
    assert result.expires_at >= current  # never shortens
    if current <= result.cap:
        assert result.expires_at <= result.cap
    wanted = max(current, now) + by
    assert result.capped == (wanted > result.cap)
    if not result.capped:
        assert result.expires_at == wanted


@given(_policies, _offsets)
def test_expiry_after_activity_never_passes_max(policy: TTLPolicy, offset: timedelta) -> None:
    assert expiry_after_activity(policy, T0, T0 + offset) <= T0 + policy.max


@given(st.timedeltas(min_value=-400 * D, max_value=400 * D))
def test_humanize_direction(delta: timedelta) -> None:
    text = humanize_until(T0 + delta, T0)
    if abs(delta) < timedelta(seconds=1):
        assert text == "now"
    elif delta > timedelta(0):
        assert text.startswith("in ")
    else:
        assert text.endswith(" ago")


def test_a_stored_policy_reads_back_as_itself_and_none_means_the_defaults() -> None:
    policy = TTLPolicy(idle=timedelta(hours=2), max=timedelta(hours=6), warn_before=timedelta(0))
    assert policy_record(policy) == {"idle": 7200.0, "max": 21600.0, "warn_before": 0.0}
    assert policy_from_record(policy_record(policy)) == policy
    assert policy_from_record({}) == policy_from_record(None) == TTLPolicy()


@pytest.mark.parametrize(
    ("room", "suggested"),
    [
        (None, 4 * H),  # no max lifetime known
        (2 * D, 4 * H),
        (4 * H, 4 * H),
        (3 * H + timedelta(minutes=59), 3 * H),  # whole hours: the extend is never cut short
        (H, H),
        (timedelta(minutes=59, seconds=30), timedelta(minutes=59)),
        (timedelta(seconds=59, milliseconds=700), timedelta(seconds=59)),  # short test TTLs
        (timedelta(milliseconds=700), None),  # nothing left to extend by
        (timedelta(0), None),
        (-H, None),  # the repository lowered ttl.max below the current expiry
    ],
)
def test_the_suggested_extension_fits_in_the_max_lifetime(
    room: timedelta | None, suggested: timedelta | None
) -> None:
    expires = T0 + 10 * H
    assert suggested_extension(expires, None if room is None else expires + room) == suggested
    if suggested is not None and room is not None:
        created = expires + room - POLICY.max  # so that created + max is the limit
        result = extend(POLICY, created, T0, expires, suggested)
        assert not result.capped and result.expires_at == expires + suggested
