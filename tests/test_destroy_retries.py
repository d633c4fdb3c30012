"""Failed destroys are retried and visible (issue 20), tried the way a user would: webhooks and
comments → runbot (uvicorn, real workers) → the embedded engine → the fake GitHub.

The test stack's instance (and silo) carries a destroy-time provisioner that fails until a
marker file exists, so a destroy fails for real and succeeds once the "cause" is fixed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.doctor.report import State
from app.doctor.stuck import check_stuck_destroys
from app.github.comment import MARKER
from app.lifecycle.backoff import destroy_retry_delay
from app.lifecycle.states import (
    Action,
    Status,
    TransitionError,
    check_transition,
    plan_action,
)
from tests.apphost import INSTALLATION, REPO, WEBHOOK_SECRET, AppServer, app_settings, seed_repo
from tests.fakegithub.server import FakeGitHub
from tests.fakegithub.webhooks import deliver
from tests.helpers import wait_for

pytest_plugins = ["tests.fakegithub.pytest_plugin"]

A = "a" * 40
TOKEN = "destroy-retries-api-token-0123456789"
FAILURE = "destroy failed with exit code"


# ----- pure: the backoff and the state machine ---------------------------------------------------


def test_the_backoff_doubles_from_its_base_up_to_its_cap_with_jitter() -> None:
    lowest = [destroy_retry_delay(n, 10.0, 300.0, 0.0) for n in range(1, 8)]
    highest = [destroy_retry_delay(n, 10.0, 300.0, 0.999999) for n in range(1, 8)]
    assert lowest == [5.0, 10.0, 20.0, 40.0, 80.0, 150.0, 150.0]  # half of each window
    assert [round(d) for d in highest] == [10, 20, 40, 80, 160, 300, 300]  # the window, capped
    assert destroy_retry_delay(3, 10.0, 300.0, 0.5) == 30.0  # jitter spreads inside the window
    assert destroy_retry_delay(10_000, 10.0, 300.0, 0.0) == 150.0  # no overflow, ever
    with pytest.raises(ValueError):
        destroy_retry_delay(0, 10.0, 300.0, 0.0)
    with pytest.raises(ValueError):
        destroy_retry_delay(1, 10.0, 300.0, 1.0)


def test_destroy_failed_is_its_own_status_and_is_destroyed_again() -> None:
    assert check_transition(Status.DESTROYING, Status.DESTROY_FAILED) is Status.DESTROY_FAILED
    assert check_transition(Status.DESTROY_FAILED, Status.DESTROYING) is Status.DESTROYING
    assert check_transition(Status.READY, Status.DESTROY_FAILED)  # its stack did not load
    assert plan_action("absent", Status.DESTROY_FAILED) is Action.DESTROY
    with pytest.raises(TransitionError):
        check_transition(Status.DESTROYED, Status.DESTROY_FAILED)


# ----- real processes ----------------------------------------------------------------------------


def write_fragile_stack(root: Path) -> Path:
    """A stack whose destroys fail until a `fixed` file exists in the target's workspace (the
    one directory of its own a sandboxed run sees besides its working copy)."""

    def fragile(name: str) -> str:
        return (
            'variable "runbot_workspace_dir" {\n  type = string\n}\n'
            f'resource "terraform_data" "{name}" {{\n'
            '  input = "${var.runbot_workspace_dir}/fixed"\n'
            '  provisioner "local-exec" {\n'
            "    when    = destroy\n"
            "    command = \"echo checking the marker; test -f '${self.input}'\"\n"
            "  }\n"
            "}\n"
        )

    stack = root / "fragile"
    (stack / "silo").mkdir(parents=True)
    (stack / "instance").mkdir(parents=True)
    (stack / "silo" / "main.tf").write_text(fragile("silo"))
    (stack / "instance" / "main.tf").write_text(
        'variable "runbot_pr_number" {\n  type = number\n}\n'
        + fragile("app")
        + 'output "url" {\n  value = "https://pr-${var.runbot_pr_number}.example.test"\n}\n'
    )
    return root


def fix(server: AppServer, target: str) -> None:
    """The cause is fixed: the marker the destroy checks for now exists."""
    (server.settings.data_dir / "workspace" / target / "fixed").touch()


@contextmanager
def serving(tmp_path: Path, fake: FakeGitHub, **settings: Any) -> Iterator[AppServer]:
    stacks = write_fragile_stack(tmp_path / "stacks")
    seed_repo(fake, "stack: fragile\nsilo: fragile\n")
    fake.set_permission(REPO, "wendy", "write")
    fake.add_pull(REPO, 1, A, "feature")
    options: dict[str, Any] = {"templates_dir": stacks, "api_token": TOKEN, **settings}
    with AppServer(app_settings(tmp_path, fake, **options)) as server:
        yield server


def pull_event(server: AppServer, fake: FakeGitHub, action: str) -> None:
    payload = fake.pull_request_event(action, REPO, 1)
    payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
    assert deliver(server.webhook_url, "pull_request", payload, WEBHOOK_SECRET).status_code == 202


def comment(server: AppServer, fake: FakeGitHub, body: str) -> None:
    payload = fake.issue_comment_event(REPO, 1, body, author="wendy")
    payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
    assert deliver(server.webhook_url, "issue_comment", payload, WEBHOOK_SECRET).status_code == 202


def shown(fake: FakeGitHub) -> str:
    """The status comment as people read it (markdown escapes removed)."""
    bodies = [c["body"] for c in fake.comments(REPO, 1) if c["body"].startswith(MARKER)]
    return bodies[-1].replace("\\", "") if bodies else ""


def api(server: AppServer, path: str, method: str = "GET") -> Any:
    response = httpx.request(
        method, f"{server.url}{path}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    return response.json() if path.startswith("/api") else response.text


def metric(server: AppServer, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def deployment_states(fake: FakeGitHub) -> list[str]:
    return [
        status["state"]
        for deployment in fake.deployments(REPO)
        for status in fake.deployment_statuses(REPO, deployment["id"])
    ]


def deployed(server: AppServer, fake: FakeGitHub) -> str:
    pull_event(server, fake, "opened")
    lifecycle = server.runtime.lifecycle

    def ready() -> bool:
        env = lifecycle.live_environment_for(REPO, 1)
        return env is not None and env.status == Status.READY

    wait_for(ready, timeout=90)
    wait_for(lambda: "success" in deployment_states(fake), timeout=30)
    env = lifecycle.live_environment_for(REPO, 1)
    assert env is not None and env.slot is not None
    return env.id


def test_a_failed_destroy_is_retried_with_backoff_until_it_succeeds_and_then_shows_no_failure(
    tmp_path: Path, fake_github: FakeGitHub
) -> None:
    """Closing the PR destroys; the destroy fails again and again (more than the three
    retries of old), `destroy_failed` with its reason in the comment, the API, the
    dashboard, the metrics and `runbot doctor`, its slot kept; once the cause is fixed a
    retry succeeds and no view shows the old failure, the deployment never `failure`."""
    fake = fake_github
    with serving(tmp_path, fake, destroy_retry_base=0.5, destroy_retry_max=6.0) as server:
        lifecycle = server.runtime.lifecycle
        env_id = deployed(server, fake)
        assert metric(server, "runbot_destroy_stuck", kind="environment") == 0

        fake.update_pull(REPO, 1, state="closed")
        pull_event(server, fake, "closed")
        wait_for(lambda: lifecycle.get_environment(env_id).status == Status.DESTROY_FAILED, 90)
        # Retried by itself, past the old limit of three retries.
        wait_for(lambda: lifecycle.get_environment(env_id).attempts >= 5, timeout=120)
        env = lifecycle.get_environment(env_id)
        assert env.slot is not None, "the slot is freed only once a destroy succeeded"
        assert env.observed_generation != env.generation  # still wanted: it is retried

        # Every view says so, with the reason.
        wait_for(lambda: "Destroy failed" in shown(fake), timeout=30)
        assert FAILURE in shown(fake) and "retries it by itself" in shown(fake)
        assert "run log" in shown(fake)  # where the failed run's lines are
        body = api(server, f"/api/environments/{env_id}")
        assert body["status"] == "destroy_failed" and FAILURE in body["reason"]
        assert body["failed_attempts"] >= 5 and body["slot"] is not None
        # A retry is under way about half of the time (destroying): wait for a failed moment.
        wait_for(
            lambda: (
                [
                    item["id"]
                    for item in api(server, "/api/environments?status=destroy_failed")["items"]
                ]
                == [env_id]
            ),
            timeout=30,
        )
        pages: list[str] = []

        def failed_page() -> bool:
            pages[:] = [api(server, f"/environments/{env_id}")]
            return 'data-status="destroy_failed"' in pages[0]

        wait_for(failed_page, timeout=30)
        assert "The destroy failed" in pages[0] and 'id="retry-destroy"' in pages[0]
        wait_for(
            lambda: metric(server, "runbot_destroy_stuck", kind="environment") == 1, timeout=30
        )
        assert metric(server, "runbot_destroy_failures_total", kind="environment") >= 1
        doctors = []

        def doctor_warns() -> bool:
            doctors[:] = [check_stuck_destroys(server.settings)]
            return doctors[0].state is State.WARN

        wait_for(doctor_warns, timeout=30)
        doctor = doctors[0]
        assert env_id in doctor.detail
        assert FAILURE in doctor.detail and "/runbot destroy" in doctor.fix
        silo = api(server, "/api/silos/fragile")
        assert silo["used"] == 1  # the slot is still held

        # The cause is fixed: the next automatic retry succeeds.
        fix(server, f"env-{env_id}")
        wait_for(lambda: lifecycle.get_environment(env_id).status == Status.DESTROYED, 60)
        env = lifecycle.get_environment(env_id)
        assert env.slot is None and env.reason is None and env.attempts == 0
        wait_for(lambda: "Destroyed" in shown(fake) and "Destroy failed" not in shown(fake), 30)
        assert FAILURE not in shown(fake)
        wait_for(lambda: deployment_states(fake)[-1:] == ["inactive"], timeout=30)
        states = deployment_states(fake)
        assert "failure" not in states and "error" not in states, states
        body = api(server, f"/api/environments/{env_id}")
        assert body["status"] == "destroyed" and body["reason"] is None
        assert body["retry_at"] is None
        assert "The destroy failed" not in api(server, f"/environments/{env_id}")
        assert metric(server, "runbot_destroy_stuck", kind="environment") == 0
        assert api(server, "/api/silos/fragile")["used"] == 0
        assert check_stuck_destroys(server.settings).state is State.OK


def test_runbot_destroy_and_the_dashboard_action_retry_a_failed_destroy_at_once(
    tmp_path: Path, fake_github: FakeGitHub
) -> None:
    """With the backoff an hour long, `/runbot destroy` (and the dashboard's action, through
    the API it shares) runs the failed destroy again at once."""
    fake = fake_github
    hour = {"destroy_retry_base": 3600.0, "destroy_retry_max": 3600.0}
    with serving(tmp_path, fake, **hour) as server:
        lifecycle = server.runtime.lifecycle
        env_id = deployed(server, fake)
        comment(server, fake, "/runbot destroy")
        wait_for(lambda: lifecycle.get_environment(env_id).status == Status.DESTROY_FAILED, 90)
        env = lifecycle.get_environment(env_id)
        assert env.attempts == 1 and env.next_attempt_at is not None

        # Still failing: asking again runs it now (a second failed run), not in an hour.
        api(server, f"/api/environments/{env_id}/destroy", method="POST")
        wait_for(lambda: lifecycle.get_environment(env_id).attempts == 1, timeout=5)
        wait_for(lambda: len(api(server, f"/api/environments/{env_id}/runs")["items"]) == 3, 60)
        wait_for(lambda: lifecycle.get_environment(env_id).status == Status.DESTROY_FAILED, 60)

        fix(server, f"env-{env_id}")
        comment(server, fake, "/runbot destroy")
        wait_for(lambda: lifecycle.get_environment(env_id).status == Status.DESTROYED, 60)
        assert lifecycle.get_environment(env_id).slot is None
        wait_for(lambda: "Destroyed" in shown(fake) and FAILURE not in shown(fake), 30)


def test_a_silo_whose_destroy_fails_is_retried_the_same_way(
    tmp_path: Path, fake_github: FakeGitHub
) -> None:
    """A silo's destroy goes `destroy_failed`, is retried with backoff, is listed by the gauge
    and `runbot doctor`, and is destroyed once its cause is fixed."""
    fake = fake_github
    with serving(tmp_path, fake, destroy_retry_base=0.5, destroy_retry_max=1.0) as server:
        lifecycle = server.runtime.lifecycle
        lifecycle.create_silo("lonely", "fragile", {})
        wait_for(lambda: lifecycle.get_silo("lonely").status == Status.READY, timeout=60)
        api(server, "/api/silos/lonely/destroy", method="POST")
        wait_for(lambda: lifecycle.get_silo("lonely").attempts >= 3, timeout=90)
        silo = lifecycle.get_silo("lonely")
        assert silo.status == Status.DESTROY_FAILED and FAILURE in (silo.reason or "")
        body = api(server, "/api/silos/lonely")
        assert body["status"] == "destroy_failed" and body["failed_attempts"] >= 3
        # A retry is under way part of the time (destroying): each check waits for a failed moment.
        wait_for(lambda: metric(server, "runbot_destroy_stuck", kind="silo") == 1, timeout=30)
        wait_for(lambda: "silo lonely" in check_stuck_destroys(server.settings).detail, timeout=30)

        fix(server, "silo-lonely")
        wait_for(lambda: lifecycle.get_silo("lonely").status == Status.DESTROYED, timeout=60)
        assert lifecycle.get_silo("lonely").reason is None
        assert metric(server, "runbot_destroy_stuck", kind="silo") == 0
