"""Issue 18: the status comment, the check run and the CLI tell where an environment came from:
taken from the warm pool, made fresh after a claim failed, or made for its PR. Rendering is
pure; the CLI listing reads a real database.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli.main import cli
from app.db.models import Environment, PullRequest, Silo
from app.github.checkrun import CheckStatus, desired_check_run
from app.github.comment import StatusView, render_status_comment, render_status_reply
from app.github.origin import PoolOrigin
from app.github.status import pool_origin
from app.lifecycle.pool import FALLBACK_TRIGGER
from app.runtime import build_runtime
from tests.conftest import make_settings
from tests.test_comment_rendering import DEPLOYED
from tests.test_comment_rendering import view as rendering_view
from tests.test_github_writes import env as writes_env
from tests.test_github_writes import pull as writes_pull

CLAIMED_LINE = (
    "This environment was taken from the warm pool of silo `pool`; "
    "only this PR's change was applied."
)
CLAIMING_LINE = (
    "This environment was taken from the warm pool of silo `pool`; "
    "only this PR's change is being applied."
)
FALLBACK_LINE = "The warm instance failed to take this PR's change; runbot made a fresh one."
CLAIM_FAILED_LINE = "The warm instance failed to take this PR's change; runbot makes a fresh one."


def view(origin: PoolOrigin, state: str = "ready", **changes: object) -> StatusView:
    fields: dict[str, object] = {"silo": "pool", "pool_origin": origin, **changes}
    return dataclasses.replace(rendering_view(state), **fields)


@pytest.mark.parametrize(
    ("origin", "state", "line"),
    [
        (PoolOrigin.CLAIMED, "ready", CLAIMED_LINE),
        (PoolOrigin.CLAIMING, "updating", CLAIMING_LINE),
        (PoolOrigin.CLAIM_FAILED, "failed", CLAIM_FAILED_LINE),
        (PoolOrigin.FALLBACK, "ready", FALLBACK_LINE),
    ],
)
def test_the_comment_has_one_warm_pool_row_per_origin(
    origin: PoolOrigin, state: str, line: str
) -> None:
    body = render_status_comment(view(origin, state))
    rows = [row for row in body.splitlines() if row.startswith("| **Warm pool** |")]
    assert rows == [f"| **Warm pool** | {line} |"]
    # The `/runbot status` reply shows the same table, so the same row.
    assert f"| **Warm pool** | {line} |" in render_status_reply(view(origin, state), None)


def test_an_environment_made_for_its_pr_says_nothing_of_the_pool() -> None:
    body = render_status_comment(view(PoolOrigin.NONE))
    assert "warm pool" not in body.lower() and "warm instance" not in body.lower()


def test_an_odd_silo_name_is_escaped_in_the_pool_row() -> None:
    body = render_status_comment(view(PoolOrigin.CLAIMED, silo="po|ol <b>"))
    (row,) = [r for r in body.splitlines() if r.startswith("| **Warm pool** |")]
    assert "silo po\\|ol &lt;b&gt;;" in row and row.count(" | ") == 1


def test_without_a_silo_the_row_names_just_the_warm_pool() -> None:
    body = render_status_comment(view(PoolOrigin.CLAIMED, silo=None))
    assert "taken from the warm pool; only this PR's change was applied." in body


def env(**fields: object) -> Environment:
    return writes_env(silo_name="pool", deployed_sha=DEPLOYED, head_sha=DEPLOYED, **fields)


def pull() -> PullRequest:
    return writes_pull(head_sha=DEPLOYED, enabled=True)


def test_the_check_run_summary_carries_the_same_line() -> None:
    ready = desired_check_run(pull(), env(), view(PoolOrigin.CLAIMED))
    assert ready is not None and ready.conclusion == "success"
    assert ready.summary.splitlines()[-1] == CLAIMED_LINE
    failed = desired_check_run(
        pull(), env(status="failed"), view(PoolOrigin.CLAIM_FAILED, "failed", reason="boom")
    )
    assert failed is not None and failed.conclusion == "failure"
    assert failed.summary == f"The environment failed.\n\n{CLAIM_FAILED_LINE}\n\nboom"
    plain = desired_check_run(pull(), env(pool_state=None), view(PoolOrigin.NONE))
    assert plain is not None and plain.summary == (
        "The environment is ready: https://pr-12.preview.example.com/"
    )
    # A different line is a different check run: the digest moves, so it is rewritten.
    fresh = desired_check_run(pull(), env(), view(PoolOrigin.FALLBACK))
    assert fresh is not None and fresh.status is CheckStatus.COMPLETED
    assert fresh.digest != ready.digest and FALLBACK_LINE in fresh.summary


@pytest.mark.parametrize(
    ("fields", "origin"),
    [
        ({"pool_state": None}, PoolOrigin.NONE),
        ({"pool_state": "claiming", "status": "updating"}, PoolOrigin.CLAIMING),
        ({"pool_state": "claiming", "status": "failed"}, PoolOrigin.CLAIM_FAILED),
        ({"pool_state": "claimed"}, PoolOrigin.CLAIMED),
        ({"pool_state": "claimed", "status": "failed"}, PoolOrigin.CLAIMED),
        (
            {"pool_state": "claimed", "status": "destroying", "trigger": FALLBACK_TRIGGER},
            PoolOrigin.CLAIM_FAILED,
        ),
        ({"pool_state": "fallback", "trigger": FALLBACK_TRIGGER}, PoolOrigin.FALLBACK),
    ],
)
def test_the_origin_follows_the_rows_pool_state(
    fields: dict[str, object], origin: PoolOrigin
) -> None:
    assert pool_origin(env(**fields)) is origin


def test_the_cli_list_labels_warm_instances_not_pr_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = build_runtime(make_settings(tmp_path))
    with runtime.db.session() as session:
        session.add(Silo(name="pool", stack="local", status="ready", observed_generation=1))
        session.commit()
        session.add(env(id="warm-0a1b2c3d", pr_number=0, pool_state="warm"))
        session.add(env(id="pr-7-abc", pr_number=7, pool_state="claimed"))
        session.commit()
    monkeypatch.setenv("RUNBOT_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()

    listed = runner.invoke(cli, ["env", "list"], catch_exceptions=False)
    assert listed.exit_code == 0, listed.output
    lines = {line.split()[0]: line for line in listed.output.splitlines()}
    assert "o/r warm pool" in lines["warm-0a1b2c3d"] and "#0" not in lines["warm-0a1b2c3d"]
    assert "o/r#7" in lines["pr-7-abc"] and "warm pool" not in lines["pr-7-abc"]

    shown = runner.invoke(cli, ["env", "show", "warm-0a1b2c3d"], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    assert "pr        o/r warm pool" in shown.output and "#0" not in shown.output
    assert "pool      warm" in shown.output


def test_the_cli_lists_each_pool_with_its_ready_starting_and_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, datetime

    from app.db.models import WarmPool

    monkeypatch.setenv("RUNBOT_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()
    runtime = build_runtime(make_settings(tmp_path))
    empty = runner.invoke(cli, ["pool", "list"], catch_exceptions=False)
    assert empty.exit_code == 0 and "no warm pools" in empty.output
    assert "runbot_pool_size" in empty.output
    with runtime.db.session() as session:
        session.add(Silo(name="pool", stack="local", status="ready", observed_generation=1))
        session.add(
            WarmPool(
                silo_name="pool",
                repository="o/r",
                size=3,
                paused_until=datetime(2026, 5, 1, 12, 0, tzinfo=UTC),
            )
        )
        session.commit()
        session.add(env(id="warm-00000001", pr_number=0, pool_state="warm"))
        session.add(env(id="warm-00000002", pr_number=0, pool_state="warm", status="failed"))
        session.add(env(id="warm-00000003", pr_number=0, pool_state="warm", generation=3))
        session.add(env(id="pr-7-abc", pr_number=7, pool_state="claimed"))  # not the pool's
        session.commit()
    listed = runner.invoke(cli, ["pool", "list"], catch_exceptions=False)
    assert listed.exit_code == 0, listed.output
    [line] = listed.output.splitlines()
    assert line.split()[:2] == ["pool", "o/r"]
    assert "size=3 ready=1 starting=1 failed=1" in line
    assert "paused until 2026-05-01 12:00:00 UTC" in line
