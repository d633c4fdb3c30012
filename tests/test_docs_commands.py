"""The documentation cannot drift from the CLI: every documented `runbot` command is checked.

- Every `runbot ...` line in a fenced shell block of README.md, docs/*.md and deploy/README.md is
  parsed by the real typer/click command tree (subcommands, options, arguments, value types).
  CHANGELOG.md has no shell blocks; its inline spans are checked like the others.
- Inline `runbot ...` code spans must name real subcommands and options.
- The docs' shell blocks hold nothing but `runbot` commands (README may also `make`), so no
  command sneaks in that no test runs.
- The quick commands (`doctor`, `list`, `--help`) are run for real on a temporary setup, and the
  "Writing a stack" and "Without GitHub: the CLI" walkthroughs are run end to end with the
  embedded engine (the first on the very stack its page shows).
- The permission and event tables match what `runbot setup` puts in the manifest.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main
from typer.exceptions import TyperException
from typer.testing import CliRunner

from app.cli.main import cli
from app.setup import AUTOMATIC_EVENTS, EVENTS, PERMISSIONS
from app.stacks.catalog import load_stack
from tests.conftest import ROOT, TEMPLATES, port_range_free

# Runs the local stack on its default ports (47100...): run alone, after the parallel pass.
pytestmark = pytest.mark.serial

DOCS = [
    ROOT / "README.md",
    ROOT / "CHANGELOG.md",
    ROOT / "deploy" / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
]
SHELL_LANGUAGES = {"sh", "bash", "shell", "console", "shell-session"}
_FENCE = re.compile(r"^\s*```\s*([\w-]*)\s*$")
_INLINE = re.compile(r"`(runbot [^`]+)`")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_HEADING = re.compile(r"(#+) ")


@dataclass(frozen=True)
class DocCommand:
    where: str  # path:line
    argv: tuple[str, ...]  # without the leading "runbot"

    def __str__(self) -> str:
        return f"{self.where}: runbot {shlex.join(self.argv)}"


def fenced_blocks(path: Path) -> Iterator[tuple[str, int, list[str]]]:
    """(language, first line number, lines) of each fenced code block."""
    language, start, lines = None, 0, []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = _FENCE.match(line)
        if language is None and match:
            language, start, lines = match.group(1).lower(), number + 1, []
        elif language is not None and line.strip() == "```":
            yield language, start, lines
            language = None
        elif language is not None:
            lines.append(line)


def shell_commands(path: Path) -> Iterator[tuple[str, list[str]]]:
    """(path:line, argv) of every command line in the file's shell blocks."""
    for language, start, lines in fenced_blocks(path):
        if language not in SHELL_LANGUAGES:
            continue
        logical, first = "", start
        for offset, line in enumerate(lines):
            if not logical:
                first = start + offset
            logical += line.rstrip()
            if logical.endswith("\\"):
                logical = logical[:-1] + " "
                continue
            argv = shlex.split(logical.strip().removeprefix("$ "), comments=True)
            logical = ""
            while argv and _ASSIGNMENT.match(argv[0]):
                argv = argv[1:]
            if argv:
                yield f"{path.relative_to(ROOT)}:{first}", argv


def documented_commands() -> list[DocCommand]:
    return [
        DocCommand(where, tuple(argv[1:]))
        for path in DOCS
        for where, argv in shell_commands(path)
        if argv[0] == "runbot"
    ]


def inline_commands() -> list[DocCommand]:
    found = []
    for path in DOCS:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            for match in _INLINE.finditer(line):
                argv = shlex.split(match.group(1))
                found.append(DocCommand(f"{path.relative_to(ROOT)}:{number}", tuple(argv[1:])))
    return found


#: typer's own (vendored) click command tree, as `runbot` builds it.
ROOT_COMMAND = typer.main.get_command(cli)
#: What the documentation checks raise: typer's parse errors, and DocDrift.
PARSE_ERRORS = (TyperException,)


class DocDrift(TyperException):
    """A documented command names a subcommand or option that does not exist."""


def resolve(argv: tuple[str, ...]) -> tuple[Any, list[str], list[str]]:
    """The command an argv names, its path, and the remaining arguments."""
    command, path, rest = ROOT_COMMAND, [], list(argv)
    while getattr(command, "commands", None) is not None and rest and not rest[0].startswith("-"):
        sub = command.commands.get(rest[0])
        if sub is None:
            raise DocDrift(
                f"no command {' '.join([*path, rest[0]])!r}; known: {sorted(command.commands)}"
            )
        command, path, rest = sub, [*path, rest[0]], rest[1:]
    return command, path, rest


def parse(argv: tuple[str, ...]) -> Any:
    """Parse an argv exactly as `runbot` would (options, arguments, types), without running it."""
    command, path, rest = resolve(argv)
    try:
        command.make_context(" ".join(["runbot", *path]), rest)
    except typer.Exit as exc:  # --help
        assert exc.exit_code == 0
    return command


def check_options(argv: tuple[str, ...]) -> None:
    """Subcommands and option names only: inline spans may use placeholders for values."""
    command, _, rest = resolve(argv)
    known = {"--help"}
    for param in command.params:
        known.update(param.opts)
        known.update(param.secondary_opts)
    for token in rest:
        if token.startswith("-") and token.split("=", 1)[0] not in known:
            raise DocDrift(f"{token} is not an option of this command: {sorted(known)}")


COMMANDS = documented_commands()


def test_the_docs_document_commands() -> None:
    paths = {command.argv[:1] for command in COMMANDS}
    for expected in [("setup",), ("doctor",), ("silo",), ("env",), ("serve",)]:
        assert expected in paths, f"no documented `runbot {expected[0]}` example"


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_documented_command_parses(command: DocCommand) -> None:
    try:
        parse(command.argv)
    except PARSE_ERRORS as exc:
        pytest.fail(f"{command}: {exc.format_message()}")


@pytest.mark.parametrize("command", inline_commands(), ids=str)
def test_inline_command_names_real_options(command: DocCommand) -> None:
    try:
        check_options(command.argv)
    except PARSE_ERRORS as exc:
        pytest.fail(f"{command}: {exc.format_message()}")


@pytest.mark.parametrize(
    "argv",
    [
        ("setp",),
        ("doctor", "--replica", "2"),
        ("doctor", "--replicas", "two"),
        ("env", "create", "--pr"),
        ("env", "update"),
        ("silo", "create", "a", "b"),
    ],
)
def test_the_checker_catches_drift(argv: tuple[str, ...]) -> None:
    with pytest.raises(PARSE_ERRORS):
        parse(argv)
    if argv[:2] in (("setp",), ("doctor", "--replica")):
        with pytest.raises(DocDrift):
            check_options(argv)


def test_docs_shell_blocks_hold_only_exercised_commands() -> None:
    allowed = {"runbot", "export"}
    stray = [
        f"{where}: {shlex.join(argv)}"
        for path in DOCS
        if path.parent.name == "docs" or path == ROOT / "README.md"
        for where, argv in shell_commands(path)
        if argv[0] not in allowed | ({"make"} if path.name == "README.md" else set())
    ]
    assert stray == [], "commands no test runs (document them in deploy/README.md instead)"


@pytest.fixture
def local_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh local-mode setup: embedded engine, the shipped catalog, an empty data dir."""
    monkeypatch.setenv("RUNBOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RUNBOT_TEMPLATES_DIR", str(TEMPLATES))
    monkeypatch.setenv("RUNBOT_ENGINE", "embedded")
    return tmp_path


QUICK = {("doctor",), ("silo", "list"), ("env", "list")}
#: The shipped local stack's default `port_base` (infra-templates/local/silo/variables.tf).
LOCAL_PORT_BASE = 47100


def test_quick_documented_commands_run(local_setup: Path) -> None:
    runner = CliRunner()
    ran = []
    for command in COMMANDS:
        _, path, rest = resolve(command.argv)
        if tuple(path) not in QUICK and "--help" not in rest:
            continue
        result = runner.invoke(cli, list(command.argv))
        replicas = int(rest[rest.index("--replicas") + 1]) if "--replicas" in rest else 1
        if path == ["doctor"] and replicas > 1:
            # Documented as failing on SQLite: the `processes` row says to use PostgreSQL.
            assert result.exit_code == 1, f"{command}\n{result.output}"
            assert re.search(r"^processes\s+FAIL", result.output, re.M), result.output
        else:
            assert result.exit_code == 0, f"{command}\n{result.output}"
        assert "Traceback" not in result.output
        ran.append(tuple(path))
    assert ("doctor",) in ran and ("env", "list") in ran


def _block_after(text: str, marker: str, language: str) -> str:
    """The first fenced block of `language` after the line holding `marker`."""
    after = text[text.index(marker) :]
    match = re.search(rf"```{language}\n(.*?)\n```", after, re.S)
    assert match, f"no {language} block after {marker!r}"
    return match.group(1) + "\n"


def run_walkthrough(commands: list[DocCommand], placeholder: str) -> str:
    """Run documented commands in order; `placeholder` stands for the id `env create` prints."""
    runner = CliRunner()
    env_id = ""
    for command in commands:
        argv = [env_id if arg == placeholder and env_id else arg for arg in command.argv]
        result = runner.invoke(cli, argv)
        assert result.exit_code == 0, f"{command}\n{result.output}"
        if command.argv[:2] == ("env", "create"):
            match = re.search(r"environment (pr-\d+-[a-z0-9]{5}) requested", result.output)
            assert match, result.output
            env_id = match.group(1)
            assert "environment " + env_id + ": ready" in result.output, result.output
        elif command.argv[:2] == ("env", "list"):
            assert env_id in result.output
        elif command.argv[:2] == ("env", "logs"):
            assert "apply" in result.output, result.output
        elif command.argv[1:2] == ("destroy",):
            assert "destroyed" in result.output, result.output
    return env_id


@pytest.mark.engine
def test_writing_stacks_walkthrough_runs(
    local_setup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page's minimal stack follows the contract, and its commands deploy and destroy it."""
    page = (ROOT / "docs" / "writing-stacks.md").read_text()
    catalog = local_setup / "catalog"
    for part in ("silo", "instance"):
        target = catalog / "web" / part / "main.tf"
        target.parent.mkdir(parents=True)
        target.write_text(_block_after(page, f"infra-templates/web/{part}/main.tf", "hcl"))
    stack = load_stack("web", catalog / "web")
    assert "url" in stack.instance.outputs
    monkeypatch.setenv("RUNBOT_TEMPLATES_DIR", str(catalog))
    walkthrough = [
        command
        for command in COMMANDS
        if command.where.startswith("docs/writing-stacks.md") and command.argv[0] in ("silo", "env")
    ]
    assert [c.argv[:2] for c in walkthrough] == [
        ("silo", "create"),
        ("env", "create"),
        ("env", "list"),
        ("env", "destroy"),
        ("silo", "destroy"),
    ]
    env_id = run_walkthrough(walkthrough, "pr-1-k3x9q")
    assert env_id.startswith("pr-1-")


def section_commands(page: str, heading: str) -> list[DocCommand]:
    """The documented commands of `page` (a path under ROOT) between `heading` and the next."""
    lines = (ROOT / page).read_text().splitlines()
    first = lines.index(heading) + 1
    level = len(heading) - len(heading.lstrip("#"))
    last = next(
        (
            number
            for number, line in enumerate(lines[first:], start=first + 1)
            if (match := _HEADING.match(line)) and len(match.group(1)) <= level
        ),
        len(lines) + 1,
    )
    return [
        command
        for command in COMMANDS
        if command.where.rpartition(":")[0] == page
        and first < int(command.where.rpartition(":")[2]) < last
    ]


@pytest.mark.engine
def test_cli_walkthrough_runs(local_setup: Path) -> None:
    """operating.md's "Without GitHub: the CLI" block, plus its log commands, for real."""
    if not port_range_free(LOCAL_PORT_BASE, 1):
        pytest.skip(f"port {LOCAL_PORT_BASE} (the local stack's default port_base) is in use")
    cli_block = section_commands("docs/operating.md", "## Without GitHub: the CLI")
    logs = section_commands("docs/operating.md", "## Logs")
    assert [c.argv[:2] for c in cli_block] == [
        ("silo", "create"),
        ("env", "create"),
        ("env", "list"),
        ("env", "update"),
        ("env", "logs"),
        ("env", "destroy"),
        ("silo", "destroy"),
    ]
    assert logs and all(c.argv[:2] == ("env", "logs") for c in logs)
    env_id = run_walkthrough([*cli_block[:5], *logs, *cli_block[5:]], "pr-42-k3x9q")
    assert env_id.startswith("pr-42-")


def _table(page: str, heading: str) -> dict[str, str]:
    """First column -> second column of the first table after `heading`."""
    section = page[page.index(heading) :]
    rows: dict[str, str] = {}
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 2 and not set(cells[0]) <= {"-"}:
            rows[cells[0].strip("`")] = cells[1]
        elif rows and not line.startswith("|"):
            break
    return rows


def test_permission_and_event_tables_match_the_manifest() -> None:
    page = (ROOT / "docs" / "github-app.md").read_text()
    permissions = _table(page, "## Permissions, and why each")
    permissions.pop("Permission", None)
    assert permissions == {name: access for name, (access, _) in PERMISSIONS.items()}
    events_section = page[page.index("## Events, and why each") :]
    subscribed = _table(events_section, "The App subscribes to:")
    automatic = _table(events_section, "lists them (")
    for table in (subscribed, automatic):
        table.pop("Event", None)
    assert list(subscribed) == list(EVENTS)
    assert list(automatic) == list(AUTOMATIC_EVENTS)
