"""`runbot pool list`: each repository's warm pool in each silo, as the keeper sees it, for
an operator at a terminal (the dashboard's Silos page and `GET /api/pools` show the same)."""

from __future__ import annotations

from collections import Counter

import typer

from app.cli.common import runtime
from app.lifecycle.pool import standing_of

__all__ = ["pool_cli"]

pool_cli = typer.Typer(
    help="Warm pools: instances applied ahead of PRs (docs/writing-stacks.md).",
    no_args_is_help=True,
)


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
        members = rt.lifecycle.pool_members(pool.silo_name, pool.repository)
        counts = Counter(standing_of(env) for env in members)
        line = (
            f"{pool.silo_name:20} {pool.repository:30} size={pool.size} ready={counts['ready']}"
            f" starting={counts['starting']} failed={counts['failed']}"
        )
        if pool.paused_until is not None:
            line += f" paused until {pool.paused_until:%Y-%m-%d %H:%M:%S} UTC"
        typer.echo(line)
