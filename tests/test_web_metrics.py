"""GET /metrics (Prometheus) and structured logs, against real databases and real HTTP."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.access.roles import Role
from app.db.models import Environment, Run, utcnow
from app.github.appgateway import GitHubAppGateway
from app.logging import configure_logging, log_context
from app.server import create_app
from app.web.metrics import Metrics
from tests.apphost import INSTALLATION, REPO, app_settings, free_port
from tests.conftest import make_settings
from tests.fakegithub.server import FakeGitHub
from tests.fakegithub.webhooks import deliver
from tests.webtools import WebServer, seed_env, seed_run, seed_silo

pytest_plugins = ["tests.fakegithub.pytest_plugin"]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[WebServer]:
    app = create_app(make_settings(tmp_path, database_url), background=False)
    db = app.state.runtime.db
    seed_silo(db, "s", {})
    seed_env(db, "pr-1-aaaaa", REPO, 1, "s", slot=0)
    seed_env(db, "pr-2-bbbbb", REPO, 2, "s", slot=1)
    seed_env(db, "pr-3-ccccc", REPO, 3, "s", status="failed", slot=2)
    seed_env(db, "pr-4-ddddd", REPO, 4, "s", status="destroyed")
    with db.session() as session:  # one environment waits for a worker
        row = session.get(Environment, "pr-2-bbbbb")
        assert row is not None
        row.generation, row.updated_at = 2, utcnow().replace(year=utcnow().year - 1)
        session.add(row)
        session.commit()
    with WebServer(app, free_port()) as web:
        yield web


def test_metrics_report_deliveries_state_and_queue(server: WebServer) -> None:
    from app.server import webhook_secret

    secret = webhook_secret(server.app.state.runtime.settings)
    hook = f"{server.url}/webhooks/github"
    assert deliver(hook, "pull_request", {"action": "opened"}, "wrong-secret").status_code == 401
    assert deliver(hook, "ping", {"zen": "hi"}, secret).status_code == 200
    assert deliver(hook, "ping", {"zen": "hi"}, secret, delivery_id="dup").status_code == 200
    assert deliver(hook, "ping", {"zen": "hi"}, secret, delivery_id="dup").status_code == 200
    assert deliver(hook, "x-made-up-event", {}, "wrong").status_code == 401

    response = httpx.get(f"{server.url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    total = "runbot_deliveries_total"
    assert value(text, total, event="pull_request", outcome="bad_signature") == 1
    assert value(text, total, event="ping", outcome="pong") == 2
    assert value(text, total, event="ping", outcome="duplicate") == 1
    assert value(text, total, event="other", outcome="bad_signature") == 1  # labels stay bounded
    assert value(text, "runbot_environments", status="ready") == 2
    assert value(text, "runbot_environments", status="failed") == 1
    assert ("runbot_environments", (("status", "destroyed"),)) not in samples(text)
    assert value(text, "runbot_queue_depth", queue="reconcile") == 1
    assert value(text, "runbot_queue_oldest_age_seconds", queue="reconcile") > 300 * 86400
    assert value(text, "runbot_queue_depth", queue="deliveries") == 0
    for name in (
        "runbot_github_api_calls_total",
        "runbot_github_api_errors_total",
        "runbot_github_rate_limit_waits_total",
        "runbot_queue_depth",
    ):
        assert name in text


def test_each_finished_run_is_counted_once(tmp_path: Path, database_url: str) -> None:
    app = create_app(make_settings(tmp_path, database_url), background=False)
    db = app.state.runtime.db
    seed_silo(db, "s", {})
    seed_env(db, "pr-1-aaaaa", REPO, 1, "s")
    seed_run(db, "environment", "pr-1-aaaaa", "x\n", worker="w1")
    running = seed_run(db, "silo", "s", "y\n", worker="w1", finished=False)
    seed_run(db, "environment", "pr-1-aaaaa", "z\n", worker="someone-else")
    metrics = Metrics(db, lambda: "w1")

    def scrape() -> str:
        from prometheus_client import generate_latest

        metrics.refresh()
        return generate_latest(metrics.registry).decode()

    text = scrape()
    runs = "runbot_runs_total"
    assert value(text, runs, operation="apply", stack="local", result="succeeded") == 1
    assert value(text, "runbot_run_duration_seconds_count", operation="apply", stack="local") == 1
    assert (
        value(
            text, "runbot_run_duration_seconds_bucket", operation="apply", stack="local", le="30.0"
        )
        == 0
    )
    assert (
        value(
            text, "runbot_run_duration_seconds_bucket", operation="apply", stack="local", le="60.0"
        )
        == 1
    )
    with db.session() as session:
        row = session.get(Run, running)
        assert row is not None
        row.status, row.finished_at = "failed", utcnow()
        session.add(row)
        session.commit()
    text = scrape()
    text = scrape()
    assert value(text, runs, operation="apply", stack="local", result="succeeded") == 1
    assert value(text, runs, operation="apply", stack="local", result="failed") == 1
    app.state.runtime.db.dispose()


def test_github_calls_are_counted(tmp_path: Path, fake_github: FakeGitHub) -> None:
    fake_github.add_repo(REPO)
    fake_github.add_installation(INSTALLATION, "octo-org", [REPO])
    fake_github.set_permission(REPO, "wanda", "write")
    settings = app_settings(tmp_path, fake_github)
    app = create_app(settings, background=False)
    with WebServer(app, free_port()) as web:
        before = value(httpx.get(f"{web.url}/metrics").text, "runbot_github_api_calls_total")

        async def ask() -> Role:
            gateway = GitHubAppGateway(settings)
            try:
                return await gateway.permission(INSTALLATION, REPO, "wanda")
            finally:
                await gateway.aclose()

        assert asyncio.run(ask()) == Role.WRITE
        after = value(httpx.get(f"{web.url}/metrics").text, "runbot_github_api_calls_total")
    assert after >= before + 1


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_logs_are_json_lines_with_ids_off_a_terminal() -> None:
    stream = io.StringIO()
    handler = configure_logging("INFO", stream)
    try:
        log = logging.getLogger("runbot.test")
        log.info("plain")
        with log_context(environment_id="pr-7-abcde"), log_context(run_id=42):
            log.info("inside %s", "run")
        log.warning("delivered", extra={"delivery_id": "d-1"})

        async def work(env_id: str, delay: float) -> None:
            with log_context(environment_id=env_id):
                await asyncio.sleep(delay)
                log.info("task")

        async def both() -> None:
            await asyncio.gather(work("pr-1-a", 0.02), work("pr-2-b", 0.0))

        asyncio.run(both())
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logging.getLogger().removeHandler(handler)
    assert lines[0]["message"] == "plain" and "environment_id" not in lines[0]
    assert lines[1]["environment_id"] == "pr-7-abcde" and lines[1]["run_id"] == 42
    assert lines[1]["message"] == "inside run" and lines[1]["logger"] == "runbot.test"
    assert lines[2]["delivery_id"] == "d-1" and lines[2]["level"] == "WARNING"
    assert "run_id" not in lines[2]
    assert [line["environment_id"] for line in lines[3:]] == ["pr-2-b", "pr-1-a"]

    tty = _Tty()
    handler = configure_logging("INFO", tty)
    try:
        with log_context(environment_id="pr-9-x"):
            logging.getLogger("runbot.test").info("hello")
    finally:
        logging.getLogger().removeHandler(handler)
    assert tty.getvalue().rstrip().endswith("runbot.test: hello [environment_id=pr-9-x]")


async def test_each_processed_delivery_is_logged_with_its_id_and_outcome(
    tmp_path: Path,
) -> None:
    """Logged once processed, off the acknowledgement's path, and with what became of it."""
    app = create_app(make_settings(tmp_path), background=False)
    stream = io.StringIO()
    handler = configure_logging("INFO", stream)  # what create_app did, onto a buffer
    try:
        from app.server import webhook_secret
        from app.workers import Workers

        secret = webhook_secret(app.state.runtime.settings)
        with WebServer(app, free_port()) as web:
            deliver(f"{web.url}/webhooks/github", "status", {"sha": "a" * 40}, secret, "d-77")
        workers = Workers.build(app.state.runtime)
        assert await workers.intent.process_one()
        await workers.gateway.aclose()
    finally:
        logging.getLogger().removeHandler(handler)
    records = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    [line] = [r for r in records if r.get("delivery_id") == "d-77"]
    assert "(status)" in line["message"] and line["level"] == "INFO", line


def test_create_app_installs_one_json_handler(tmp_path: Path) -> None:
    create_app(make_settings(tmp_path / "a"), background=False)
    create_app(make_settings(tmp_path / "b"), background=False)
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_runbot_handler", False)]
    assert len(ours) == 1
