"""state schema names: a readable prefix plus a hash of the exact target name

Before, a target's PostgreSQL state schema was `runbot_state_` + the target with every character
but `[a-z0-9_]` replaced by `_`, cut by PostgreSQL at 63 bytes: `silo-team-a` and `silo-team_a`
shared one schema, and so did names sharing their first 45 characters. One target then applied
over the other's state, and destroying it dropped the other's schema.

This renames each silo's and environment's schema (runbot's own `pg` backend, in runbot's
database) to the new name. Where several targets shared one old schema, its state is the one the
most recent run among them wrote, so it goes to that run's target; the others start with empty
state, and the migration says so in the log. Where no run says who wrote it, the schema is left
as it was, and the log says that too. No-op on SQLite, and for schemas that do not exist.

Both names are computed here, not imported: a migration must keep meaning what it meant when it
was written, whatever `app.engine.backends.schema_name` becomes.

Revision ID: 0010
Revises: 0009
"""

import hashlib
import logging
import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("runbot.db.migrations")

PREFIX = "runbot_state_"
MAX_BYTES = 63  # PostgreSQL's identifier limit: longer names are cut, silently


def old_name(target: str) -> str:
    """The schema the 0007-and-earlier code used (as PostgreSQL stored it: cut at 63)."""
    return (PREFIX + re.sub(r"[^a-z0-9_]", "_", target.lower())).encode()[:MAX_BYTES].decode()


def new_name(target: str) -> str:
    """`app.engine.backends.schema_name` as of this revision."""
    digest = hashlib.sha256(target.encode()).hexdigest()[:20]
    readable = re.sub(r"[^a-z0-9_]", "_", target.lower())[: MAX_BYTES - len(PREFIX) - 21]
    return f"{PREFIX}{readable}_{digest}"


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _targets(bind: sa.Connection) -> dict[str, int]:
    """Every silo and environment's engine target, with the id of its latest run (0: none)."""
    latest = {
        (kind, target_id): run_id
        for kind, target_id, run_id in bind.execute(
            sa.text("SELECT target_kind, target_id, max(id) FROM run GROUP BY 1, 2")
        )
    }
    targets = {
        f"silo-{name}": latest.get(("silo", name)) or 0
        for (name,) in bind.execute(sa.text("SELECT name FROM silo"))
    }
    for (env_id,) in bind.execute(sa.text("SELECT id FROM environment")):
        targets[f"env-{env_id}"] = latest.get(("environment", env_id)) or 0
    return targets


def _schemas(bind: sa.Connection) -> set[str]:
    rows = bind.execute(
        sa.text("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, :prefix)"),
        {"prefix": PREFIX},
    )
    return {name for (name,) in rows}


def _rename(bind: sa.Connection, old: str, new: str, existing: set[str]) -> None:
    if new in existing:
        log.warning(
            "state schema %s was not renamed to %s, which exists already: compare the two and"
            " keep the right one by hand",
            old,
            new,
        )
        return
    bind.execute(sa.text(f"ALTER SCHEMA {_quoted(old)} RENAME TO {_quoted(new)}"))
    existing.discard(old)
    existing.add(new)
    log.info("state schema %s renamed to %s", old, new)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return  # SQLite: state is in local files, named by the exact target already
    existing = _schemas(bind)
    shared: dict[str, list[str]] = {}
    targets = _targets(bind)
    for target in sorted(targets):
        shared.setdefault(old_name(target), []).append(target)
    for old, owners in sorted(shared.items()):
        if old not in existing:
            continue
        if len(owners) == 1:
            _rename(bind, old, new_name(owners[0]), existing)
            continue
        writer = max(owners, key=lambda t: targets[t])
        if targets[writer] == 0:
            log.warning(
                "state schema %s was shared by %s and no run says which of them wrote it last;"
                " it is left as it is: rename it to the owner's schema by hand (%s)",
                old,
                ", ".join(owners),
                ", ".join(f"{t} -> {new_name(t)}" for t in owners),
            )
            continue
        others = [t for t in owners if t != writer]
        log.warning(
            "state schema %s was shared by %s; its state is the one run %d of %s wrote, so it"
            " goes to %s. %s start with empty state: any resources they created may now be"
            " tracked by %s or by nobody; re-apply them and check for leftovers",
            old,
            ", ".join(owners),
            targets[writer],
            writer,
            writer,
            ", ".join(others),
            writer,
        )
        _rename(bind, old, new_name(writer), existing)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    existing = _schemas(bind)
    for target in sorted(_targets(bind)):
        if new_name(target) in existing:
            _rename(bind, new_name(target), old_name(target), existing)
