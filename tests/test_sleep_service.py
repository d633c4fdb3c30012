"""Sleep and wake bookkeeping (`put_to_sleep`, `wake_up`, `record_traffic`, `set_suspended`)
on SQLite and PostgreSQL, including callers racing on one row from several threads."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app import clock
from app.db.models import Environment, PullRequest
from app.db.session import Database
from app.lifecycle.service import Lifecycle, pull_id
from app.lifecycle.sleep import TRAFFIC_SKEW
from app.lifecycle.states import Desired, Status
from app.runtime import Runtime, build_runtime
from app.ttl.policy import TTLPolicy
from tests.conftest import make_settings

T0 = datetime(2030, 3, 4, 9, 0, tzinfo=UTC)
POLICY = TTLPolicy(idle=timedelta(hours=48), max=timedelta(days=7), sleep_after=timedelta(hours=2))


@pytest.fixture
def manual(manual_clock: clock.ManualClock) -> clock.ManualClock:
    assert manual_clock.now() == T0
    return manual_clock


@pytest.fixture
def rt(tmp_path: Path, database_url: str, manual: clock.ManualClock) -> Iterator[Runtime]:
    runtime = build_runtime(make_settings(tmp_path, database_url))
    runtime.lifecycle.create_silo("s", "local", {"port_base": 42000, "capacity": 5})
    try:
        yield runtime
    finally:
        runtime.db.dispose()


def ready_env(rt: Runtime, number: int = 1, policy: TTLPolicy = POLICY) -> Environment:
    """An environment as a worker's apply leaves it: ready, observed up to date, with its PR."""
    env = rt.lifecycle.create_environment("s", "acme/app", number, "abc1234", ttl=policy, now=T0)
    with rt.db.session() as session:
        session.add(
            PullRequest(id=pull_id("acme/app", number), repository="acme/app", number=number)
        )
        row = session.get(Environment, env.id)
        assert row is not None
        row.status, row.observed_generation = Status.READY, row.generation
        session.add(row)
        session.commit()
        session.refresh(row)
        return row


def pull_version(rt: Runtime, number: int = 1) -> int:
    with rt.db.session() as session:
        pull = session.get(PullRequest, pull_id("acme/app", number))
        assert pull is not None
        return pull.sync_version


def test_put_to_sleep_records_why_and_since_when_and_keeps_the_expiry(rt: Runtime) -> None:
    env = ready_env(rt)
    assert env.sleep_due_at == T0 + timedelta(hours=2)
    before = pull_version(rt)
    now = T0 + timedelta(hours=3)
    assert rt.lifecycle.put_to_sleep(env.id, "idle", now, idle_before=now - timedelta(hours=2))
    row = rt.lifecycle.get_environment(env.id)
    assert (row.desired, row.slept_at, row.sleep_reason) == (Desired.SUSPENDED, now, "idle")
    assert row.generation == env.generation + 1 and row.sync_version == env.sync_version + 1
    assert row.expires_at == env.expires_at and row.warn_at == env.warn_at  # sleep keeps it
    assert row.trigger == "idle"
    assert pull_version(rt) == before + 1  # the status comment will say it sleeps
    # Asleep already: a second call changes nothing.
    assert not rt.lifecycle.put_to_sleep(env.id, "budget", now + timedelta(hours=1))
    assert rt.lifecycle.get_environment(env.id).sleep_reason == "idle"


def test_put_to_sleep_refuses_what_is_not_ready_or_not_idle(rt: Runtime) -> None:
    env = ready_env(rt)
    now = T0 + timedelta(hours=3)
    # Activity after the caller's cut-off keeps it awake.
    assert not rt.lifecycle.put_to_sleep(env.id, "idle", now, idle_before=T0)
    assert not rt.lifecycle.put_to_sleep("pr-9-nopes", "idle", now)  # unknown id
    with pytest.raises(ValueError, match="sleep reason must be one of"):
        rt.lifecycle.put_to_sleep(env.id, "bored", now)
    with rt.db.session() as session:
        row = session.get(Environment, env.id)
        assert row is not None
        row.status = Status.UPDATING
        session.add(row)
        session.commit()
    assert not rt.lifecycle.put_to_sleep(env.id, "budget", now)
    rt.lifecycle.destroy_environment(env.id)
    assert not rt.lifecycle.put_to_sleep(env.id, "budget", now)
    assert rt.lifecycle.get_environment(env.id).slept_at is None


def test_wake_up_is_activity_and_a_no_op_when_awake(rt: Runtime) -> None:
    env = ready_env(rt)
    assert not rt.lifecycle.wake_up(env.id, "ingress", T0)  # not asleep
    assert rt.lifecycle.get_environment(env.id).generation == env.generation
    slept = T0 + timedelta(hours=2)
    assert rt.lifecycle.put_to_sleep(env.id, "idle", slept)
    woke = T0 + timedelta(hours=30)
    assert rt.lifecycle.wake_up(env.id, "ingress", woke)
    row = rt.lifecycle.get_environment(env.id)
    assert (row.desired, row.slept_at, row.sleep_reason) == (Desired.PRESENT, None, None)
    assert row.last_activity_at == woke and row.trigger == "ingress"
    assert row.generation == env.generation + 2 and row.sync_version == env.sync_version + 2
    assert row.expires_at == woke + POLICY.idle  # activity moves the expiry, as a push does
    assert row.warn_at == row.expires_at - POLICY.warn_before
    assert row.sleep_due_at == woke + timedelta(hours=2)  # the next sleep counts from here
    assert not rt.lifecycle.wake_up(env.id, "ingress", woke)


def test_record_traffic_moves_activity_forward_only(rt: Runtime, manual: clock.ManualClock) -> None:
    a, b = ready_env(rt, 1), ready_env(rt, 2)
    later = manual.advance(timedelta(minutes=30))
    seen = {a.id: later, b.id: T0 - timedelta(hours=1), "pr-404-ghost": later}
    assert rt.lifecycle.record_traffic(seen) == 1  # b's time is older; the ghost is unknown
    row = rt.lifecycle.get_environment(a.id)
    assert row.last_activity_at == later and row.sleep_due_at == later + timedelta(hours=2)
    assert row.expires_at == a.expires_at and row.sync_version == a.sync_version  # no comment
    assert rt.lifecycle.get_environment(b.id).last_activity_at == T0
    assert rt.lifecycle.record_traffic({a.id: later}) == 0  # the same time again: nothing moves
    assert rt.lifecycle.record_traffic({}) == 0


def test_record_traffic_clamps_a_clock_running_ahead_and_refuses_naive_times(
    rt: Runtime,
) -> None:
    env = ready_env(rt)
    assert rt.lifecycle.record_traffic({env.id: T0 + timedelta(days=30)}) == 1
    assert rt.lifecycle.get_environment(env.id).last_activity_at == T0 + TRAFFIC_SKEW
    with pytest.raises(ValueError, match="timezone-aware"):
        rt.lifecycle.record_traffic({env.id: datetime(2030, 3, 4, 10, 0)})


def test_record_traffic_ignores_destroyed_environments(rt: Runtime) -> None:
    env = ready_env(rt)
    rt.lifecycle.destroy_environment(env.id)
    assert rt.lifecycle.record_traffic({env.id: T0 + timedelta(minutes=5)}) == 0


def test_commands_go_through_the_same_bookkeeping(rt: Runtime, manual: clock.ManualClock) -> None:
    env = ready_env(rt)

    manual.advance(timedelta(hours=1))
    row = rt.lifecycle.set_suspended(env.id, True, trigger="comment")
    assert (row.desired, row.sleep_reason, row.slept_at) == (
        Desired.SUSPENDED,
        "command",
        T0 + timedelta(hours=1),
    )
    assert row.trigger == "comment" and row.expires_at == env.expires_at
    again = rt.lifecycle.set_suspended(env.id, True, trigger="comment")
    assert again.generation == row.generation  # asleep already: no second apply
    manual.advance(timedelta(hours=1))
    awake = rt.lifecycle.set_suspended(env.id, False, trigger="dashboard")
    assert (awake.desired, awake.sleep_reason, awake.slept_at) == (Desired.PRESENT, None, None)
    assert awake.last_activity_at == T0 + timedelta(hours=2)
    manual.advance(timedelta(minutes=5))
    # Waking what is awake re-applies nothing, but counts as activity.
    still = rt.lifecycle.set_suspended(env.id, False, trigger="dashboard")
    assert still.generation == awake.generation
    assert still.last_activity_at == T0 + timedelta(hours=2, minutes=5)


def race(replicas: list[Lifecycle], call: Callable[[Lifecycle], bool]) -> list[bool]:
    """Run ``call`` once per replica, from one thread each, released at once; the answers."""
    barrier = threading.Barrier(len(replicas))
    answers: list[bool] = []
    lock = threading.Lock()

    def one(replica: Lifecycle) -> None:
        barrier.wait()
        answer = call(replica)
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=one, args=(replica,)) for replica in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return answers


def sleep_then_wake(replicas: list[Lifecycle], env_id: str, now: datetime) -> None:
    slept = race(replicas, lambda replica: replica.put_to_sleep(env_id, "idle", now, now))
    assert sorted(slept) == [False, False, False, True]
    woke = race(replicas, lambda replica: replica.wake_up(env_id, "ingress", now))
    assert sorted(woke) == [False, False, False, True]


def test_racing_sleepers_and_wakers_exactly_one_wins(rt: Runtime) -> None:
    env = ready_env(rt)
    # Separate Lifecycles, each with its own engine and connections, as on separate replicas.
    replicas = [Lifecycle(Database(rt.db.url), rt.catalog) for _ in range(4)]
    try:
        for hours in (3, 6, 9):  # each sleep and each wake is won by exactly one caller
            sleep_then_wake(replicas, env.id, T0 + timedelta(hours=hours))
        row = rt.lifecycle.get_environment(env.id)
        assert row.generation == env.generation + 6  # three sleeps and three wakes, no more
    finally:
        for replica in replicas:
            replica.db.dispose()
