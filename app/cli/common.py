"""What every `runbot` command shares: failing with a message, the runtime, --var, and
converging a target in the foreground while showing its progress."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Annotated, Any, NoReturn

import typer

from app.db.models import Environment, Silo
from app.db.session import DatabaseError
from app.engine.runner import EngineError
from app.lifecycle.outputs import public_outputs
from app.lifecycle.pool import WARM
from app.lifecycle.service import LifecycleError
from app.lifecycle.states import Status
from app.runtime import Runtime, build_runtime
from app.settings import SettingsError, load_settings
from app.stacks.catalog import StackError

VarOption = Annotated[
    list[str] | None, typer.Option("--var", "-v", help="NAME=VALUE (JSON values are parsed)")
]
WaitOption = Annotated[
    bool, typer.Option("--wait/--no-wait", help="Run the change now and show progress")
]

EXPECTED_ERRORS = (LifecycleError, StackError, EngineError, SettingsError, DatabaseError)


def fail(message: str, code: int = 1) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def runtime() -> Runtime:
    try:
        return build_runtime(load_settings())
    except (SettingsError, DatabaseError) as exc:
        fail(str(exc))
        raise  # unreachable; keeps type checkers honest


def parse_vars(pairs: list[str] | None) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for pair in pairs or []:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            fail(f"--var '{pair}' must look like NAME=VALUE")
        try:
            result[name] = json.loads(raw)
        except ValueError:
            result[name] = raw
    return result


def _echo_line(label: str, line: str) -> None:
    typer.secho(f"  {label} │ ", fg=typer.colors.BRIGHT_BLACK, nl=False)
    typer.echo(line)


def _echo_phase(label: str, phase: str) -> None:
    typer.secho(f"▶ {label}: {phase}", fg=typer.colors.CYAN, bold=True)


def converge(rt: Runtime, done: Callable[[], bool]) -> None:
    reconciler = rt.reconciler(echo_line=_echo_line, echo_phase=_echo_phase)
    try:
        asyncio.run(reconciler.drain(done, timeout=rt.settings.engine_timeout * 2))
    except KeyboardInterrupt:
        fail("interrupted; the engine was asked to stop and the target can be retried", 130)


def _settled(row: Silo | Environment | None) -> bool:
    if row is None:
        return True
    if row.status in (Status.QUEUED, Status.DESTROY_FAILED) and row.lease_owner is None:
        return True  # queued, or a failed destroy that is retried later (`runbot doctor`)
    return row.observed_generation >= row.generation and row.lease_owner is None


def silo_done(rt: Runtime, name: str) -> Callable[[], bool]:
    return lambda: _settled(rt.lifecycle.get_silo(name))


def env_done(rt: Runtime, env_id: str) -> Callable[[], bool]:
    return lambda: _settled(rt.lifecycle.get_environment(env_id))


def show_silo(rt: Runtime, silo: Silo) -> None:
    typer.echo(f"silo {silo.name}: {silo.status}" + (f" ({silo.reason})" if silo.reason else ""))
    typer.echo(
        f"  stack     {silo.stack}"
        + (f" @ {silo.stack_source.get('commit')}" if silo.stack_source.get("commit") else "")
    )
    typer.echo(f"  capacity  {silo.capacity or '-'}")
    for name, value in public_outputs(silo.outputs).items():
        typer.echo(f"  output    {name} = {json.dumps(value)}")
    if silo.status in (Status.FAILED, Status.DESTROY_FAILED):
        raise typer.Exit(1)


def pr_label(env: Environment, width: int = 0) -> str:
    """`owner/repo#12`, or `owner/repo warm pool` for an unclaimed pool instance: its PR
    number is 0, and "PR #0" would send an operator looking for a PR that does not exist."""
    if env.pool_state == WARM:
        return f"{env.repository} {'warm pool':<{width}}"
    return f"{env.repository}#{env.pr_number:<{width}}"


def show_env(rt: Runtime, env: Environment) -> None:
    typer.echo(f"environment {env.id}: {env.status}" + (f" ({env.reason})" if env.reason else ""))
    typer.echo(f"  pr        {pr_label(env)}  sha {env.head_sha}  ref {env.head_ref!r}")
    if env.pool_state:
        typer.echo(f"  pool      {env.pool_state}")
    typer.echo(f"  silo      {env.silo_name}  slot {env.slot if env.slot is not None else '-'}")
    typer.echo(f"  url       {env.url or '-'}")
    if env.expires_at:
        typer.echo(f"  expires   {env.expires_at.isoformat(timespec='seconds')}")
    for name, value in public_outputs(env.outputs).items():
        typer.echo(f"  output    {name} = {json.dumps(value)}")
    if env.status in (Status.FAILED, Status.DESTROY_FAILED):
        typer.echo(f"  logs      runbot env logs {env.id}")
        raise typer.Exit(1)


def guarded(action: Callable[[], None]) -> None:
    try:
        action()
    except EXPECTED_ERRORS as exc:
        fail(str(exc))
