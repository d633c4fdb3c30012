"""Every run records how long it waited in the queue and spent in each engine phase; the
dashboard, the API and the metrics show it (issue 18, must 5)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from prometheus_client import generate_latest

from app import clock
from app.db.models import Run
from app.lifecycle.states import Status
from app.lifecycle.timings import PhaseMarks, ordered, queue_wait, ready_after
from app.runtime import build_runtime
from app.server import create_app
from app.web.metrics import Metrics
from app.web.views import run_out
from tests.apphost import free_port
from tests.conftest import make_settings
from tests.helpers import converge_sync, env_settled, silo_ready
from tests.test_url_wait import slow_app  # noqa: F401 (a fixture)
from tests.webtools import WebServer

TIMED = Path(__file__).parent / "fixtures" / "stacks-timed"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def test_each_phase_lasts_until_the_next_begins() -> None:
    marks = PhaseMarks({"queue": 2.0})
    marks.enter("init", 10.0)
    marks.enter("apply", 11.5)
    marks.enter("init", 12.0)  # a retried init adds up
    assert marks.finish(12.25) == {"queue": 2.0, "init": 1.75, "apply": 0.5}
    assert marks.finish(99.0) == {"queue": 2.0, "init": 1.75, "apply": 0.5}  # closed once


def test_queue_wait_and_order() -> None:
    assert queue_wait(T0, T0 + timedelta(seconds=90)) == 90.0
    assert queue_wait(None, T0) == 0.0  # a row from before requests were stamped
    assert queue_wait(T0 + timedelta(seconds=5), T0) == 0.0  # never negative
    shown = ordered({"output": 0.1, "apply": 3.0, "queue": 1.0, "init": 2.0, "zz": 0.5})
    assert [name for name, _ in shown] == ["queue", "init", "apply", "output", "zz"]
    assert ready_after({"queue": 1.0, "init": 2.0, "apply": 3.04}) == 6.0
    assert ready_after(None) is None


def test_a_real_run_records_its_queue_wait_and_engine_phases(
    tmp_path: Path, database_url: str
) -> None:
    fake_time = clock.ManualClock(T0)
    with clock.using(fake_time):
        rt = build_runtime(make_settings(tmp_path, database_url, templates_dir=TIMED))
        rt.lifecycle.create_silo("timed", "timed", {})
        converge_sync(rt, silo_ready(rt, "timed"))
        env = rt.lifecycle.create_environment("timed", "octo/app", 7, "a" * 40, "f", "alice")
        fake_time.advance(timedelta(seconds=42))  # nobody picked it up for 42 s
        converge_sync(rt, env_settled(rt, env.id))
        env = rt.lifecycle.get_environment(env.id)
        assert env.status == Status.READY, env.reason
        with rt.db.session() as session:
            run = session.get(Run, env.last_run_id)
        assert run is not None and run.timings is not None
        assert run.timings["queue"] == 42.0
        assert run.timings["apply"] >= 1.0  # the provisioner sleeps a second
        assert run.timings["init"] > 0
        out = run_out(run)
        assert [p.name for p in out.phases][:3] == ["queue", "init", "apply"]

        # A new generation is a new request: the update's queue wait starts at the push.
        fake_time.advance(timedelta(minutes=10))
        rt.lifecycle.update_environment(env.id, head_sha="b" * 40)
        fake_time.advance(timedelta(seconds=3))
        converge_sync(rt, env_settled(rt, env.id))
        env = rt.lifecycle.get_environment(env.id)
        with rt.db.session() as session:
            update = session.get(Run, env.last_run_id)
        assert update is not None and update.timings is not None
        assert update.timings["queue"] == 3.0

        # Each run is observed by the process that ran it (here, one reconciler per converge).
        metrics = Metrics(rt.db, lambda: update.worker)
        metrics.refresh()
        body = generate_latest(metrics.registry).decode()
        lines = body.splitlines()

        def sample(name: str, phase: str, le: str | None = None) -> float:
            for line in lines:
                wanted = line.startswith(name + "{") and f'phase="{phase}"' in line
                wanted = wanted and 'kind="environment"' in line
                if wanted and (le is None or f'le="{le}"' in line):
                    return float(line.rsplit(" ", 1)[1])
            raise AssertionError(f"no {name} for {phase} in:\n{body}")

        # The update found init cached: it queued and applied, and ran no init.
        assert sample("runbot_run_phase_seconds_count", "queue") == 1.0
        assert sample("runbot_run_phase_seconds_count", "apply") == 1.0
        assert sample("runbot_run_phase_seconds_sum", "queue") == 3.0
        assert sample("runbot_run_phase_seconds_bucket", "queue", "2.5") == 0.0
        assert sample("runbot_run_phase_seconds_bucket", "queue", "5.0") == 1.0

    app = create_app(make_settings(tmp_path, database_url, templates_dir=TIMED), background=False)
    with WebServer(app, free_port()) as server:
        client = httpx.Client(base_url=server.url, timeout=20, trust_env=False)
        shown = client.get(f"/api/runs/{update.id}").json()
        assert shown["phases"][0] == {"name": "queue", "seconds": 3.0}
        names = [p["name"] for p in shown["phases"]]
        # The pg backend reads outputs with `output -json`, a phase of its own.
        assert names == ["queue", "apply", *(["output"] if rt.db.is_postgres else [])]
        page = client.get(f"/environments/{env.id}").text
        assert "queue 3.0s" in page and '<span class="phase-time">apply' in page


def test_phase_names_a_runner_made_up_stay_out_of_the_metric_labels(
    tmp_path: Path, database_url: str
) -> None:
    """A pod reports its phases: whatever name it sends, the metric's labels stay bounded."""
    rt = build_runtime(make_settings(tmp_path, database_url))
    with rt.db.session() as session:
        session.add(
            Run(
                target_kind="environment",
                target_id="pr-1-aaaaa",
                operation="apply",
                status="succeeded",
                worker="w1",
                timings={"queue": 1.5, "x" * 300: 2.0, "apply": 4.0},
                finished_at=T0,
                started_at=T0 - timedelta(seconds=6),
            )
        )
        session.commit()
    metrics = Metrics(rt.db, lambda: "w1")
    metrics.refresh()
    body = generate_latest(metrics.registry).decode()
    prefix = 'runbot_run_phase_seconds_count{kind="environment",operation="apply",phase='
    assert prefix + '"queue"} 1.0' in body and prefix + '"apply"} 1.0' in body
    assert "x" * 300 not in body


def test_a_run_waits_for_the_url_it_was_asked_to(
    tmp_path: Path,
    slow_app: tuple[str, dict[str, float]],  # noqa: F811 (the fixture imported above)
) -> None:
    """The stack outputs `runbot_wait_for_url`: the run's `url` phase lasts until the app
    (503 for 0.6 s, then 200) answers, after the engine's phases."""
    url, state = slow_app
    rt = build_runtime(make_settings(tmp_path, templates_dir=TIMED))
    rt.lifecycle.create_silo("timed", "timed", {})
    converge_sync(rt, silo_ready(rt, "timed"))
    env = rt.lifecycle.create_environment(
        "timed", "octo/app", 7, "a" * 40, "f", "alice", vars={"app_url": url}
    )
    converge_sync(rt, env_settled(rt, env.id))
    env = rt.lifecycle.get_environment(env.id)
    assert env.status == Status.READY and env.url == url
    with rt.db.session() as session:
        run = session.get(Run, env.last_run_id)
    assert run is not None and run.timings is not None
    assert run.timings["url"] >= 0.5 and state["asked"] >= 2
    assert [p.name for p in run_out(run).phases][-1] == "url"
