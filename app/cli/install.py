"""`runbot setup` and `runbot doctor`: create the GitHub App, and check an installation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import fail
from app.settings import SettingsError, load_settings


def setup(
    public_url: Annotated[
        str | None,
        typer.Option(help="Address GitHub reaches runbot at (default: RUNBOT_PUBLIC_URL)"),
    ] = None,
    github_url: Annotated[
        str | None,
        typer.Option(
            help="GitHub's web address; for GitHub Enterprise Server e.g."
            " https://github.example.com (default: RUNBOT_GITHUB_URL)"
        ),
    ] = None,
    github_api_url: Annotated[
        str | None,
        typer.Option(help="GitHub's API address (default: derived from --github-url)"),
    ] = None,
    org: Annotated[
        str | None, typer.Option(help="Create the App in this organization (default: your user)")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="App name, editable on GitHub's page (default: runbot-ORG)")
    ] = None,
    port: Annotated[int, typer.Option(help="Local port of the setup page (0: any free)")] = 0,
    browser: Annotated[
        bool, typer.Option("--browser/--no-browser", help="Open the setup page in a browser")
    ] = True,
    env_file: Annotated[Path, typer.Option(help="Env file to write the credentials to")] = Path(
        ".env"
    ),
    force: Annotated[
        bool, typer.Option(help="Replace the App already configured in the env file")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds")] = 900.0,
) -> None:
    """Create the GitHub App through GitHub's manifest flow and write its credentials."""
    import webbrowser

    from app.setup import APP_KEYS, ManifestFlow, SetupError, api_url_for, read_env_keys

    try:
        settings = load_settings(_env_file=env_file)
    except SettingsError as exc:
        fail(f"{exc} (in the environment or {env_file})")
    configured = read_env_keys(env_file) & set(APP_KEYS)
    if configured and not force:
        fail(
            f"{env_file} already configures a GitHub App ({', '.join(sorted(configured))})."
            " Pass --force to replace it, or --env-file to write elsewhere."
        )
    web = (github_url or settings.github_url).rstrip("/")
    if github_api_url:
        api = github_api_url.rstrip("/")
    elif github_url:
        api = api_url_for(web)
    else:
        api = settings.github_api_url
    public = (public_url or settings.public_url).rstrip("/")
    for label, url in (("--github-url", web), ("--github-api-url", api), ("--public-url", public)):
        if not url.startswith(("http://", "https://")):
            fail(f"{label} must start with http:// or https:// (got {url!r})")
    from app.doctor.github import local_address_problem

    problem = local_address_problem(public)
    if problem:
        typer.secho(
            f"warning: {problem}. Pass --public-url, or change the App's webhook URL later.",
            fg=typer.colors.YELLOW,
            err=True,
        )
    try:
        flow = ManifestFlow(
            github_url=web,
            api_url=api,
            public_url=public,
            env_file=env_file,
            name=name or (f"runbot-{org}" if org else "runbot"),
            org=org,
            port=port,
        ).start()
    except OSError as exc:
        fail(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}; choose another --port")
    typer.echo(f"Open {flow.local_url} in your browser to create the GitHub App on {web}.")
    typer.echo("Waiting for GitHub to send you back (Ctrl-C to stop)...")
    if browser:
        webbrowser.open(flow.local_url)
    try:
        result = flow.wait(timeout)
    except SetupError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted; no App credentials were written", 130)
    finally:
        flow.close()
    typer.echo(f"Created the GitHub App {result.name} ({result.slug}, id {result.app_id}).")
    typer.echo(f"Wrote {', '.join(result.written)} to {env_file} (mode 0600).")
    typer.echo(f"Install it on your repositories: {result.install_url}")
    typer.echo("Then check everything with `runbot doctor` and start `runbot serve`.")


def doctor(
    replicas: Annotated[
        int,
        typer.Option(
            min=1, help="runbot processes you plan to run on this database (serve + worker)"
        ),
    ] = 1,
    env_file: Annotated[
        Path | None, typer.Option(help="Read settings from this env file instead of .env")
    ] = None,
) -> None:
    """Check the engine, database, stacks, GitHub App and settings; say how to fix each failure."""
    from app.doctor.checks import run_checks
    from app.doctor.report import exit_code, render

    if env_file is not None and not env_file.is_file():
        fail(f"--env-file {env_file} does not exist")
    try:
        settings = load_settings(**({"_env_file": env_file} if env_file else {}))
        rows = run_checks(settings, replicas=replicas)
    except SettingsError as exc:
        rows = run_checks(None, settings_error=str(exc))
    typer.echo(render(rows))
    raise typer.Exit(exit_code(rows))
