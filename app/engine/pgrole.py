"""A PostgreSQL login role per target, which reaches that target's state schema and nothing else.

With runbot's own `pg` backend the engine used to connect with runbot's database URL, so a
template's `local-exec` could read `PG_CONN_STR` and with it every runbot table and every other
target's state. Now runbot creates the state schema, its `states` table and index itself, grants
the target's role exactly what the backend needs (USAGE on the schema, DML on its table, the
shared id sequence), sets a fresh random password for each run, and tells the backend to skip its
own CREATEs (`PG_SKIP_*_CREATION`), so the role needs no CREATE anywhere. The backend's state
lock is an advisory lock, which needs no grant.

The separation means something only where pg_hba.conf asks for passwords (scram-sha-256): with
`trust` any client may connect as any role, runbot's included (docs/security.md).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import replace

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from app.engine.backends import Backend, libpq_url, schema_name

ROLE_PREFIX = "runbot_engine_"
_ROLE_BYTES = 63
_DIGEST_CHARS = 20
_SEQUENCE = "global_states_id_seq"  # the pg backend's, in `public`, shared by every schema
# Serialises CREATE SEQUENCE IF NOT EXISTS, which races with itself. The two-integer form lives
# in its own key space, apart from the pg backend's single-bigint state locks.
_SETUP_LOCK = (0x72756E62, 1)  # "runb", 1
_SKIP_CREATION = {
    "PG_SKIP_SCHEMA_CREATION": "true",
    "PG_SKIP_TABLE_CREATION": "true",
    "PG_SKIP_INDEX_CREATION": "true",
}


class RoleError(Exception):
    """The engine's role could not be set up; the message says what to grant."""


def role_name(database_url: str, target: str) -> str:
    """The target's role: readable, then a hash of the database and the target.

    Roles are cluster-wide (schemas are per database): two runbot installs on one server must not
    share a role, so the database name is in the hash. At most 63 bytes, never truncated.
    """
    database = make_url(database_url).database or ""
    digest = hashlib.sha256(f"{database}\0{target}".encode()).hexdigest()[:_DIGEST_CHARS]
    room = _ROLE_BYTES - len(ROLE_PREFIX) - 1 - _DIGEST_CHARS
    readable = re.sub(r"[^a-z0-9_]", "_", target.lower())[:room]
    return f"{ROLE_PREFIX}{readable}_{digest}"


def _setup_statements(role: str, schema: str, verifier: str, exists: bool) -> list[sql.Composed]:
    r, s = sql.Identifier(role), sql.Identifier(schema)
    table, sequence = sql.Identifier(schema, "states"), sql.Identifier("public", _SEQUENCE)
    login = sql.SQL("{} ROLE {} WITH LOGIN NOINHERIT NOCREATEDB NOCREATEROLE PASSWORD {}").format(
        sql.SQL("ALTER" if exists else "CREATE"), r, sql.Literal(verifier)
    )
    return [
        login,
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(s),
        sql.SQL("CREATE SEQUENCE IF NOT EXISTS {} AS bigint").format(sequence),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (id bigint NOT NULL DEFAULT nextval({}) PRIMARY KEY,"
            " name text UNIQUE, data text)"
        ).format(table, sql.Literal(f"public.{_SEQUENCE}")),
        sql.SQL("CREATE UNIQUE INDEX IF NOT EXISTS states_by_name ON {} (name)").format(table),
        sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(s),
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, r),
        sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(table, r),
        sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(sequence, r),
    ]


def provision(database_url: str, target: str, backend: Backend) -> Backend:
    """The backend as the engine sees it: the target's own role, with a password for this run."""
    role, schema = role_name(database_url, target), schema_name(target)
    password = secrets.token_urlsafe(24)
    try:
        with (
            psycopg.connect(libpq_url(database_url), autocommit=True) as conn,
            conn.transaction(),
        ):
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", _SETUP_LOCK)
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            # The server stores (and a statement log shows) only this SCRAM verifier, computed
            # here: the clear password never crosses the wire.
            verifier = conn.pgconn.encrypt_password(
                password.encode(), role.encode(), b"scram-sha-256"
            ).decode()
            for statement in _setup_statements(role, schema, verifier, exists is not None):
                conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise RoleError(
            f"runbot's database role cannot set up the engine's own role for {target} ({exc});"
            " grant it CREATEROLE (ALTER ROLE <runbot role> CREATEROLE) and ownership of the"
            " database, or declare a backend in the template"
        ) from exc
    engine_url = make_url(database_url).set(username=role, password=password)
    conn_str = libpq_url(engine_url.render_as_string(hide_password=False))
    return replace(
        backend,
        env={"PG_CONN_STR": conn_str},
        redact=(password,),
        scope_env={**backend.scope_env, **_SKIP_CREATION},
    )


def drop(database_url: str, target: str) -> None:
    """Drop the target's state schema and its role (what it was granted goes first).

    The grants are revoked by name, not with `DROP OWNED BY`: on PostgreSQL 15 and older that
    needs membership in the role, which a CREATEROLE (non-superuser) runbot role does not have.
    All in one transaction: a drop that fails leaves the role and its schema as they were.
    """
    role = sql.Identifier(role_name(database_url, target))
    with (
        psycopg.connect(libpq_url(database_url), autocommit=True) as conn,
        conn.transaction(),
    ):
        # The same lock as set-up: a REVOKE on the shared sequence racing another target's
        # GRANT fails with "tuple concurrently updated".
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", _SETUP_LOCK)
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema_name(target)))
        )
        found = conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s", (role_name(database_url, target),)
        ).fetchone()
        if found:
            conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN PASSWORD NULL").format(role))
            sequence = conn.execute("SELECT to_regclass(%s)", (f"public.{_SEQUENCE}",)).fetchone()
            if sequence and sequence[0] is not None:
                conn.execute(
                    sql.SQL("REVOKE ALL ON SEQUENCE {} FROM {}").format(
                        sql.Identifier("public", _SEQUENCE), role
                    )
                )
            conn.execute(sql.SQL("DROP ROLE {}").format(role))
