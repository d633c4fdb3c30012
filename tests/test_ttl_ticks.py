"""The scheduler's ticks: pure decisions, then each tick on SQLite and PostgreSQL.

Time is passed in explicitly (`now=`), so an expiry hours away is tested in milliseconds;
the real-time version on the real local stack is in test_commands_e2e.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from app.db.models import Environment, PullRequest
from app.github.comment import MARKER
from app.lifecycle.service import ttl_policy_of
from app.lifecycle.states import Desired, Status
from app.schedule.ticks import (
    POSTING,
    due_for_reaping,
    due_for_warning,
    warning_digest,
    warning_owed,
)
from tests.apphost import REPO
from tests.commandhost import CommandHost
from tests.fakegithub.server import FakeGitHub

pytest_plugins = ["tests.fakegithub.pytest_plugin"]

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
TTL = {"idle": 7200.0, "max": 21600.0, "warn_before": 1800.0}  # 2h, 6h, 30m


def env_row(**values: object) -> Environment:
    fields: dict[str, object] = {
        "id": "pr-1-abcde",
        "silo_name": "s",
        "stack": "local",
        "repository": REPO,
        "pr_number": 1,
        "ttl": TTL,
        "created_at": T0,
        "expires_at": T0 + timedelta(hours=2),
    }
    fields.update(values)
    return Environment(**fields)  # type: ignore[arg-type]


# --- pure decisions ------------------------------------------------------------------------


def test_reaping_is_due_at_the_expiry_instant_not_before() -> None:
    env = env_row()
    assert not due_for_reaping(env, T0 + timedelta(hours=2) - timedelta(seconds=1))
    assert due_for_reaping(env, T0 + timedelta(hours=2))
    assert due_for_reaping(env_row(desired=Desired.SUSPENDED), T0 + timedelta(hours=3))


def test_gone_or_going_environments_are_not_reaped_or_warned() -> None:
    late = T0 + timedelta(hours=5)
    for env in (env_row(desired=Desired.ABSENT), env_row(status=Status.DESTROYED)):
        assert not due_for_reaping(env, late)
        assert not due_for_warning(env, T0 + timedelta(hours=1, minutes=45))
    assert not due_for_reaping(env_row(expires_at=None), late)


def test_warning_window_and_once_per_expiry() -> None:
    expiry = T0 + timedelta(hours=2)
    env = env_row()
    assert not due_for_warning(env, expiry - timedelta(minutes=31))
    assert due_for_warning(env, expiry - timedelta(minutes=30))
    assert due_for_warning(env, expiry - timedelta(seconds=1))
    assert not due_for_warning(env, expiry)  # expired: reaped, not warned
    assert not due_for_warning(env_row(warned_for=expiry), expiry - timedelta(minutes=5))
    # After an extend the new expiry may be warned about again.
    assert due_for_warning(
        env_row(warned_for=expiry, expires_at=expiry + timedelta(hours=1)),
        expiry + timedelta(minutes=40),
    )


def test_warning_digest_names_one_expiry_of_one_environment() -> None:
    expiry = T0 + timedelta(hours=2)
    digest = warning_digest("pr-1-abcde", expiry)
    assert digest == warning_digest("pr-1-abcde", expiry) and len(POSTING + digest) <= 64
    assert digest != warning_digest("pr-1-abcde", expiry + timedelta(seconds=1))
    assert digest != warning_digest("pr-1-fghij", expiry)
    assert warning_owed(None, digest) and warning_owed(warning_digest("x", expiry), digest)
    assert not warning_owed(digest, digest) and not warning_owed(POSTING + digest, digest)


# --- the ticks on a database ---------------------------------------------------------------


@pytest.fixture
async def host(
    tmp_path: Path, fake_github: FakeGitHub, database_url: str
) -> AsyncIterator[CommandHost]:
    host = CommandHost(tmp_path, fake_github, database_url)
    await host.open_pull(author="alice")
    yield host
    await host.close()


def warnings(host: CommandHost) -> list[str]:
    return [body for body in host.replies() if "expires" in body and not body.startswith(MARKER)]


def live_env(host: CommandHost) -> Environment:
    env = host.live()
    assert env is not None and env.expires_at is not None
    return env


async def test_warns_once_then_the_status_comment_shows_it(host: CommandHost) -> None:
    env = live_env(host)
    assert env.expires_at is not None
    inside = env.expires_at - timedelta(minutes=10)
    assert await host.ticks.warn_expiring(now=env.expires_at - timedelta(hours=1)) == []
    assert await host.ticks.warn_expiring(now=inside) == [env.id]
    assert await host.ticks.warn_expiring(now=inside) == []
    assert await host.ticks.warn_expiring(now=inside + timedelta(minutes=5)) == []
    [warning] = warnings(host)
    assert "@alice" in warning and "/runbot extend" in warning and env.id in warning
    assert live_env(host).warned_for == env.expires_at
    # The notifier renders the warning into the status comment.
    assert await host.workers.notifier.sync_one()
    [status] = [c["body"] for c in host.fake.comments(REPO, 1) if c["body"].startswith(MARKER)]
    assert "expires soon" in status


async def test_extend_rearms_the_warning_for_the_new_expiry(host: CommandHost) -> None:
    env = live_env(host)
    assert env.expires_at is not None
    await host.ticks.warn_expiring(now=env.expires_at - timedelta(minutes=10))
    await host.comment("/runbot extend 1h", "alice")
    extended = live_env(host)
    assert extended.expires_at is not None and extended.expires_at > env.expires_at
    assert extended.warned_for != extended.expires_at  # no longer shown as expiring
    # The warning tick finds rows by warn_at: it must have moved with the expiry.
    warn_before = ttl_policy_of(extended).warn_before
    assert env.warn_at == env.expires_at - warn_before
    assert extended.warn_at == extended.expires_at - warn_before
    assert await host.ticks.reap_expired(now=env.expires_at + timedelta(seconds=1)) == []
    assert await host.ticks.warn_expiring(now=extended.expires_at - timedelta(minutes=1)) == [
        env.id
    ]
    assert len(warnings(host)) == 2


async def test_at_the_max_lifetime_the_warning_suggests_no_extend(host: CommandHost) -> None:
    env = live_env(host)
    await host.comment("/runbot extend 4h", "alice")  # to created + 6h: the max lifetime
    capped = live_env(host)
    assert capped.expires_at == capped.created_at + ttl_policy_of(capped).max
    assert await host.ticks.warn_expiring(now=capped.expires_at - timedelta(minutes=1)) == [env.id]
    warning = warnings(host)[-1]
    assert "maximum lifetime" in warning and "/runbot extend" not in warning
    assert await host.workers.notifier.sync_one()
    [status] = [c["body"] for c in host.fake.comments(REPO, 1) if c["body"].startswith(MARKER)]
    (line,) = [line for line in status.splitlines() if line.startswith("> ⚠️")]
    assert "cannot be extended" in line


async def test_reaps_once_with_reason_expired(host: CommandHost) -> None:
    env = live_env(host)
    assert env.expires_at is not None
    assert await host.ticks.reap_expired(now=env.expires_at - timedelta(seconds=1)) == []
    assert await host.ticks.reap_expired(now=env.expires_at) == [env.id]
    assert await host.ticks.reap_expired(now=env.expires_at + timedelta(minutes=1)) == []
    reaped = host.rt.lifecycle.get_environment(env.id)
    assert (reaped.desired, reaped.reason, reaped.trigger) == (Desired.ABSENT, "expired", "ttl")
    assert reaped.generation == env.generation + 1
    # An expired environment stays gone for the same commit, resync or not.
    await host.workers.intent.reconcile_pull(host.pull().id)
    assert host.live() is None
    # A warning is never posted for an environment that is already gone.
    assert await host.ticks.warn_expiring(now=env.expires_at - timedelta(minutes=5)) == []
    assert warnings(host) == []


async def test_sleeping_environments_keep_their_expiry_and_are_reaped(host: CommandHost) -> None:
    env = live_env(host)
    assert env.expires_at is not None
    await host.comment("/runbot sleep", "alice")
    assert live_env(host).expires_at == env.expires_at
    assert await host.ticks.reap_expired(now=env.expires_at) == [env.id]


async def test_a_warning_lost_to_an_outage_is_posted_on_a_later_tick(host: CommandHost) -> None:
    env = live_env(host)
    assert env.expires_at is not None
    inside = env.expires_at - timedelta(minutes=10)
    host.fake.fail_next(1, 502, match=r"POST /repos/.*/issues/\d+/comments$")
    assert await host.ticks.warn_expiring(now=inside) == []
    assert warnings(host) == []
    assert live_env(host).warned_for == env.expires_at  # marked: the status comment shows it
    assert await host.ticks.warn_expiring(now=inside + timedelta(seconds=30)) == [env.id]
    assert await host.ticks.warn_expiring(now=inside + timedelta(seconds=60)) == []
    assert len(warnings(host)) == 1


async def test_a_warning_being_posted_elsewhere_is_not_posted_again(host: CommandHost) -> None:
    env = live_env(host)
    assert env.expires_at is not None
    digest = warning_digest(env.id, env.expires_at)
    with host.rt.db.session() as session:  # another replica claimed the post
        session.execute(update(PullRequest).values(warned_digest=POSTING + digest))
        session.commit()
    assert await host.ticks.warn_expiring(now=env.expires_at - timedelta(minutes=10)) == []
    assert warnings(host) == []


async def test_stale_leases_are_reported_and_the_dead_ones_released(host: CommandHost) -> None:
    env = live_env(host)
    now = datetime.now(UTC)
    grace = host.ticks.lease_grace
    with host.rt.db.session() as session:
        session.execute(
            update(Environment)
            .where(Environment.id == env.id)
            .values(lease_owner="dead-worker", lease_expires_at=now - grace * 2)
        )
        session.commit()
    silo = host.rt.lifecycle.list_silos()[0]
    with host.rt.db.session() as session:  # late, but maybe alive: reported, kept
        row = session.get(type(silo), silo.name)
        assert row is not None
        row.lease_owner, row.lease_expires_at = "slow-worker", now - timedelta(seconds=1)
        session.add(row)
        session.commit()
    report = await host.ticks.recover_leases(now=now)
    assert (report.environments, report.silos, report.released) == (1, 1, 1)
    assert host.rt.lifecycle.get_environment(env.id).lease_owner is None
    assert host.rt.lifecycle.get_silo(silo.name).lease_owner == "slow-worker"
    assert (await host.ticks.recover_leases(now=now)).environments == 0
