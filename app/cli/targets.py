"""`runbot silo ...` and `runbot env ...`: operate silos and environments from a terminal.

Commands that change something record the desired state, then (unless --no-wait) run a worker
in the foreground until the target converges, streaming the engine's phases and log lines.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from app.cli.common import (
    VarOption,
    WaitOption,
    converge,
    env_done,
    fail,
    guarded,
    parse_vars,
    pr_label,
    runtime,
    show_env,
    show_silo,
    silo_done,
)
from app.engine.logs import read_log
from app.stacks.catalog import StackSource

silo_cli = typer.Typer(
    help="Shared silos: created once, hosting many environments.", no_args_is_help=True
)
env_cli = typer.Typer(help="Per-PR environments inside a silo.", no_args_is_help=True)


# ----- silos -----------------------------------------------------------------------------------


@silo_cli.command("create")
def silo_create(
    name: str,
    stack: Annotated[
        str, typer.Option(help="Stack in the catalog (infra-templates/<stack>)")
    ] = "local",
    var: VarOption = None,
    git: Annotated[str | None, typer.Option(help="Take the stack from this git repository")] = None,
    ref: Annotated[str, typer.Option(help="Git branch, tag or SHA")] = "main",
    path: Annotated[str, typer.Option(help="Stack directory inside the git repository")] = "",
    wait: WaitOption = True,
) -> None:
    """Create a silo from a stack's silo template."""
    rt = runtime()

    def act() -> None:
        source = StackSource(kind="git", url=git, ref=ref, path=path) if git else None
        rt.lifecycle.create_silo(name, stack, parse_vars(var), source)
        if wait:
            converge(rt, silo_done(rt, name))
        show_silo(rt, rt.lifecycle.get_silo(name))

    guarded(act)


@silo_cli.command("update")
def silo_update(name: str, var: VarOption = None, wait: WaitOption = True) -> None:
    """Re-apply a silo with new variables or a changed template."""
    rt = runtime()

    def act() -> None:
        rt.lifecycle.update_silo(name, parse_vars(var) if var else None)
        if wait:
            converge(rt, silo_done(rt, name))
        show_silo(rt, rt.lifecycle.get_silo(name))

    guarded(act)


@silo_cli.command("rotate-token")
def silo_rotate_token(name: str, wait: WaitOption = True) -> None:
    """Give a silo a new runbot_silo_token; the old one stops working now."""
    rt = runtime()

    def act() -> None:
        rt.lifecycle.rotate_silo_token(name)
        if wait:
            converge(rt, silo_done(rt, name))
        show_silo(rt, rt.lifecycle.get_silo(name))

    guarded(act)


@silo_cli.command("destroy")
def silo_destroy(
    name: str,
    force: Annotated[bool, typer.Option(help="Destroy its environments first")] = False,
    wait: WaitOption = True,
) -> None:
    """Destroy a silo; refused while it hosts live environments unless --force."""
    rt = runtime()

    def act() -> None:
        rt.lifecycle.destroy_silo(name, force=force)
        if wait:
            converge(rt, silo_done(rt, name))
        show_silo(rt, rt.lifecycle.get_silo(name))

    guarded(act)


@silo_cli.command("list")
def silo_list() -> None:
    """List silos."""
    rt = runtime()
    silos = rt.lifecycle.list_silos()
    if not silos:
        typer.echo("no silos yet: runbot silo create local-default --stack local")
    for silo in silos:
        typer.echo(
            f"{silo.name:24} {silo.status:11} stack={silo.stack:12} capacity={silo.capacity or '-'}"
        )


@silo_cli.command("show")
def silo_show(name: str) -> None:
    """Show a silo, with its outputs (sensitive ones masked)."""
    rt = runtime()
    guarded(lambda: show_silo(rt, rt.lifecycle.get_silo(name)))


# ----- environments ----------------------------------------------------------------------------


@env_cli.command("create")
def env_create(
    silo: Annotated[str, typer.Option(help="Silo to create the environment in")] = "local-default",
    repo: Annotated[str, typer.Option(help="owner/name")] = "example/app",
    pr: Annotated[int, typer.Option(help="Pull request number")] = 1,
    sha: Annotated[str, typer.Option(help="Head commit SHA")] = "0000000",
    ref: Annotated[str, typer.Option(help="Head branch name")] = "",
    author: Annotated[str, typer.Option(help="PR author login")] = "",
    var: VarOption = None,
    wait: WaitOption = True,
) -> None:
    """Create an environment for a PR inside a silo."""
    rt = runtime()

    def act() -> None:
        env = rt.lifecycle.create_environment(silo, repo, pr, sha, ref, author, parse_vars(var))
        typer.echo(f"environment {env.id} requested")
        if wait:
            converge(rt, env_done(rt, env.id))
        show_env(rt, rt.lifecycle.get_environment(env.id))

    guarded(act)


@env_cli.command("update")
def env_update(
    env_id: str,
    sha: Annotated[str | None, typer.Option(help="New head commit SHA")] = None,
    ref: Annotated[str | None, typer.Option(help="New head branch name")] = None,
    var: VarOption = None,
    wait: WaitOption = True,
) -> None:
    """Update an environment to a new SHA or variables (or retry a failed one)."""
    rt = runtime()

    def act() -> None:
        if sha is None and ref is None and not var:
            rt.lifecycle.retry(env_id)
        else:
            rt.lifecycle.update_environment(env_id, sha, ref, parse_vars(var) if var else None)
        if wait:
            converge(rt, env_done(rt, env_id))
        show_env(rt, rt.lifecycle.get_environment(env_id))

    guarded(act)


@env_cli.command("destroy")
def env_destroy(env_id: str, wait: WaitOption = True) -> None:
    """Destroy an environment."""
    rt = runtime()

    def act() -> None:
        rt.lifecycle.destroy_environment(env_id)
        if wait:
            converge(rt, env_done(rt, env_id))
        show_env(rt, rt.lifecycle.get_environment(env_id))

    guarded(act)


@env_cli.command("list")
def env_list(
    all_: Annotated[bool, typer.Option("--all", help="Include destroyed")] = False,
) -> None:
    """List environments."""
    rt = runtime()
    envs = rt.lifecycle.list_environments(include_destroyed=all_)
    if not envs:
        typer.echo("no environments")
    for env in envs:
        typer.echo(
            f"{env.id:22} {env.status:11} {pr_label(env, 6)} slot={env.slot!s:4} {env.url or ''}"
        )


@env_cli.command("show")
def env_show(env_id: str) -> None:
    """Show an environment."""
    rt = runtime()
    guarded(lambda: show_env(rt, rt.lifecycle.get_environment(env_id)))


@env_cli.command("logs")
def env_logs(
    env_id: str,
    run: Annotated[int | None, typer.Option(help="Run id (default: the latest)")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing while the run goes on")
    ] = False,
) -> None:
    """Print the engine log of an environment's latest (or given) run."""
    rt = runtime()

    def act() -> None:
        env = rt.lifecycle.get_environment(env_id)
        run_id = run or env.last_run_id
        if run_id is None:
            fail(f"environment {env_id} has no runs yet")
        cursor = 0
        while True:
            text, cursor = read_log(rt.db, run_id or 0, cursor)
            sys.stdout.write(text)
            sys.stdout.flush()
            from app.db.models import Run

            with rt.db.session() as session:
                row = session.get(Run, run_id)
            if not follow or row is None or row.status != "running":
                break
            import time

            time.sleep(0.5)

    guarded(act)


# ----- the App ---------------------------------------------------------------------------------
