"""The orphan sweep: state, targets and local-stack servers compared, listed and destroyed.

The comparison is pure (`app.lifecycle.orphans`) and crossed here with small fact sets; the
three ways an orphan is made (issue 20) run for real: the embedded engine on the local stack,
real SQLite and PostgreSQL, real server processes, `runbot` through its typer entry point, and
a real `runbot env create` process killed with SIGKILL during its apply.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from alembic import command
from sqlalchemy import delete, inspect, text
from sqlmodel import select
from typer.testing import CliRunner

from app.cli.main import cli
from app.db.models import Environment, Run, Silo, TargetRecord
from app.db.session import Database
from app.engine.backends import local_state_file, schema_name
from app.lifecycle.orphans import (
    FoundProcess,
    FoundState,
    Known,
    Orphan,
    OrphanKind,
    Remedy,
    find_orphans,
)
from app.lifecycle.sweep import ingress_silo, server_instance
from app.runtime import Runtime, build_runtime
from tests.apphost import AppServer, app_settings
from tests.conftest import TEMPLATES, make_settings
from tests.fakegithub.server import FakeGitHub
from tests.helpers import (
    converge_sync,
    env_settled,
    processes_matching,
    silo_ready,
    wait_for,
)

pytest_plugins = ["tests.fakegithub.pytest_plugin"]


# ----- the pure comparison -------------------------------------------------------------------


def row(name: str, *, live: bool = True, applied: bool = True, own: bool = True) -> Known:
    kind = "silo" if name.startswith("silo-") else "environment"
    return Known(name, kind, name.split("-", 1)[1], live, applied, own)


def state(target: str | None, resources: int = 2) -> FoundState:
    return FoundState(f"/state/{target}", target, resources)


def kinds(orphans: list[Orphan]) -> list[tuple[OrphanKind, str, Remedy]]:
    return [(o.kind, o.target, o.remedy) for o in orphans]


def test_a_live_target_with_its_state_and_server_is_no_orphan() -> None:
    found = find_orphans(
        [state("silo-a"), state("env-pr-1-x")],
        [FoundProcess(10, "pr-1-x")],
        [row("silo-a"), row("env-pr-1-x")],
        ["silo-a", "env-pr-1-x"],
    )
    assert found == []


@pytest.mark.parametrize("present", [False, True], ids=["row gone", "row destroyed"])
@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "unrecorded"])
def test_state_with_resources_and_no_live_target(present: bool, recorded: bool) -> None:
    rows = [row("env-pr-1-x", live=False, applied=False)] if present else []
    found = find_orphans([state("env-pr-1-x")], [], rows, ["env-pr-1-x"] if recorded else [])
    remedy = Remedy.ENGINE_DESTROY if recorded else Remedy.BY_HAND
    assert kinds(found) == [(OrphanKind.STATE_WITHOUT_TARGET, "env-pr-1-x", remedy)]
    assert found[0].resources == 2


def test_an_emptied_state_is_no_orphan() -> None:
    assert find_orphans([state("env-pr-1-x", resources=0)], [], [], ["env-pr-1-x"]) == []


def test_an_unknown_schema_is_listed_by_its_name_for_the_operator() -> None:
    found = find_orphans([FoundState("runbot_state_x_abc", None, 3)], [], [], [])
    assert kinds(found) == [(OrphanKind.STATE_WITHOUT_TARGET, "runbot_state_x_abc", Remedy.BY_HAND)]


@pytest.mark.parametrize(
    ("known", "orphan"),
    [
        (row("env-pr-1-x"), True),
        (row("env-pr-1-x", applied=False), False),  # still being created: not an orphan
        (row("env-pr-1-x", own=False), False),  # its own backend: the sweep cannot see it
        (row("env-pr-1-x", live=False, applied=False), False),
    ],
    ids=["applied", "not applied yet", "own backend", "destroyed"],
)
def test_a_target_whose_state_vanished(known: Known, orphan: bool) -> None:
    found = find_orphans([state("env-pr-1-x", resources=0)], [], [known], [known.name])
    expected = [(OrphanKind.TARGET_WITHOUT_STATE, "env-pr-1-x", Remedy.LIFECYCLE_DESTROY)]
    assert kinds(found) == (expected if orphan else [])


def test_a_server_of_no_live_environment() -> None:
    found = find_orphans(
        [],
        [FoundProcess(7, "pr-1-x"), FoundProcess(8, "pr-2-y")],
        [row("env-pr-2-y", applied=False)],
        [],
    )
    assert kinds(found) == [(OrphanKind.PROCESS_WITHOUT_TARGET, "env-pr-1-x", Remedy.STOP_PROCESS)]
    assert found[0].pid == 7


def test_an_ingress_of_no_live_silo_is_an_orphan_and_a_live_ones_is_not() -> None:
    found = find_orphans(
        [state("silo-here")],
        [FoundProcess(7, "gone", "silo-gone"), FoundProcess(8, "here", "silo-here")],
        [row("silo-here")],
        ["silo-here"],
    )
    assert kinds(found) == [(OrphanKind.PROCESS_WITHOUT_TARGET, "silo-gone", Remedy.STOP_PROCESS)]
    assert found[0].pid == 7


def test_only_ingresses_started_from_this_data_dir_count(tmp_path: Path) -> None:
    shared = tmp_path / "workspace" / "silo-a" / "shared"
    argv = ["python3", str(shared / "ingress.py"), "serve", "--silo", "a", "--dir", str(shared)]
    assert ingress_silo(argv, tmp_path) == "a"
    assert ingress_silo([*argv[:-1], "/elsewhere/shared"], tmp_path) is None
    assert ingress_silo([argv[0], str(shared / "ingress.py"), "stop"], tmp_path) is None
    assert ingress_silo([argv[0], str(shared / "server.py"), *argv[2:]], tmp_path) is None


def test_only_servers_started_from_this_data_dir_count(tmp_path: Path) -> None:
    mine = str(tmp_path / "workspace" / "silo-a" / "shared" / "server.py")
    argv = ["python3", mine, "serve", "--instance-id", "pr-1-x", "--dir", "d"]
    assert server_instance(argv, tmp_path) == "pr-1-x"
    assert server_instance([argv[0], "/elsewhere/server.py", *argv[2:]], tmp_path) is None
    assert server_instance(["python3", mine, "stop"], tmp_path) is None


# ----- real targets ----------------------------------------------------------------------------


def cli_env(rt: Runtime) -> dict[str, str]:
    settings = rt.settings
    env = {
        "RUNBOT_DATA_DIR": str(settings.data_dir),
        "RUNBOT_TEMPLATES_DIR": str(TEMPLATES),
        "RUNBOT_ENGINE": "embedded",
    }
    if settings.database_url:
        env["RUNBOT_DATABASE_URL"] = settings.database_url
    return env


def orphans_cli(rt: Runtime, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["orphans", *args], env=cli_env(rt))
    return result.exit_code, result.output


def up(rt: Runtime, silo: str, port_base: int) -> Environment:
    rt.lifecycle.create_silo(silo, "local", {"port_base": port_base, "capacity": 5})
    converge_sync(rt, silo_ready(rt, silo))
    env = rt.lifecycle.create_environment(silo, "octo/app", 1, "abc1234")
    converge_sync(rt, env_settled(rt, env.id))
    return rt.lifecycle.get_environment(env.id)


def delete_rows(rt: Runtime, *statements: object) -> None:
    with rt.db.session() as session:
        for statement in statements:
            session.exec(statement)  # type: ignore[call-overload]
        session.commit()


@pytest.mark.engine
def test_a_row_deleted_by_hand_leaves_an_orphan_destroyed_with_its_template(
    tmp_path: Path, port_base: int
) -> None:
    rt = build_runtime(make_settings(tmp_path))
    env = up(rt, "hand", port_base)
    assert len(processes_matching(f"--instance-id {env.id}")) == 1
    code, out = orphans_cli(rt)
    assert (code, out.strip()) == (0, "no orphans")

    delete_rows(rt, delete(Environment).where(Environment.id == env.id))  # the hand
    code, out = orphans_cli(rt)
    assert code == 0, out
    assert f"state-without-target     env-{env.id}" in out
    assert f"process-without-target   env-{env.id}" in out
    assert "remedy=engine-destroy" in out

    code, out = orphans_cli(rt, "--destroy")
    assert code == 0, out
    assert processes_matching(f"--instance-id {env.id}") == []
    assert not local_state_file(rt.settings.data_dir, f"env-{env.id}").exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(env.outputs["direct_url"]["value"], timeout=2)
    # Through the silo's ingress nothing answers for it either: no route, or (the sandboxed
    # orphan destroy cannot see the silo's shared directory to remove it) a route to nothing.
    gone = httpx.get(env.url or "", timeout=2)
    assert gone.status_code in (404, 502) and gone.headers["server"].startswith("runbot-ingress/")
    with rt.db.session() as session:
        assert session.get(TargetRecord, f"env-{env.id}") is None
        assert session.get(TargetRecord, "silo-hand") is not None  # the silo is live
    assert orphans_cli(rt)[1].strip() == "no orphans"
    rt.lifecycle.destroy_silo("hand")
    converge_sync(rt, silo_ready(rt, "hand"))


@pytest.mark.engine
@pytest.mark.postgres
def test_state_left_behind_by_a_removed_silo_is_destroyed_from_its_schema(
    tmp_path: Path, port_base: int, postgres_url: str
) -> None:
    rt = build_runtime(make_settings(tmp_path, postgres_url))
    env = up(rt, "gone", port_base)
    shared = Path(rt.lifecycle.get_silo("gone").outputs["shared_dir"]["value"])
    schemas = {schema_name("silo-gone"), schema_name(f"env-{env.id}")}
    # The silo is removed from runbot's records, with its environment (runs stay).
    delete_rows(rt, delete(Environment), delete(Silo))
    code, out = orphans_cli(rt)
    assert code == 0, out
    for target in ("silo-gone", f"env-{env.id}"):
        assert f"state-without-target     {target}" in out
    assert schema_name("silo-gone") in out

    code, out = orphans_cli(rt, "--destroy")
    assert code == 0, out
    with rt.db.engine.connect() as connection:
        left = connection.execute(
            text("SELECT nspname FROM pg_namespace WHERE nspname = ANY(:names)"),
            {"names": list(schemas)},
        ).all()
    assert left == []
    assert not shared.exists()  # the silo template's destroy ran
    assert processes_matching(f"--instance-id {env.id}") == []
    assert orphans_cli(rt)[1].strip() == "no orphans"


@pytest.mark.engine
def test_a_target_whose_state_vanished_is_listed_and_destroyed(
    tmp_path: Path, port_base: int
) -> None:
    rt = build_runtime(make_settings(tmp_path))
    env = up(rt, "lost", port_base)
    local_state_file(rt.settings.data_dir, f"env-{env.id}").unlink()
    code, out = orphans_cli(rt)
    assert f"target-without-state     env-{env.id}" in out, out
    code, out = orphans_cli(rt, "--destroy")
    assert code == 0, out
    assert rt.lifecycle.get_environment(env.id).status == "destroyed"
    assert rt.lifecycle.get_environment(env.id).reason == "orphan: its state vanished"
    # Its server outlived the state: stopped as an orphan process once its row was destroyed.
    wait_for(lambda: processes_matching(f"--instance-id {env.id}") == [], timeout=20)
    rt.lifecycle.destroy_silo("lost")
    converge_sync(rt, silo_ready(rt, "lost"))


@pytest.mark.engine
def test_kill_9_between_an_apply_and_its_record(tmp_path: Path, port_base: int) -> None:
    rt = build_runtime(make_settings(tmp_path))
    rt.lifecycle.create_silo("kill", "local", {"port_base": port_base, "capacity": 5})
    converge_sync(rt, silo_ready(rt, "kill"))
    env_vars = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOT_")}
    env_vars.update(cli_env(rt))
    log = tmp_path / "create.log"
    with log.open("ab") as out:
        create = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "env", "create", "--silo", "kill", "--pr", "9"],
            env=env_vars,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # The apply has started the server: runbot dies before it records the apply's result.
        # Its own server only: another test's (or a leftover's) pr-9 server must not count.
        ours = f"--dir {rt.settings.data_dir.absolute()}"
        wait_for(
            lambda: [p for p in processes_matching("--instance-id pr-9-") if ours in p] != [],
            timeout=120,
        )
        os.killpg(create.pid, signal.SIGKILL)
        create.wait()
    finally:
        if create.poll() is None:
            os.killpg(create.pid, signal.SIGKILL)
    with rt.db.session() as session:
        env = session.exec(select(Environment)).one()
        run = session.exec(select(Run).where(Run.target_id == env.id)).one()
        record = session.get(TargetRecord, f"env-{env.id}")
    assert env.status == "creating" and run.status == "running", log.read_text()
    assert record is not None and record.variables["runbot_instance_id"] == env.id
    # Its row is still live: a worker taking the lease over finishes it. Not an orphan.
    assert orphans_cli(rt)[1].strip() == "no orphans"

    delete_rows(rt, delete(Environment).where(Environment.id == env.id))
    code, out = orphans_cli(rt)
    assert f"process-without-target   env-{env.id}" in out, out
    code, out = orphans_cli(rt, "--destroy")
    assert code == 0, out
    assert processes_matching(f"--instance-id {env.id}") == []
    with rt.db.session() as session:
        assert session.get(TargetRecord, f"env-{env.id}") is None
    assert orphans_cli(rt)[1].strip() == "no orphans"


# ----- the tick, the dashboard and the metrics -------------------------------------------------


@pytest.mark.engine
def test_the_tick_shows_orphans_on_the_dashboard_and_in_metrics(
    tmp_path: Path, fake_github: FakeGitHub, port_base: int
) -> None:
    token = "orphans-operator-token-0123456789"
    settings = app_settings(tmp_path, fake_github, api_token=token, orphan_sweep_interval=5)
    with AppServer(settings) as server:
        rt = server.runtime
        env = up(rt, "tick", port_base)
        delete_rows(rt, delete(Environment).where(Environment.id == env.id))

        def gauge() -> str:
            body = httpx.get(f"{server.url}/metrics", timeout=5).text
            return next(
                (
                    line
                    for line in body.splitlines()
                    if line.startswith('runbot_orphans{kind="state-without-target"}')
                ),
                "",
            )

        wait_for(lambda: gauge().endswith(" 1.0"), timeout=30)
        page = httpx.get(
            f"{server.url}/orphans", headers={"Authorization": f"Bearer {token}"}, timeout=5
        )
        assert page.status_code == 200
        assert f"env-{env.id}" in page.text and "state-without-target" in page.text
        # The tick only lists: the server still runs until the operator destroys it.
        assert len(processes_matching(f"--instance-id {env.id}")) == 1
        code, out = orphans_cli(rt, "--destroy")
        assert code == 0, out


def test_migration_0013_adds_and_removes_the_target_record_table(database_url: str) -> None:
    db = Database(database_url)
    config = db._alembic_config()
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0013")
    assert "targetrecord" in inspect(db.engine).get_table_names()
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0012")
    assert "targetrecord" not in inspect(db.engine).get_table_names()
    db.dispose()
