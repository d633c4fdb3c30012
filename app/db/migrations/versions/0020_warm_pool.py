"""the warm pool: pool instances on `environment`, and the `warmpool` table

`environment.pool_state`, `pool_key` and `claimed_at` mark instances kept applied ahead of
any PR, and those a PR claimed. An unclaimed one has no PR (pr_number 0), so the unique index
of one live environment per PR leaves it out.

Revision ID: 0020
Revises: 0019
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = sa.text("desired != 'absent' AND status != 'destroyed'")
NEW = sa.text(
    "desired != 'absent' AND status != 'destroyed' AND (pool_state IS NULL OR pool_state != 'warm')"
)


def _live_pr_index(condition: sa.TextClause) -> None:
    op.create_index(
        "uq_environment_live_pr",
        "environment",
        ["repository", "pr_number"],
        unique=True,
        sqlite_where=condition,
        postgresql_where=condition,
    )


def upgrade() -> None:
    with op.batch_alter_table("environment") as batch:
        batch.add_column(sa.Column("pool_state", sa.String(length=20), nullable=True))
        batch.add_column(sa.Column("pool_key", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("claimed_at", sa.DateTime(), nullable=True))
    op.create_index("ix_environment_pool_state", "environment", ["pool_state"])
    op.drop_index("uq_environment_live_pr", table_name="environment")
    _live_pr_index(NEW)
    op.create_table(
        "warmpool",
        sa.Column("silo_name", sa.String(length=63), primary_key=True),
        sa.Column("repository", sa.String(length=200), primary_key=True),
        sa.Column("installation_id", sa.BigInteger(), nullable=True),
        sa.Column("default_branch", sa.String(length=255), nullable=False, server_default=""),
        sa.Column("config_sha", sa.String(length=64), nullable=False, server_default=""),
        sa.Column("vars", sa.JSON(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("key", sa.String(length=64), nullable=False, server_default=""),
        sa.Column("failures", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("paused_until", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("warmpool")
    op.drop_index("uq_environment_live_pr", table_name="environment")
    _live_pr_index(OLD)
    op.drop_index("ix_environment_pool_state", table_name="environment")
    with op.batch_alter_table("environment") as batch:
        batch.drop_column("claimed_at")
        batch.drop_column("pool_key")
        batch.drop_column("pool_state")
