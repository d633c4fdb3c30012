"""The layered lifecycle on the real local stack, embedded engine, SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from app.engine.backends import schema_name
from app.lifecycle.states import Status
from app.runtime import build_runtime
from tests.conftest import make_settings
from tests.helpers import converge_sync, env_settled, fetch, processes_matching, refuses, silo_ready

pytestmark = pytest.mark.engine


def state_schemas(database_url: str) -> set[str]:
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT schema_name FROM information_schema.schemata"
            " WHERE schema_name LIKE 'runbot_state_%'"
        ).fetchall()
    return {row[0] for row in rows}


def test_create_update_destroy_on_local_stack(
    tmp_path: Path, database_url: str, port_base: int
) -> None:
    rt = build_runtime(make_settings(tmp_path, database_url))
    rt.lifecycle.create_silo("local-default", "local", {"port_base": port_base})
    converge_sync(rt, silo_ready(rt, "local-default"))
    silo = rt.lifecycle.get_silo("local-default")
    assert silo.status == Status.READY
    assert silo.capacity is not None and silo.capacity >= 20

    env = rt.lifecycle.create_environment(
        "local-default", "octo/app", 42, "a1b2c3d", "feature/x", "alice"
    )
    assert env.id.startswith("pr-42-")
    converge_sync(rt, env_settled(rt, env.id))
    env = rt.lifecycle.get_environment(env.id)
    assert env.status == Status.READY, env.reason
    assert env.url == f"http://127.0.0.1:{port_base - 1}/{env.id}/"  # the silo's ingress
    assert env.outputs["direct_url"]["value"] == f"http://127.0.0.1:{port_base + env.slot}/"
    page = fetch(env.url).text
    assert "a1b2c3d" in page and "octo/app" in page and env.id in page
    assert len(processes_matching(env.id)) == 1
    if rt.db.is_postgres:  # state lives in the pg backend: one schema per target
        assert state_schemas(database_url) == {
            schema_name("silo-local-default"),
            schema_name(f"env-{env.id}"),
        }
        assert not (tmp_path / "data" / "state").exists()

    rt.lifecycle.update_environment(env.id, head_sha="d4e5f60")
    converge_sync(rt, env_settled(rt, env.id))
    env = rt.lifecycle.get_environment(env.id)
    assert env.status == Status.READY and env.deployed_sha == "d4e5f60"
    page = fetch(env.url).text
    assert "d4e5f60" in page and "a1b2c3d" not in page
    assert len(processes_matching(env.id)) == 1

    url = env.url
    rt.lifecycle.destroy_environment(env.id)
    converge_sync(rt, env_settled(rt, env.id))
    env = rt.lifecycle.get_environment(env.id)
    assert env.status == Status.DESTROYED and env.slot is None and env.url is None
    assert refuses(url)
    assert processes_matching(env.id) == []
    shared = Path(silo.outputs["shared_dir"]["value"])
    assert not (shared / env.id).exists()

    rt.lifecycle.destroy_silo("local-default")
    converge_sync(rt, silo_ready(rt, "local-default"))
    assert rt.lifecycle.get_silo("local-default").status == Status.DESTROYED
    assert not shared.exists()
    if rt.db.is_postgres:
        assert state_schemas(database_url) == set()
    # Nothing of the targets' engine data is left behind either.
    assert not list((tmp_path / "data" / "state").glob("*.tfstate"))
    assert not any((tmp_path / "data" / "tfdata").iterdir())


def test_two_silos_slots_queue_and_reuse(tmp_path: Path, port_base: int) -> None:
    rt = build_runtime(make_settings(tmp_path, max_concurrent_runs=4))
    rt.lifecycle.create_silo("small", "local", {"port_base": port_base, "capacity": 2})
    rt.lifecycle.create_silo("other", "local", {"port_base": port_base + 10, "capacity": 3})
    converge_sync(rt, lambda: silo_ready(rt, "small")() and silo_ready(rt, "other")())

    small = [rt.lifecycle.create_environment("small", "octo/app", n, "abc1234") for n in (1, 2, 3)]
    other = [rt.lifecycle.create_environment("other", "octo/app", n, "abc1234") for n in (4, 5)]

    def first_two_ready_third_queued() -> bool:
        states = [rt.lifecycle.get_environment(e.id).status for e in small + other]
        return states.count(Status.READY) == 4 and states.count(Status.QUEUED) == 1

    converge_sync(rt, first_two_ready_third_queued)
    rows = [rt.lifecycle.get_environment(e.id) for e in small + other]
    queued = next(r for r in rows if r.status == Status.QUEUED)
    assert queued.silo_name == "small"
    assert "full (2/2" in (queued.reason or "")
    ready_small = [r for r in rows if r.silo_name == "small" and r.status == Status.READY]
    assert sorted(r.slot for r in ready_small) == [0, 1]
    assert sorted(r.slot for r in rows if r.silo_name == "other") == [0, 1]
    urls = {r.url for r in rows if r.url}
    assert len(urls) == 4  # distinct ports across silos
    for row in rows:
        if row.url:
            assert row.id in fetch(row.url).text

    # Freeing a slot lets the queued environment start, reusing that slot.
    freed = ready_small[0]
    rt.lifecycle.destroy_environment(freed.id)
    converge_sync(rt, lambda: rt.lifecycle.get_environment(queued.id).status == Status.READY)
    started = rt.lifecycle.get_environment(queued.id)
    assert started.slot == freed.slot
    assert queued.id in fetch(started.url or "").text

    rt.lifecycle.destroy_silo("small", force=True)
    rt.lifecycle.destroy_silo("other", force=True)
    converge_sync(
        rt,
        lambda: all(
            rt.lifecycle.get_silo(n).status == Status.DESTROYED for n in ("small", "other")
        ),
    )
    for row in rows:
        assert processes_matching(row.id) == []
        assert rt.lifecycle.get_environment(row.id).status == Status.DESTROYED
