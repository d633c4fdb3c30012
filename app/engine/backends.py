"""Where each target's state lives.

One state per silo/environment, so targets never share a lock. With PostgreSQL the state goes
into the same server (a schema per target) so any replica can pick up any target and the engine's
state lock is a real cross-process lock.
"""

from __future__ import annotations

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
    env: dict[str, str] = field(default_factory=dict)


def libpq_url(database_url: str) -> str:
    """The PostgreSQL URL in the libpq form the engine's pg backend understands."""
    url = make_url(database_url)
    url = url.set(drivername="postgres")
    query = dict(url.query)
    query.setdefault(
        "sslmode", "disable" if url.host in (None, "127.0.0.1", "localhost") else "prefer"
    )
    return url.set(query=query).render_as_string(hide_password=False)


def schema_name(target: str) -> str:
    return "runbot_state_" + re.sub(r"[^a-z0-9_]", "_", target.lower())


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
            env={"PG_CONN_STR": libpq_url(database_url), "PG_SCHEMA_NAME": schema_name(target)},
        )
    state_path = (data_dir / "state" / f"{target}.tfstate").absolute()
    state_path.parent.mkdir(parents=True, exist_ok=True)
    return Backend(
        kind="local",
        override_file='terraform {\n  backend "local" {}\n}\n',
        config_args=[f"-backend-config=path={state_path}"],
    )
