"""`runbot engine exec`: what a Kubernetes executor's pod runs as its PID 1."""

from __future__ import annotations

from typing import Annotated

import typer

engine_cli = typer.Typer(help="The engine side of the kubernetes executor.", no_args_is_help=True)


@engine_cli.command("exec")
def exec_run(
    run: Annotated[int, typer.Option("--run", help="The run id the Job was made for")],
) -> None:
    """Fetch run RUN's signed spec and template from runbot's API (RUNBOT_RUN_CALLBACK, with
    RUNBOT_RUN_TOKEN), run it with the local engine runner, push its log and result.

    SIGTERM (a deleted Job) cancels: the engine gets SIGINT, then SIGTERM, then SIGKILL, and
    the cancelled result is pushed. No other RUNBOT_* setting is read: the pod has none.
    """
    from app.executor.pod import main

    raise typer.Exit(main(run))
