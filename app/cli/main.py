"""`runbot`: operate silos and environments from a terminal, serve the App, and set it up.

Every command is registered here, so this is the one list of what `runbot` can do.
"""

from __future__ import annotations

import typer

from app.cli import install, process
from app.cli.engine import engine_cli
from app.cli.orphans import orphans
from app.cli.policy import policy_cli
from app.cli.pools import pool_cli
from app.cli.targets import env_cli, silo_cli

cli = typer.Typer(
    help="runbot: an ephemeral environment per pull request.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
cli.add_typer(silo_cli, name="silo")
cli.add_typer(env_cli, name="env")
cli.add_typer(pool_cli, name="pool")
cli.add_typer(policy_cli, name="policy")
cli.add_typer(engine_cli, name="engine")
cli.command("serve")(process.serve)
cli.command("worker")(process.worker)
cli.command("receive")(process.receive)
cli.command("demo")(process.demo)
cli.command("setup")(install.setup)
cli.command("doctor")(install.doctor)
cli.command("orphans")(orphans)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
