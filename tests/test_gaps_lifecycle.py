"""Silo update re-applies instances; declared backends get per-target keys; SQLite: one process."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from app.db.models import Environment, Silo, utcnow
from app.engine.backends import backend_for, schema_name
from app.lifecycle.lease import Claim
from app.lifecycle.reconcile import Reconciler
from app.lifecycle.states import Desired, Status
from app.runtime import build_runtime
from app.workers import SingleProcessError, Workers, acquire_sqlite_lock
from tests.conftest import make_settings
from tests.helpers import converge_sync, env_settled, fail_every_silo, fetch, silo_ready


@pytest.mark.engine
def test_silo_update_with_new_vars_reapplies_it_and_its_instances(
    tmp_path: Path, port_base: int
) -> None:
    rt = build_runtime(make_settings(tmp_path))
    rt.lifecycle.create_silo("s", "local", {"port_base": port_base, "capacity": 3})
    converge_sync(rt, silo_ready(rt, "s"))
    env = rt.lifecycle.create_environment("s", "octo/app", 1, "abc1234")
    converge_sync(rt, env_settled(rt, env.id))
    old_url = rt.lifecycle.get_environment(env.id).url

    rt.lifecycle.update_silo("s", {"port_base": port_base + 5, "capacity": 4})
    converge_sync(
        rt,
        lambda: (
            silo_ready(rt, "s")()
            and env_settled(rt, env.id)()
            and rt.lifecycle.get_environment(env.id).url != old_url
        ),
    )
    silo = rt.lifecycle.get_silo("s")
    assert silo.status == Status.READY and silo.capacity == 4
    assert silo.outputs["port_base"]["value"] == port_base + 5
    moved = rt.lifecycle.get_environment(env.id)
    assert (
        moved.status == Status.READY and moved.url == f"http://127.0.0.1:{port_base + 4}/{env.id}/"
    )
    assert moved.outputs["direct_url"]["value"] == f"http://127.0.0.1:{port_base + 5}/"
    assert env.id in fetch(moved.url).text  # the instance followed the silo's new outputs
    rt.lifecycle.destroy_silo("s", force=True)
    converge_sync(rt, silo_ready(rt, "s"))


@pytest.mark.parametrize(
    ("declared", "expected"),
    [
        ("s3", "-backend-config=key=runbot/env-pr-1-abcde.tfstate"),
        ("gcs", "-backend-config=prefix=runbot/env-pr-1-abcde"),
        ("azurerm", "-backend-config=key=runbot/env-pr-1-abcde.tfstate"),
        ("pg", f"-backend-config=schema_name={schema_name('env-pr-1-abcde')}"),
    ],
)
def test_a_template_with_its_own_backend_gets_a_per_target_key(
    tmp_path: Path, declared: str, expected: str
) -> None:
    backend = backend_for("env-pr-1-abcde", declared, tmp_path, None)
    assert backend.override_file is None  # the template's own backend block stays in charge
    assert backend.config_args == [expected]


def test_sqlite_allows_one_runbot_process(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    first = acquire_sqlite_lock(settings)
    assert first is not None
    with pytest.raises(SingleProcessError, match="PostgreSQL"):
        acquire_sqlite_lock(settings)
    first.close()
    again = acquire_sqlite_lock(settings)  # free once the first process is gone
    assert again is not None
    again.close()


def test_postgres_needs_no_process_lock(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "postgresql+psycopg://root@127.0.0.1:5432/whatever")
    assert acquire_sqlite_lock(settings) is None


async def test_a_reap_between_claim_and_converge_keeps_its_reason(tmp_path: Path) -> None:
    """Another replica's reaper marks an environment expired after this worker read it and
    found its silo unusable, before the worker saves its "waiting" note: that note must not
    overwrite "expired" (two replicas under load hit it, tests/test_ticks_replicas.py), and
    the new desired state is handled at once rather than after the waiting delay."""
    rt = build_runtime(make_settings(tmp_path))

    class ReapedMeanwhile(Reconciler):
        def release_later(self, claim: Claim, delay: float, status: str, reason: str) -> None:
            # The other replica, between this worker's read and its save.
            assert rt.lifecycle.reap_if_expired(claim.id, utcnow() + timedelta(days=365))
            super().release_later(claim, delay, status, reason)

    try:
        rt.lifecycle.create_silo("broken", "local", {})
        fail_every_silo(rt)
        env = rt.lifecycle.create_environment("broken", "acme/app", 7, "a" * 40, author="al")
        reconciler = ReapedMeanwhile(rt.db, rt.catalog, rt.runner, rt.settings.data_dir)
        claim = reconciler.claim()
        assert claim is not None and claim.id == env.id
        await reconciler._converge(claim)
        row = rt.lifecycle.get_environment(env.id)
        assert (row.desired, row.reason, row.trigger) == (Desired.ABSENT, "expired", "ttl")
        assert row.next_attempt_at is None and row.lease_owner is None
        again = rt.reconciler().claim()  # claimable now, not after the waiting delay
        assert again is not None and again.id == env.id
        assert again.generation == row.generation
    finally:
        rt.db.dispose()


def test_claims_respect_the_run_cap_and_wake_at_the_earliest_delay(
    tmp_path: Path, database_url: str
) -> None:
    """Claiming counts active runs in one statement and reads candidates as (key, generation)."""
    rt = build_runtime(make_settings(tmp_path, database_url))
    worker = Reconciler(
        rt.db, rt.catalog, rt.runner, tmp_path, worker_id="w1", max_concurrent_runs=2
    )
    assert worker.claim() is None and worker._next_due() is None
    rt.lifecycle.create_silo("s", "local", {"port_base": 42000, "capacity": 3})
    envs = {rt.lifecycle.create_environment("s", "octo/app", n, "abc1234").id for n in (1, 2, 3)}

    assert worker.claim() == Claim(kind="silo", id="s", generation=1)  # silos first
    claimed = worker.claim()
    assert claimed is not None and claimed.kind == "environment" and claimed.id in envs
    with rt.db.session() as session:
        env = session.get(Environment, claimed.id)
        assert env is not None and claimed.generation == env.generation
    assert worker.claim() is None  # two leases held: the cap of 2 is reached

    # Both released with retry delays: 30 s for the silo, 10 s for the environment.
    with rt.db.session() as session:
        for row, delay in (
            (session.get(Silo, "s"), 30),
            (session.get(Environment, claimed.id), 10),
        ):
            assert row is not None
            row.lease_owner, row.lease_expires_at = None, None
            row.next_attempt_at = utcnow() + timedelta(seconds=delay)
            session.add(row)
        session.commit()
    due = worker._next_due()
    assert due is not None and 9.0 < due <= 10.1
    # The two other environments are claimable now; the delayed ones are not.
    taken = [worker.claim(), worker.claim()]
    assert {c.id for c in taken if c is not None} == envs - {claimed.id}
    rt.db.dispose()


async def test_a_change_wakes_the_notifier_only_after_the_reconciler_has_claimed(
    tmp_path: Path,
) -> None:
    """The reconciler and the notifier share one event loop, and a new run's engine start is
    the critical path: the notifier's pass (a claim, a render, usually a hold) goes after."""
    rt = build_runtime(make_settings(tmp_path))
    workers = Workers.build(rt)
    workers._intent_changed()
    assert workers.reconciler.wakeup.is_set() and not workers.notifier.wakeup.is_set()

    stop = asyncio.Event()
    worker = asyncio.create_task(workers.reconciler.run(stop, poll_interval=30))
    await asyncio.wait_for(workers.notifier.wakeup.wait(), 5)  # woken by the claiming pass
    assert not workers.reconciler.wakeup.is_set()  # which had consumed its own wake-up first
    stop.set()
    await worker
    await workers.gateway.aclose()
    rt.db.dispose()
