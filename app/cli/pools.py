"""`runbot pool list`: each repository's warm pool in each silo, as the keeper sees it, for
an operator at a terminal (the dashboard's Silos page and `GET /api/pools` show the same)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import typer

from app.cli.common import runtime
from app.db.models import Environment
from app.lifecycle.states import Status

__all__ = ["pool_cli", "standing"]

pool_cli = typer.Typer(
    help="Warm pools: instances applied ahead of PRs (docs/writing-stacks.md).",
    no_args_is_help=True,
)


def standing(members: Iterable[Environment]) -> Counter[str]:
    """How many unclaimed instances are ready to claim, on their way, or failed."""
    counts: Counter[str] = Counter()
    for env in members:
        settled = env.generation == env.observed_generation
        if settled and env.status == Status.READY:
            counts["ready"] += 1
        elif settled and env.status == Status.FAILED:
            counts["failed"] += 1
        else:
            counts["starting"] += 1
    return counts


@pool_cli.command("list")
def pool_list() -> None:
    """List each pool: its size, and its instances ready, starting and failed."""
    rt = runtime()
    pools = rt.lifecycle.pools()
    if not pools:
        typer.echo(
            "no warm pools: a silo asks for one with its `runbot_pool_size` output or its"
            " stack's `pool.size`, and a repository gets one with its first PR there"
        )
    for pool in pools:
        counts = standing(rt.lifecycle.pool_members(pool.silo_name, pool.repository))
        line = (
            f"{pool.silo_name:20} {pool.repository:30} size={pool.size} ready={counts['ready']}"
            f" starting={counts['starting']} failed={counts['failed']}"
        )
        if pool.paused_until is not None:
            line += f" paused until {pool.paused_until:%Y-%m-%d %H:%M:%S} UTC"
        typer.echo(line)
