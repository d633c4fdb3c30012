"""The notifier's choice of its next GitHub write, on its own: rows in, a planned write out.

The end-to-end tests (test_github_e2e, test_github_faults) show the writes landing on the fake
GitHub in order; these pin the order itself, one step at a time, with no GitHub and no database.
"""

from __future__ import annotations

from datetime import UTC, datetime

from app.db.models import Environment, PullRequest
from app.github.comment import StatusView
from app.github.writes import (
    PlannedWrite,
    WriteKind,
    digest,
    next_deployment_write,
    next_write,
)

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
SHA = "c" * 40


def pull(**values: object) -> PullRequest:
    return PullRequest(id="o/r#1", repository="o/r", number=1, **values)


def env(**values: object) -> Environment:
    fields: dict[str, object] = {
        "id": "pr-1-abcde",
        "silo_name": "local-default",
        "stack": "local",
        "repository": "o/r",
        "pr_number": 1,
        "head_sha": SHA,
        "status": "ready",
        "generation": 2,
        "observed_generation": 2,
        "url": "http://127.0.0.1:9000/",
    }
    fields.update(values)
    return Environment(**fields)


def view(state: str = "ready", **values: object) -> StatusView:
    return StatusView(
        repository="o/r", pr_number=1, state=state, now=NOW, log_url="http://runbot/l", **values
    )


def test_a_config_problem_comes_before_everything_else() -> None:
    planned = next_write(
        pull(), env(), view(), config_body="broken", status_body="status", settling=False
    )
    assert planned == PlannedWrite(WriteKind.CONFIG_ERROR, body="broken")
    sent = pull(config_comment_digest=digest("broken"))
    after = next_write(sent, env(), view(), config_body="broken", status_body="s", settling=False)
    assert after is not None and after.kind == WriteKind.COMMENT


def test_a_changed_comment_is_written_unless_its_state_is_settling() -> None:
    shown = next_write(pull(), env(), view(), config_body=None, status_body="s", settling=False)
    assert shown == PlannedWrite(WriteKind.COMMENT, body="s", shows_outcome=True)
    held = next_write(pull(), env(), view(), config_body=None, status_body="s", settling=True)
    assert held == PlannedWrite(WriteKind.SETTLE)
    moving = env(status="creating", observed_generation=1)
    flux = next_write(
        pull(), moving, view("creating"), config_body=None, status_body="s", settling=False
    )
    assert flux == PlannedWrite(WriteKind.COMMENT, body="s", shows_outcome=False)


def test_an_up_to_date_comment_hands_over_to_the_deployment() -> None:
    current = pull(comment_id=7, comment_digest=digest("s"))
    planned = next_write(current, env(), view(), config_body=None, status_body="s", settling=True)
    assert planned == PlannedWrite(
        WriteKind.DEPLOYMENT,
        sha=SHA,
        key=f"pr-1-abcde@{SHA}",
        description="runbot environment pr-1-abcde",
    )
    assert (
        next_write(current, None, None, config_body=None, status_body=None, settling=False) is None
    )


def test_the_deployment_steps_in_order() -> None:
    key = f"pr-1-abcde@{SHA}"
    steps: list[str] = []
    row = pull(
        deployment_id=10, deployment_key="pr-1-abcde@" + "d" * 40, deployment_state="success"
    )
    for _ in range(6):
        planned = next_deployment_write(row, env(), view())
        if planned is None:
            break
        steps.append(f"{planned.kind}:{planned.state}")
        if planned.kind == WriteKind.DEPLOYMENT:
            row = replace_row(row, deployment_id=11, deployment_key=key, deployment_state=None)
        else:
            assert planned.log_url == "http://runbot/l"
            row = replace_row(row, deployment_state=planned.state)
    assert steps == [
        "deployment_status:inactive",  # the superseded commit's deployment first
        "deployment:",
        "deployment_status:in_progress",  # it always shows that it started
        "deployment_status:success",
    ]
    success = next_deployment_write(replace_row(row, deployment_state="in_progress"), env(), view())
    assert success is not None and success.url == "http://127.0.0.1:9000/"


def test_a_destroyed_environment_ends_its_deployment_inactive_once() -> None:
    gone = env(status="destroyed", deployed_sha=SHA, url=None)
    live = pull(deployment_id=10, deployment_key=f"pr-1-abcde@{SHA}", deployment_state="success")
    planned = next_deployment_write(live, gone, view("destroyed"))
    assert planned is not None and (planned.state, planned.deployment_id) == ("inactive", 10)
    done = replace_row(live, deployment_state="inactive")
    assert next_deployment_write(done, gone, view("destroyed")) is None


def test_a_queued_environment_gets_no_deployment_before_it_runs() -> None:
    waiting = env(status="queued", observed_generation=1)
    assert next_deployment_write(pull(), waiting, view("queued")) is None
    nothing_deployed = env(status="destroyed", deployed_sha=None, head_sha="")
    assert next_deployment_write(pull(), nothing_deployed, view("destroyed")) is None


def replace_row(row: PullRequest, **values: object) -> PullRequest:
    copy = row.model_copy()
    for name, value in values.items():
        setattr(copy, name, value)
    return copy
