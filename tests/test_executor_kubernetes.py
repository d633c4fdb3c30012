"""The kubernetes executor end to end: lightkube against kubelite, real pods, engine and PostgreSQL.

kubelite (tests/kubelite) checks every manifest against Kubernetes' strict schemas and runs each
pod's real command (`runbot engine exec`) as PID 1 of its own PID namespace; the pod reaches a
real runbot serving the run-token API on loopback. Nothing here reads a pod's log: the tests
assert runbot never asks for one either.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from lightkube import AsyncClient, KubeConfig
from lightkube.resources.batch_v1 import Job
from sqlmodel import select

from app.db.models import Run, RunLogChunk
from app.db.session import Database
from app.engine.backends import libpq_url, schema_name
from app.engine.runner import EngineCancelled, EngineError, EngineFailed, EngineJob
from app.executor import tickets
from app.executor.kubernetes import KubernetesConfig, KubernetesExecutor
from app.executor.manifest import job_name
from app.lifecycle.states import Status
from app.server import create_app
from tests.apphost import free_port
from tests.conftest import make_settings
from tests.helpers import converge_sync, silo_ready
from tests.kubelite import KubeLite
from tests.webtools import WebServer

pytest_plugins = ["tests.kubelite.pytest_plugin"]
pytestmark = [pytest.mark.engine, pytest.mark.postgres]
SLOW = Path(__file__).parent / "fixtures" / "engine" / "slow"
TARGET = "env-slow"
CREATING = "terraform_data.slow: Creating..."


@dataclass
class Site:
    url: str
    db: Database
    database_url: str
    kube: KubeLite
    config: KubernetesConfig

    def executor(self, cls: type[KubernetesExecutor] = KubernetesExecutor) -> KubernetesExecutor:
        return cls(self.db, self.config, "embedded", Path("data"), self.database_url, 120, 10)


@pytest.fixture
def site(tmp_path: Path, postgres_url: str, kubelite: KubeLite) -> Iterator[Site]:
    port = free_port()
    settings = make_settings(tmp_path, postgres_url, public_url=f"http://127.0.0.1:{port}")
    app = create_app(settings, background=False)
    config = KubernetesConfig(
        namespace=kubelite.namespace,
        image="runbot:test",
        service_account="runbot-engine-{silo}",
        callback_url=f"http://127.0.0.1:{port}",
        kubeconfig=kubelite.kubeconfig_path,
        cpu="100m",
        memory="256Mi",
        ttl_after_finished=600,
        # kubelite runs pods on this host, whose Python lives under /root: the image's user
        # (root here) runs them. tests/test_executor_manifest.py checks the non-root default.
        run_as_user=0,
    )
    with WebServer(app, port) as server:
        yield Site(server.url, app.state.runtime.db, postgres_url, kubelite, config)


def job(run_id: int, delay: int, marker: str) -> EngineJob:
    variables = {"delay": delay, "marker": marker}
    return EngineJob(TARGET, SLOW, "apply", variables, run_id=run_id, silo="team-a")


def pushed(site: Site, run_id: int) -> list[str]:
    return [text for _, text in tickets.lines_after(site.db, run_id, 0, limit=100000)]


def advisory_locks(database_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(libpq_url(database_url)) as conn:
        # pg_locks is the whole server's: only this test's database counts.
        return conn.execute(
            "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND database ="
            " (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchall()


def saved_state(database_url: str) -> str | None:
    with psycopg.connect(libpq_url(database_url)) as conn:
        row = conn.execute(
            f'SELECT data FROM "{schema_name(TARGET)}".states WHERE name = %s', ("default",)
        ).fetchone()
    return None if row is None else str(row[0])


def no_pod_logs_read(kube: KubeLite) -> bool:
    return not any(request.path.endswith("/log") for request in kube.requests)


def running_pod(kube: KubeLite, run_id: int) -> str:
    def find() -> str | None:
        for pod in kube.pods():
            labels = pod["metadata"].get("labels") or {}
            if labels.get("runbot.dev/run") == str(run_id):
                return str(pod["metadata"]["name"])
        return None

    return str(kube.wait_for(find, timeout=30))


async def until(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


def test_an_apply_runs_in_one_job_end_to_end(site: Site) -> None:
    lines: list[str] = []
    phases: list[str] = []
    result = asyncio.run(site.executor().execute(job(1, 0, "one"), lines.append, phases.append))
    assert result.outputs["marker"]["value"] == "one"
    assert any("Apply complete" in line for line in lines), lines[-10:]
    assert "apply" in phases
    name = job_name(TARGET, 1)
    (made,) = site.kube.jobs()
    assert made["metadata"]["name"] == name
    assert made["spec"]["template"]["spec"]["serviceAccountName"] == "runbot-engine-team-a"
    (secret,) = site.kube.secrets()
    assert secret["metadata"]["ownerReferences"][0]["uid"] == made["metadata"]["uid"]
    assert site.kube.job_creations(name) == 1
    assert site.kube.errors == []
    assert no_pod_logs_read(site.kube)
    # what the pod pushed is the run's log, with no credential in it
    text = "\n".join(lines)
    assert "PG_CONN_STR" not in text and "rbr_" not in text
    assert advisory_locks(site.database_url) == []


def test_a_cancel_during_an_apply_interrupts_the_engine_which_saves_state(site: Site) -> None:
    lines: list[str] = []

    async def scenario() -> None:
        cancel = asyncio.Event()
        run = asyncio.create_task(
            site.executor().execute(job(2, 60, "slow"), lines.append, None, cancel)
        )
        await until(lambda: any(CREATING in line for line in lines))
        cancel.set()
        with pytest.raises(EngineCancelled):
            await asyncio.wait_for(run, timeout=90)

    asyncio.run(scenario())
    text = "\n".join(lines)
    assert "sending SIGINT" in text  # the pod's PID 1 ran the ladder on the engine
    assert "Interrupt received" in text or "execution halted" in text, text[-2000:]
    assert saved_state(site.database_url) is not None
    assert advisory_locks(site.database_url) == []
    deletes = [r for r in site.kube.requests if r.method == "DELETE" and "/jobs/" in r.path]
    assert deletes and all(
        r.query.get("propagationPolicy") == "Background"
        or (isinstance(r.body, dict) and r.body.get("propagationPolicy") == "Background")
        for r in deletes
    )
    site.kube.wait_for(lambda: site.kube.live_pids() == [], timeout=30)
    assert no_pod_logs_read(site.kube)


class OrphaningExecutor(KubernetesExecutor):
    """A mutant: cancel deletes the Job without propagationPolicy (Kubernetes' default)."""

    async def _delete(self, client: AsyncClient, name: str) -> None:
        await client.delete(Job, name, namespace=self.config.namespace)


def test_mutant_cancel_without_background_propagation_leaves_the_engine_running(
    site: Site,
) -> None:
    lines: list[str] = []

    async def scenario() -> str:
        cancel = asyncio.Event()
        run = asyncio.create_task(
            site.executor(OrphaningExecutor).execute(job(3, 60, "slow"), lines.append, None, cancel)
        )
        await until(lambda: any(CREATING in line for line in lines))
        pod = running_pod(site.kube, 3)
        cancel.set()
        await until(lambda: site.kube.jobs() == [], timeout=30)
        await asyncio.sleep(3)
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
        return pod

    pod = asyncio.run(scenario())
    orphan = site.kube.pod(pod)
    assert orphan is not None and orphan["status"]["phase"] == "Running"  # kept running
    progress = tickets.progress(site.db, 3)
    assert progress is not None and progress.result is None
    assert not any("Interrupt received" in line for line in pushed(site, 3))
    site.kube.kill_pod(pod, signal.SIGKILL)


def test_a_pod_killed_mid_apply_fails_the_run_and_the_retry_takes_the_lock(site: Site) -> None:
    lines: list[str] = []

    async def scenario() -> None:
        run = asyncio.create_task(site.executor().execute(job(4, 60, "slow"), lines.append))
        await until(lambda: any(CREATING in line for line in lines))
        site.kube.kill_pod(running_pod(site.kube, 4), signal.SIGKILL)
        with pytest.raises(EngineFailed) as info:
            await asyncio.wait_for(run, timeout=60)
        assert "before its pod reported a result" in str(info.value)

    asyncio.run(scenario())
    deadline = time.monotonic() + 20
    while advisory_locks(site.database_url) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert advisory_locks(site.database_url) == []
    retry = asyncio.run(site.executor().execute(job(5, 0, "two"), lines.append))
    assert retry.outputs["marker"]["value"] == "two"
    assert no_pod_logs_read(site.kube)


DISPATCHER = """
import asyncio, sys
from pathlib import Path
from app.db.models import Run, RunLogChunk
from app.db.session import Database
from app.engine.runner import EngineJob
from app.executor.kubernetes import KubernetesConfig, KubernetesExecutor
database_url, kubeconfig, namespace, callback, template = sys.argv[1:6]
config = KubernetesConfig(namespace=namespace, image="runbot:test", service_account="sa-{silo}",
                          callback_url=callback, kubeconfig=Path(kubeconfig), run_as_user=0)
executor = KubernetesExecutor(Database(database_url), config, "embedded", Path("data"),
                              database_url, 120, 10)
job = EngineJob("env-slow", Path(template), "apply", {"delay": 8, "marker": "once"}, run_id=6)
asyncio.run(executor.execute(job, lambda line: print(line, flush=True)))
"""


def test_a_killed_dispatcher_s_job_is_adopted_once_by_the_next_replica(site: Site) -> None:
    """kill -9 of the replica dispatching run 6 mid-apply; the replica that takes the lease
    over (a new run, 7, of the same job) adopts the Job: one Job, one apply."""
    dispatcher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            DISPATCHER,
            site.database_url,
            str(site.config.kubeconfig),
            site.config.namespace,
            site.url,
            str(SLOW),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    try:
        deadline = time.monotonic() + 90
        while not any(CREATING in line for line in pushed(site, 6)):
            assert dispatcher.poll() is None, dispatcher.communicate()[0].decode()
            assert time.monotonic() < deadline, "the first dispatcher's pod never started"
            time.sleep(0.1)
        dispatcher.send_signal(signal.SIGKILL)
        dispatcher.wait(timeout=10)
    finally:
        if dispatcher.poll() is None:
            dispatcher.kill()
    lines: list[str] = []
    result = asyncio.run(site.executor().execute(job(7, 8, "once"), lines.append))
    assert result.outputs["marker"]["value"] == "once"
    assert any("adopting Job" in line for line in lines), lines[:5]
    assert [j["metadata"]["name"] for j in site.kube.jobs()] == [job_name(TARGET, 6)]
    assert site.kube.job_creations(job_name(TARGET, 6)) == 1
    assert site.kube.job_creations(job_name(TARGET, 7)) == 0
    assert sum(CREATING in line for line in lines) == 1  # applied once, its log complete
    assert sum("Apply complete" in line for line in lines) == 1
    assert no_pod_logs_read(site.kube)


def test_the_same_run_dispatched_twice_makes_one_job(site: Site) -> None:
    """Two dispatchers of one run id (a retry of the same claim): 409 or a found Job, adopted."""

    async def both() -> list[Any]:
        one, two = site.executor(), site.executor()
        return await asyncio.gather(
            one.execute(job(8, 2, "twin"), lambda _: None),
            two.execute(job(8, 2, "twin"), lambda _: None),
        )

    first, second = asyncio.run(both())
    assert first.outputs == second.outputs
    assert first.outputs["marker"]["value"] == "twin"
    assert len(site.kube.jobs()) == 1
    assert sum(CREATING in line for line in pushed(site, 8)) == 1


def test_lightkube_reads_the_kubeconfig_kubelite_writes(kubelite: KubeLite) -> None:
    config = KubeConfig.from_file(kubelite.kubeconfig_path)
    assert config.current_context == "kubelite"


def test_the_lifecycle_runs_a_silo_through_jobs_with_runbot_executor_kubernetes(
    tmp_path: Path, postgres_url: str, kubelite: KubeLite, port_base: int
) -> None:
    """RUNBOT_EXECUTOR=kubernetes end to end through the reconciler: the run's log and
    outcome are recorded as with `local`, from what the pods pushed."""
    port = free_port()
    settings = make_settings(
        tmp_path,
        postgres_url,
        public_url=f"http://127.0.0.1:{port}",
        executor="kubernetes",
        k8s_image="runbot:test",
        k8s_namespace=kubelite.namespace,
        k8s_kubeconfig=kubelite.kubeconfig_path,
        k8s_run_as_user=0,
    )
    app = create_app(settings, background=False)
    rt = app.state.runtime
    assert isinstance(rt.runner, KubernetesExecutor)
    with WebServer(app, port):
        rt.lifecycle.create_silo("local-default", "local", {"port_base": port_base})
        converge_sync(rt, silo_ready(rt, "local-default"))
        silo = rt.lifecycle.get_silo("local-default")
        assert silo.status == Status.READY, silo.reason
        with rt.db.session() as session:
            (run,) = session.exec(select(Run)).all()
            log = "".join(c.text for c in session.exec(select(RunLogChunk)).all())
        assert run.status == "succeeded" and run.exit_code == 0
        assert "Apply complete" in log
        (made,) = kubelite.jobs()
        assert made["metadata"]["labels"]["runbot.dev/run"] == str(run.id)
        pod = made["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "runbot-engine-local-default"
        rt.lifecycle.destroy_silo("local-default")
        converge_sync(rt, silo_ready(rt, "local-default"))
        assert rt.lifecycle.get_silo("local-default").status == Status.DESTROYED
        assert len(kubelite.jobs()) == 2
    assert no_pod_logs_read(kubelite)
    assert kubelite.errors == []


def test_a_job_with_no_run_row_runs_under_an_id_no_run_has(site: Site) -> None:
    """The orphan sweep's destroys have no Run row: their ticket id is negative."""
    unrecorded = EngineJob(TARGET, SLOW, "apply", {"delay": 0, "marker": "orphan"})
    result = asyncio.run(site.executor().execute(unrecorded, lambda _: None))
    assert result.outputs["marker"]["value"] == "orphan"
    (made,) = site.kube.jobs()
    assert int(made["metadata"]["annotations"]["runbot.dev/run-id"]) < 0
    assert site.kube.errors == []


def test_a_job_reading_the_pr_source_is_refused_before_any_job_is_made(
    site: Site, tmp_path: Path
) -> None:
    """The run spec does not carry the PR's source yet: say so, rather than fail in the pod."""
    sourced = EngineJob(TARGET, SLOW, "apply", {"delay": 0, "marker": "x"}, sources=(tmp_path,))
    with pytest.raises(EngineError, match="RUNBOT_EXECUTOR=local"):
        asyncio.run(site.executor().execute(sourced, lambda _: None))
    assert site.kube.jobs() == [] and site.kube.secrets() == []


def test_a_disrupted_pod_is_replaced_and_the_run_still_ends_once(site: Site) -> None:
    """A node lost under the pod (`DisruptionTarget`) is ignored by the podFailurePolicy: the
    Job makes a new pod, which fetches the spec again and numbers its lines after the first's."""
    lines: list[str] = []

    async def scenario() -> Any:
        run = asyncio.create_task(site.executor().execute(job(10, 3, "again"), lines.append))
        await until(lambda: any(CREATING in line for line in lines))
        first = running_pod(site.kube, 10)
        site.kube.node_kill(first)
        return await asyncio.wait_for(run, timeout=120), first

    result, first = asyncio.run(scenario())
    assert result.outputs["marker"]["value"] == "again"
    names = {pod["metadata"]["name"] for pod in site.kube.pods()}
    assert len(names - {first}) >= 1  # a replacement pod ran
    assert site.kube.job_creations(job_name(TARGET, 10)) == 1
    numbers = [seq for seq, _ in tickets.lines_after(site.db, 10, 0, limit=100000)]
    assert numbers == list(range(1, len(numbers) + 1))  # one sequence across both pods
    assert sum(CREATING in line for line in lines) == 2
    assert no_pod_logs_read(site.kube)
