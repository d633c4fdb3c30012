"""`python -m app.cli`: the same as the `runbot` command."""

from app.cli.main import main

main()
