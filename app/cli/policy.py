"""`runbot policy check` and `runbot policy explain`: the operator policy from a terminal.

Both read the file itself. What a running `runbot serve` holds (it keeps the old policy when a
new version is bad) is at `GET /api/policy/{owner}/{name}` and in its log.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import fail
from app.policy.explain import explain as explain_policy
from app.policy.explain import render
from app.policy.load import PolicyError, load_policy
from app.settings import SettingsError, load_settings

_REPOSITORY = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")

policy_cli = typer.Typer(
    help="The operator policy (RUNBOT_POLICY_FILE): check a file, explain a repository.",
    no_args_is_help=True,
)


@policy_cli.command("check")
def check(
    file: Annotated[Path, typer.Argument(help="The policy file to validate")],
) -> None:
    """Validate a policy file; on a problem, name its line and key and exit 1."""
    try:
        loaded = load_policy(file)
    except PolicyError as exc:
        fail(str(exc))
    count = len(loaded.document.repos)
    entries = "1 repos entry" if count == 1 else f"{count} repos entries"
    typer.echo(f"{loaded.describe()}: ok (default and {entries})")


@policy_cli.command("explain")
def explain(
    repository: Annotated[str, typer.Argument(help="owner/name")],
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="A policy file (default: RUNBOT_POLICY_FILE)"),
    ] = None,
) -> None:
    """Print the policy in force for a repository and where each value comes from."""
    if not _REPOSITORY.fullmatch(repository):
        fail(f"{repository!r} is not owner/name; write it like octo-org/web")
    try:
        path = file if file is not None else load_settings().policy_file
        loaded = load_policy(path)
    except SettingsError as exc:  # a PolicyError too
        fail(str(exc))
    typer.echo(render(explain_policy(loaded, repository)))
