"""warn_at: when an environment's expiry warning falls due, indexed for the warning tick

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db.models

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("environment") as batch:
        batch.add_column(sa.Column("warn_at", app.db.models.UTCDateTime(), nullable=True))
        batch.create_index("ix_environment_warn_at", ["warn_at"])
    # Backfill the live rows: the flush hook keeps it from now on.
    environment = sa.table(
        "environment",
        sa.column("id", sa.String()),
        sa.column("expires_at", app.db.models.UTCDateTime()),
        sa.column("ttl", sa.JSON()),
        sa.column("warn_at", app.db.models.UTCDateTime()),
    )
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(environment.c.id, environment.c.expires_at, environment.c.ttl).where(
            environment.c.expires_at.is_not(None)
        )
    ).all()
    for env_id, expires_at, ttl in rows:
        bind.execute(
            environment.update()
            .where(environment.c.id == env_id)
            .values(warn_at=app.db.models.warning_time(expires_at, ttl))
        )


def downgrade() -> None:
    with op.batch_alter_table("environment") as batch:
        batch.drop_index("ix_environment_warn_at")
        batch.drop_column("warn_at")
