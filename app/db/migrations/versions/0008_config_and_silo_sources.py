"""config_sha, default_branch and silo source keys: the trust boundaries of issue 15

`.runbot.yml` is now read from the repository's default branch at a resolved commit, which is
recorded on the PR, the environment and each run. A silo is found by where its stack comes
from (`source_key`) and a repository's own silo belongs to it (`owner`). Existing silos are
backfilled: a catalog silo by its stack name; a repository or git silo by the one repository
whose environments it holds (a silo shared by several repositories keeps an empty key, which
no configuration matches, so nobody adopts it by name: an operator recreates it).

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("pullrequest") as batch:
        batch.add_column(
            sa.Column("default_branch", sa.String(length=255), nullable=False, server_default="")
        )
        batch.add_column(sa.Column("config_sha", sa.String(length=64), nullable=True))
    with op.batch_alter_table("environment") as batch:
        batch.add_column(sa.Column("config_sha", sa.String(length=64), nullable=True))
    with op.batch_alter_table("run") as batch:
        batch.add_column(sa.Column("config_sha", sa.String(length=64), nullable=True))
    with op.batch_alter_table("silo") as batch:
        batch.add_column(sa.Column("source_key", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("owner", sa.String(length=200), nullable=True))
        batch.create_index("ix_silo_owner", ["owner"])
    _backfill_sources()


def _backfill_sources() -> None:
    bind = op.get_bind()
    silo = sa.table(
        "silo",
        sa.column("name", sa.String()),
        sa.column("stack", sa.String()),
        sa.column("stack_source", sa.JSON()),
        sa.column("source_key", sa.Text()),
        sa.column("owner", sa.String()),
    )
    env = sa.table("environment", sa.column("silo_name", sa.String()), sa.column("repository"))
    rows = bind.execute(sa.select(silo.c.name, silo.c.stack, silo.c.stack_source))
    for name, stack, source in list(rows):
        source = source or {}
        kind = source.get("kind")
        if not kind:
            key, owner = f"catalog:{stack}", None
        else:
            repos = {
                row[0]
                for row in bind.execute(
                    sa.select(env.c.repository).where(env.c.silo_name == name).distinct()
                )
            }
            if len(repos) != 1:
                continue
            (owner,) = repos
            path = source.get("path") or "."
            if kind == "repo":
                key = f"repo:{owner.lower()}:{path}"
            else:
                key = f"git:{source.get('url', '')}#{source.get('ref') or ''}:{path}"
        bind.execute(silo.update().where(silo.c.name == name).values(source_key=key, owner=owner))


def downgrade() -> None:
    with op.batch_alter_table("silo") as batch:
        batch.drop_index("ix_silo_owner")
        batch.drop_column("owner")
        batch.drop_column("source_key")
    with op.batch_alter_table("run") as batch:
        batch.drop_column("config_sha")
    with op.batch_alter_table("environment") as batch:
        batch.drop_column("config_sha")
    with op.batch_alter_table("pullrequest") as batch:
        batch.drop_column("config_sha")
        batch.drop_column("default_branch")
