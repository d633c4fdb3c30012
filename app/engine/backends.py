"""Where each target's state lives.

One state per silo/environment, so targets never share a lock. With PostgreSQL the state goes
into the same server (a schema per target) so any replica can pick up any target and the engine's
state lock is a real cross-process lock. Otherwise it is a local file: one workspace per target
under `<data dir>/state`, `<target>/terraform.tfstate`.

With runbot's own backends the target is chosen through the environment (TF_WORKSPACE,
PG_SCHEMA_NAME), not the backend settings, so every target of one template shares the same
`init` result (see initcache.py).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url

# Which -backend-config key scopes state to one target, for templates that bring their own backend.
_KEY_SETTING = {
    "s3": "key",
    "gcs": "prefix",
    "azurerm": "key",
    "consul": "path",
    "cos": "prefix",
    "oss": "key",
    "kubernetes": "secret_suffix",
    "local": "path",
    "http": None,
    "remote": None,
    "pg": "schema_name",
}


class BackendError(Exception):
    pass


@dataclass(frozen=True)
class Backend:
    kind: str
    override_file: str | None
    config_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # credentials: redacted from every log
    scope_env: dict[str, str] = field(default_factory=dict)  # names the target's state; not secret
    workspace: str | None = None  # TF_WORKSPACE for every command but `init`
    shared_init: bool = False  # nothing target-specific in TF_DATA_DIR: targets share `init`
    redact: tuple[str, ...] = ()  # secrets inside env values (a password in a URL)


def local_state_file(data_dir: Path, target: str) -> Path:
    """The target's state with runbot's local backend (its workspace's state file)."""
    return (data_dir / "state" / target / "terraform.tfstate").absolute()


def legacy_state_file(data_dir: Path, target: str) -> Path:
    """Where runbot kept a target's local state before workspaces: `state/<target>.tfstate`."""
    return (data_dir / "state" / f"{target}.tfstate").absolute()


def move_legacy_state(data_dir: Path, target: str) -> None:
    """Move a state file from the old layout into the target's workspace, once."""
    old, new = legacy_state_file(data_dir, target), local_state_file(data_dir, target)
    if not old.is_file() or new.exists():
        return
    new.parent.mkdir(parents=True, exist_ok=True)
    backup = old.with_name(old.name + ".backup")
    if backup.is_file():
        os.replace(backup, new.with_name(new.name + ".backup"))
    os.replace(old, new)


def libpq_url(database_url: str) -> str:
    """The PostgreSQL URL in the libpq form the engine's pg backend understands."""
    url = make_url(database_url)
    url = url.set(drivername="postgres")
    query = dict(url.query)
    query.setdefault(
        "sslmode", "disable" if url.host in (None, "127.0.0.1", "localhost") else "prefer"
    )
    return url.set(query=query).render_as_string(hide_password=False)


STATE_SCHEMA_PREFIX = "runbot_state_"
_SCHEMA_BYTES = 63  # PostgreSQL cuts identifiers at 63 bytes (NAMEDATALEN - 1), silently
_DIGEST_CHARS = 20  # 80 bits of sha256: a collision needs about 2**40 targets


def schema_name(target: str) -> str:
    """The target's state schema: a readable prefix, then a hash of the exact target name.

    The readable part alone is not unique (`team-a` and `team_a` read alike, and long names are
    cut to fit), the hash is: two targets never share a schema, so one never applies over, or
    drops, another's state. Always at most 63 bytes, so PostgreSQL never truncates it.
    """
    digest = hashlib.sha256(target.encode()).hexdigest()[:_DIGEST_CHARS]
    room = _SCHEMA_BYTES - len(STATE_SCHEMA_PREFIX) - 1 - _DIGEST_CHARS
    readable = re.sub(r"[^a-z0-9_]", "_", target.lower())[:room]
    return f"{STATE_SCHEMA_PREFIX}{readable}_{digest}"


def backend_for(
    target: str,
    declared_backend: str | None,
    data_dir: Path,
    database_url: str | None,
) -> Backend:
    """Choose the backend for one target (e.g. `env-pr-42-k3x9q`)."""
    if declared_backend:
        if declared_backend not in _KEY_SETTING:
            raise BackendError(
                f"the template declares backend '{declared_backend}', which runbot cannot scope per"
                f" target; use one of: {', '.join(sorted(k for k, v in _KEY_SETTING.items() if v))}"
            )
        key = _KEY_SETTING[declared_backend]
        if key is None:
            return Backend(kind=declared_backend, override_file=None)
        value = schema_name(target) if declared_backend == "pg" else f"runbot/{target}.tfstate"
        if declared_backend in ("gcs", "cos"):
            value = f"runbot/{target}"
        if declared_backend == "kubernetes":
            value = target
        if declared_backend == "local":
            # Absolute: a relative path would land in the run's throwaway working copy.
            state = local_state_file(data_dir, target)
            state.parent.mkdir(parents=True, exist_ok=True)
            value = str(state)
        return Backend(
            kind=declared_backend,
            override_file=None,
            config_args=[f"-backend-config={key}={value}"],
        )
    if database_url and database_url.startswith("postgresql"):
        # Credentials travel in the child's environment (PG_CONN_STR), never in argv.
        return Backend(
            kind="pg",
            override_file='terraform {\n  backend "pg" {}\n}\n',
            env={"PG_CONN_STR": libpq_url(database_url)},
            scope_env={"PG_SCHEMA_NAME": schema_name(target)},
            shared_init=True,
        )
    # Target names are workspace-safe: lowercase letters, digits, `-` and `_`.
    workspaces = local_state_file(data_dir, target).parent.parent
    workspaces.mkdir(parents=True, exist_ok=True)
    return Backend(
        kind="local",
        override_file='terraform {\n  backend "local" {}\n}\n',
        config_args=[f"-backend-config=workspace_dir={workspaces}"],
        workspace=target,
        shared_init=True,
    )
