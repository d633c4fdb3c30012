"""parse_duration / format_duration: the grammar shared by `/runbot extend` and `.runbot.yml`."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.ttl.durations import MAX_DURATION, DurationError, format_duration, parse_duration

MAX_SECONDS = int(MAX_DURATION.total_seconds())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("4h", timedelta(hours=4)),
        ("2d", timedelta(days=2)),
        ("1w", timedelta(weeks=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("1w2d3h4m5s", timedelta(weeks=1, days=2, hours=3, minutes=4, seconds=5)),
        ("  4h\n", timedelta(hours=4)),
        ("4H", timedelta(hours=4)),
        ("1D12h", timedelta(days=1, hours=12)),
        ("365d", MAX_DURATION),
        ("0h30m", timedelta(minutes=30)),
        ("0001h", timedelta(hours=1)),
    ],
)
def test_parse_valid(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("-4h", "negative"),
        ("0s", "must be greater than zero"),
        ("0h0m", "must be greater than zero"),
        ("4x", "unknown unit 'x'; units are s (seconds), m (minutes), h (hours), d (days), w"),
        ("4hours", "unknown unit 'hours'"),
        ("99999999w", "longer than the 365d ceiling"),
        ("366d", "longer than the 365d ceiling"),
        ("53w", "longer than the 365d ceiling"),
        ("364d24h1s", "longer than the 365d ceiling"),
        ("9" * 5000 + "s", "longer than the 365d ceiling"),
        ("garbage", "not a duration"),
        ("h", "not a duration"),
        ("4", "missing a unit"),
        ("1.5h", "whole numbers"),
        ("1,5h", "whole numbers"),
        ("1m1h", "out of order"),
        ("1h1h", "twice"),
        ("4h 30m", "spaces"),
        ("+4h", "sign"),
        ("4!h", "unexpected '!'"),
        ("4h!", "expected a number at '!'"),
        ("\uff14h", "non-ASCII"),  # fullwidth digit four
        ("\u0664h", "non-ASCII"),  # Arabic-Indic digit four: str.isdigit() would accept it
        ("4\u04bb", "non-ASCII"),  # Cyrillic shha, looks like h
    ],
)
def test_parse_rejects_with_helpful_message(text: str, fragment: str) -> None:
    with pytest.raises(DurationError) as info:
        parse_duration(text)
    assert fragment in str(info.value)


def test_duration_error_is_a_value_error() -> None:
    assert issubclass(DurationError, ValueError)


def test_parse_rejects_non_string() -> None:
    with pytest.raises(DurationError):
        parse_duration(3600)  # type: ignore[arg-type]


def test_error_message_truncates_long_input() -> None:
    with pytest.raises(DurationError) as info:
        parse_duration("x" * 10_000)
    assert len(str(info.value)) < 200


def test_leading_zeros_do_not_count_toward_digit_limit() -> None:
    assert parse_duration("0" * 10_000 + "1h") == timedelta(hours=1)


@pytest.mark.parametrize(
    ("td", "text"),
    [
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(days=2), "2d"),
        (timedelta(seconds=45), "45s"),
        (timedelta(days=14), "14d"),
        (timedelta(days=1, seconds=1), "1d1s"),
    ],
)
def test_format(td: timedelta, text: str) -> None:
    assert format_duration(td) == text


@pytest.mark.parametrize("td", [timedelta(0), timedelta(seconds=-5), timedelta(milliseconds=1500)])
def test_format_rejects_unrepresentable(td: timedelta) -> None:
    with pytest.raises(DurationError):
        format_duration(td)


@given(st.integers(min_value=1, max_value=MAX_SECONDS))
def test_format_parse_round_trip(seconds: int) -> None:
    td = timedelta(seconds=seconds)
    assert parse_duration(format_duration(td)) == td


@st.composite
def _spelled_durations(draw: st.DrawFn) -> tuple[str, int]:
    """A valid spelling (any subset of units, largest first, random case) and its seconds."""
    units = [("w", 604_800), ("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)]
    chosen = draw(st.lists(st.booleans(), min_size=5, max_size=5))
    text, total = "", 0
    for (unit, size), keep in zip(units, chosen, strict=True):
        if keep:
            count = draw(st.integers(min_value=0, max_value=MAX_SECONDS // size))
            text += f"{count}{draw(st.sampled_from([unit, unit.upper()]))}"
            total += count * size
    if not text:
        text, total = "1s", 1
    return text, total


@given(_spelled_durations())
def test_parse_accepts_grammar_or_reports_bounds(case: tuple[str, int]) -> None:
    text, total = case
    if 0 < total <= MAX_SECONDS:
        assert parse_duration(text) == timedelta(seconds=total)
    else:
        with pytest.raises(DurationError):
            parse_duration(text)


@given(st.text())
def test_parse_never_raises_anything_else_and_stays_in_bounds(text: str) -> None:
    try:
        result = parse_duration(text)
    except DurationError:
        return
    assert timedelta(0) < result <= MAX_DURATION
