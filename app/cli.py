"""`runbot`: operate silos and environments from a terminal, serve the App, and set it up.

Commands that change something record the desired state, then (unless --no-wait) run a worker
in the foreground until the target converges, streaming the engine's phases and log lines.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from app.db.models import Environment, Silo
from app.db.session import DatabaseError
from app.engine.logs import read_log
from app.engine.runner import EngineError
from app.lifecycle.outputs import public_outputs
from app.lifecycle.service import LifecycleError
from app.lifecycle.states import Status
from app.runtime import Runtime, build_runtime
from app.settings import SettingsError, load_settings
from app.stacks.catalog import StackError, StackSource

cli = typer.Typer(
    help="runbot: an ephemeral environment per pull request.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
silo_cli = typer.Typer(
    help="Shared silos: created once, hosting many environments.", no_args_is_help=True
)
env_cli = typer.Typer(help="Per-PR environments inside a silo.", no_args_is_help=True)
cli.add_typer(silo_cli, name="silo")
cli.add_typer(env_cli, name="env")

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
    if row.status == Status.QUEUED and row.lease_owner is None:
        return True
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
    if silo.status == Status.FAILED:
        raise typer.Exit(1)


def show_env(rt: Runtime, env: Environment) -> None:
    typer.echo(f"environment {env.id}: {env.status}" + (f" ({env.reason})" if env.reason else ""))
    typer.echo(
        f"  pr        {env.repository}#{env.pr_number}  sha {env.head_sha}  ref {env.head_ref!r}"
    )
    typer.echo(f"  silo      {env.silo_name}  slot {env.slot if env.slot is not None else '-'}")
    typer.echo(f"  url       {env.url or '-'}")
    if env.expires_at:
        typer.echo(f"  expires   {env.expires_at.isoformat(timespec='seconds')}")
    for name, value in public_outputs(env.outputs).items():
        typer.echo(f"  output    {name} = {json.dumps(value)}")
    if env.status == Status.FAILED:
        typer.echo(f"  logs      runbot env logs {env.id}")
        raise typer.Exit(1)


def guarded(action: Callable[[], None]) -> None:
    try:
        action()
    except EXPECTED_ERRORS as exc:
        fail(str(exc))


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
            f"{env.id:22} {env.status:11} {env.repository}#{env.pr_number:<6}"
            f" slot={env.slot!s:4} {env.url or ''}"
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


@cli.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8000,
) -> None:
    """Run the App: webhooks, dashboard, API, workers and scheduler in one process."""
    import uvicorn

    from app.server import create_app

    try:
        settings = load_settings()
        app = create_app(settings)
    except EXPECTED_ERRORS as exc:
        fail(str(exc))
    mode = "local mode (GitHub writes go to the outbox)" if settings.local_mode else "GitHub App"
    typer.echo(f"runbot serving on http://{host}:{port} in {mode}; engine {settings.engine_name}")
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info",
        log_config=None,  # uvicorn's records go through runbot's handler: JSON off a terminal
        timeout_graceful_shutdown=int(settings.engine_cancel_grace + 15),
    )


@cli.command("worker")
def worker() -> None:
    """Run extra reconcile workers and the scheduler (PostgreSQL only), without the web."""
    from app.workers import Workers, acquire_sqlite_lock

    try:
        settings = load_settings()
        if not settings.is_postgres:
            fail(
                "`runbot worker` needs PostgreSQL (RUNBOT_DATABASE_URL): SQLite supports exactly"
                " one runbot process, which `runbot serve` already is"
            )
        acquire_sqlite_lock(settings)
        rt = build_runtime(settings)
    except EXPECTED_ERRORS as exc:
        fail(str(exc))

    async def main_loop() -> None:
        import signal

        workers = Workers.build(rt)
        workers.start()
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopped.set)
        typer.echo(f"runbot worker {workers.reconciler.worker_id} running")
        await stopped.wait()
        await workers.shutdown()

    asyncio.run(main_loop())


@cli.command("receive")
def receive(
    event: Annotated[str, typer.Option("--event", "-e", help="X-GitHub-Event, e.g. pull_request")],
    payload: Annotated[typer.FileBinaryRead, typer.Option("--payload", "-p", help="JSON file")],
    url: Annotated[str, typer.Option(help="Webhook URL")] = "http://127.0.0.1:8000/webhooks/github",
    delivery: Annotated[
        str | None, typer.Option(help="X-GitHub-Delivery (default: random)")
    ] = None,
) -> None:
    """Sign a payload file with the webhook secret and post it to a running runbot."""
    import uuid

    import httpx

    from app.github.intake import sign_body
    from app.server import webhook_secret

    body = payload.read()
    try:
        secret = webhook_secret(load_settings())
    except EXPECTED_ERRORS as exc:
        fail(str(exc))
    headers = {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": sign_body(secret, body),
        "Content-Type": "application/json",
        "User-Agent": "runbot-receive",
    }
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        fail(f"cannot reach {url}: {exc}. Is `runbot serve` running?")
    typer.echo(f"{response.status_code} {response.text}")
    if response.status_code >= 400:
        raise typer.Exit(1)


@cli.command("demo")
def demo(
    port: Annotated[int, typer.Option(help="Port for the demo server")] = 8000,
    keep: Annotated[bool, typer.Option("--keep/--exit", help="Keep serving afterwards")] = True,
) -> None:
    """Play a PR through its whole lifecycle on the local stack, then keep serving."""
    from app.demo import run_demo

    try:
        settings = load_settings()
    except EXPECTED_ERRORS as exc:
        fail(str(exc))
    try:
        code = asyncio.run(run_demo(settings, port=port, keep=keep))
    except EXPECTED_ERRORS as exc:
        fail(str(exc))
    raise typer.Exit(code)


@cli.command("setup")
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


@cli.command("doctor")
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


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
