"""`runbot orphans`: list state and processes no live target owns, and `--destroy` them."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from app.cli.common import converge, env_done, guarded, runtime, silo_done
from app.lifecycle.orphans import Remedy
from app.lifecycle.sweep import SweepReport, orphan_lines


def orphans(
    destroy: Annotated[
        bool,
        typer.Option(
            "--destroy", help="Destroy them, each with the template and inputs recorded for it"
        ),
    ] = False,
) -> None:
    """List orphans: state that still holds resources with no live target, targets whose
    state vanished, local-stack servers of no live environment."""
    rt = runtime()

    def echo(line: str) -> None:
        typer.echo(f"  orphans │ {line}")

    def act() -> None:
        report = rt.orphans.sweep()
        if not report.orphans:
            typer.echo("no orphans")
            return
        for line in orphan_lines(report.orphans):
            typer.echo(line)
        if not destroy:
            typer.echo("destroy them with `runbot orphans --destroy`")
            return
        outcomes = asyncio.run(rt.orphans.destroy(report, echo))
        marked = [
            o.orphan for o in outcomes if o.ok and o.orphan.remedy is Remedy.LIFECYCLE_DESTROY
        ]
        if marked:
            checks = [
                env_done(rt, o.where.split(" ", 1)[1])
                if o.where.startswith("environment ")
                else silo_done(rt, o.where.split(" ", 1)[1])
                for o in marked
            ]
            converge(rt, lambda: all(check() for check in checks))
            # A target whose state vanished may still run a server its template cannot see.
            again = rt.orphans.sweep()
            stray = [o for o in again.orphans if o.remedy is Remedy.STOP_PROCESS]
            outcomes += asyncio.run(rt.orphans.destroy(SweepReport(stray), echo))
        failed = False
        for outcome in outcomes:
            mark = "destroyed" if outcome.ok else "NOT destroyed"
            typer.echo(f"{outcome.orphan.target}: {mark}: {outcome.message}")
            failed = failed or not outcome.ok
        if failed:
            raise typer.Exit(1)

    guarded(act)
