"""`ttl.sleep_after` in `.runbot.yml`: parsed, validated against the idle TTL, stored with the
environment, and every bad value (untrusted input) refused with a sentence saying what to write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from app.github.config import parse_repo_config
from app.github.config_errors import ConfigError
from app.ttl.policy import TTLPolicy, policy_from_record, policy_record, sleep_due_at


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_repo_config(text)
    return info.value


def test_sleep_after_is_parsed_into_the_policy() -> None:
    config = parse_repo_config("stack: local\nttl: {idle: 48h, sleep_after: 2h}\n")
    assert config.ttl_policy().sleep_after == timedelta(hours=2)
    assert config.ttl_policy().idle == timedelta(hours=48)


@pytest.mark.parametrize(
    "spelling", ["", "sleep_after: off", "sleep_after: 'off'", "sleep_after: null", "sleep_after:"]
)
def test_without_sleep_after_nothing_sleeps(spelling: str) -> None:
    config = parse_repo_config(f"stack: local\nttl:\n  idle: 4h\n  {spelling}\n")
    assert config.ttl_policy().sleep_after is None


@pytest.mark.parametrize(
    ("ttl", "fragment"),
    [
        ("{sleep_after: 2x}", "unknown unit 'x'"),
        ("{sleep_after: -2h}", "negative"),
        ("{sleep_after: 0s}", "greater than zero"),
        ("{sleep_after: 7200}", "has no unit"),
        ("{sleep_after: true}", "expected a duration"),
        ("{sleep_after: [2h]}", "expected a duration"),
        ("{sleep_after: {h: 2}}", "expected a duration"),
        ("{sleep_after: 99999999w}", "365d ceiling"),
    ],
)
def test_bad_sleep_after_values_are_refused(ttl: str, fragment: str) -> None:
    error = _error(f"stack: local\nttl: {ttl}\n")
    assert error.field == "ttl.sleep_after"
    assert fragment in error.problem
    assert "sleep_after: 2h" in error.markdown()  # the example shows what to write


@pytest.mark.parametrize(
    ("others", "bad", "suggested"),
    [
        ("", "48h", "2h"),  # equal to the default idle: it would never fire
        ("idle: 4h, ", "5h", "2h"),
        ("idle: 1h, warn_before: 10m, ", "1h", "30m"),
        ("idle: 3s, max: 1h, warn_before: 1s, ", "1m", "1s"),
    ],
)
def test_sleep_after_not_shorter_than_idle_says_it_never_fires(
    others: str, bad: str, suggested: str
) -> None:
    error = _error(f"stack: local\nttl: {{{others}sleep_after: {bad}}}\n")
    assert error.field == "ttl.sleep_after"
    assert "must be shorter than idle" in error.problem
    assert "expires before it ever sleeps" in error.problem
    assert f"`sleep_after: {suggested}`" in error.problem
    # What the error suggests is itself accepted.
    fixed = parse_repo_config(f"stack: local\nttl: {{{others}sleep_after: {suggested}}}\n")
    assert fixed.ttl_policy().sleep_after is not None


def test_the_record_keeps_sleep_after_and_old_records_still_read() -> None:
    policy = TTLPolicy(sleep_after=timedelta(minutes=90))
    record = policy_record(policy)
    assert record["sleep_after"] == 5400.0
    assert policy_from_record(record) == policy
    old = {"idle": 7200.0, "max": 21600.0, "warn_before": 1800.0}  # written before issue 17
    assert policy_from_record(old).sleep_after is None
    assert "sleep_after" not in policy_record(policy_from_record(old))
    assert policy_from_record({**old, "sleep_after": "soon"}).sleep_after is None


def test_sleep_due_at_counts_from_the_last_activity() -> None:
    at = datetime(2030, 1, 1, 9, tzinfo=UTC)
    assert sleep_due_at({"sleep_after": 600.0}, at) == at + timedelta(minutes=10)
    assert sleep_due_at({"idle": 600.0}, at) is None
    assert sleep_due_at(None, at) is None
    with pytest.raises(ValueError, match="timezone-aware"):
        sleep_due_at({"sleep_after": 600.0}, datetime(2030, 1, 1, 9))


@settings(deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["idle", "max", "warn_before", "sleep_after"]),
        st.one_of(
            st.sampled_from(["30m", "1h", "2h", "48h", "7d", "off", "0s", "2x"]),
            st.integers(),
            st.booleans(),
            st.none(),
        ),
    )
)
def test_any_sleep_after_parses_in_order_or_is_a_config_error(ttl: dict[str, object]) -> None:
    try:
        config = parse_repo_config(yaml.safe_dump({"stack": "local", "ttl": ttl}))
    except ConfigError as error:
        assert error.field.startswith("ttl")
        return
    policy = config.ttl_policy()
    assert policy.sleep_after is None or policy.sleep_after < policy.idle
