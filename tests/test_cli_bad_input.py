"""Bad input through the CLI: a clear sentence, a non-zero exit, and nothing lost or recorded."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli.main import cli
from app.lifecycle.states import Status
from app.runtime import build_runtime
from tests.conftest import TEMPLATES, make_settings
from tests.helpers import fetch, processes_matching


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    """The real catalog plus two broken stacks."""
    root = tmp_path / "templates"
    shutil.copytree(TEMPLATES / "local", root / "local")
    shutil.copytree(TEMPLATES / "local", root / "broken")
    (root / "broken" / "instance" / "main.tf").write_text(
        (root / "broken" / "instance" / "main.tf").read_text()
        + '\nresource "terraform_data" "x" {\n  input = \n}\n'
    )
    shutil.copytree(TEMPLATES / "local", root / "needy")
    (root / "needy" / "instance" / "needs.tf").write_text(
        'variable "api_key" {\n  type = string\n}\n'
    )
    (root / "needy" / "runbot.yml").write_text("repo_vars: [greeting, api_key]\n")
    return root


@pytest.fixture
def run(tmp_path: Path, templates: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RUNBOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RUNBOT_TEMPLATES_DIR", str(templates))
    monkeypatch.setenv("RUNBOT_ENGINE", "embedded")
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(cli, list(args), catch_exceptions=False)

    return invoke


def runtime(tmp_path: Path, templates: Path):
    return build_runtime(make_settings(tmp_path, templates_dir=templates))


def test_unknown_stack(run, tmp_path: Path, templates: Path) -> None:
    result = run("silo", "create", "s1", "--stack", "nope")
    assert result.exit_code == 1
    assert "unknown stack 'nope'" in result.output and "local" in result.output
    assert runtime(tmp_path, templates).lifecycle.list_silos() == []


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", "UPPER"])
def test_silo_names_with_path_traversal(run, name: str, tmp_path: Path, templates: Path) -> None:
    result = run("silo", "create", name, "--stack", "local")
    assert result.exit_code == 1
    assert "not allowed" in result.output
    assert runtime(tmp_path, templates).lifecycle.list_silos() == []


@pytest.mark.parametrize("stack", ["../local", "../../etc", "local/../local"])
def test_stack_names_with_path_traversal(run, stack: str) -> None:
    result = run("silo", "create", "s1", "--stack", stack)
    assert result.exit_code == 1
    assert "not allowed" in result.output


def test_hcl_syntax_error_names_file_and_line(run, tmp_path: Path, templates: Path) -> None:
    result = run("silo", "create", "s1", "--stack", "broken")
    assert result.exit_code == 1
    lines = (templates / "broken" / "instance" / "main.tf").read_text().splitlines()
    bad_line = next(i for i, text in enumerate(lines, 1) if text.strip() == "input =") + 1
    assert f"main.tf:{bad_line}" in result.output or f"main.tf:{bad_line - 1}" in result.output
    assert runtime(tmp_path, templates).lifecycle.list_silos() == []


def test_variable_of_the_wrong_type(run, tmp_path: Path, templates: Path) -> None:
    result = run("silo", "create", "s1", "--stack", "local", "--var", "capacity=lots")
    assert result.exit_code == 1
    assert "capacity" in result.output and "number" in result.output
    assert runtime(tmp_path, templates).lifecycle.list_silos() == []


def test_undeclared_silo_variable(run) -> None:
    result = run("silo", "create", "s1", "--stack", "local", "--var", "colour=blue")
    assert result.exit_code == 1
    assert "declares no variable 'colour'" in result.output


@pytest.mark.engine
def test_missing_required_variable_and_silo_destroy_with_live_environments(
    run, tmp_path: Path, templates: Path, port_base: int
) -> None:
    assert (
        run(
            "silo", "create", "needy-default", "--stack", "needy", "--var", f"port_base={port_base}"
        ).exit_code
        == 0
    )
    result = run("env", "create", "--silo", "needy-default", "--pr", "3", "--sha", "abc1234")
    assert result.exit_code == 1
    assert "api_key" in result.output and "needs.tf:1" in result.output and "vars:" in result.output
    rt = runtime(tmp_path, templates)
    assert rt.lifecycle.list_environments() == []

    created = run(
        "env",
        "create",
        "--silo",
        "needy-default",
        "--pr",
        "3",
        "--sha",
        "abc1234",
        "--var",
        "api_key=k-123",
    )
    assert created.exit_code == 0, created.output
    env = rt.lifecycle.list_environments()[0]
    assert env.status == Status.READY

    refused = run("silo", "destroy", "needy-default")
    assert refused.exit_code == 1
    assert "still has 1 live environment" in refused.output and "--force" in refused.output
    assert rt.lifecycle.get_silo("needy-default").status == Status.READY  # nothing lost
    assert rt.lifecycle.get_environment(env.id).status == Status.READY
    assert env.id in fetch(env.url or "").text

    forced = run("silo", "destroy", "needy-default", "--force")
    assert forced.exit_code == 0, forced.output
    assert rt.lifecycle.get_environment(env.id).status == Status.DESTROYED
    assert processes_matching(env.id) == []


@pytest.mark.engine
def test_variable_values_with_metacharacters_pass_verbatim(
    run, tmp_path: Path, templates: Path, port_base: int
) -> None:
    assert run("silo", "create", "local-default", "--var", f"port_base={port_base}").exit_code == 0
    canary = tmp_path / "pwned"
    hostile = f'it\'s "quoted"; $(touch {canary}) `touch {canary}` & echo\nsecond line'
    ref = f"feat/$(touch {canary});rm -rf x"
    result = run(
        "env",
        "create",
        "--pr",
        "9",
        "--sha",
        "abc1234",
        "--ref",
        ref,
        "--var",
        f"greeting={hostile}",
    )
    assert result.exit_code == 0, result.output
    env = runtime(tmp_path, templates).lifecycle.list_environments()[0]
    page = fetch(env.url or "").text
    import html

    assert html.escape(hostile) in page or html.escape(hostile, quote=False) in page
    assert html.escape(ref) in page or html.escape(ref, quote=False) in page
    assert not canary.exists()
    assert run("env", "destroy", env.id).exit_code == 0


def test_engine_missing_cli(run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOT_ENGINE", "/nonexistent/tofu")
    result = run("silo", "create", "s1", "--stack", "local")
    assert result.exit_code == 1
    assert "not an executable" in result.output and "RUNBOT_ENGINE=embedded" in result.output


def test_bad_setting_names_the_setting(run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOT_MAX_CONCURRENT_RUNS", "zero")
    result = run("silo", "list")
    assert result.exit_code == 1
    assert "RUNBOT_MAX_CONCURRENT_RUNS" in result.output


def test_unknown_environment(run) -> None:
    result = run("env", "show", "pr-1-zzzzz")
    assert result.exit_code == 1
    assert "no environment 'pr-1-zzzzz'" in result.output
