"""sleep and money: the silo token's version, why and since when an environment sleeps, and
the cost ledger

`silo.token_version` names the current `runbot_silo_token` (derived, never stored);
`environment.slept_at` / `sleep_reason` say since when and why it was put to sleep;
`costspan` holds each environment's time per status at its hourly rate.

Revision ID: 0016
Revises: 0015
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("silo") as batch:
        batch.add_column(
            sa.Column("token_version", sa.Integer(), nullable=False, server_default="1")
        )
    with op.batch_alter_table("environment") as batch:
        batch.add_column(sa.Column("slept_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("sleep_reason", sa.String(length=20), nullable=True))
    op.create_table(
        "costspan",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("environment_id", sa.String(length=63), nullable=False),
        sa.Column("repository", sa.String(length=200), nullable=False),
        sa.Column("silo_name", sa.String(length=63), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("hourly", sa.Float(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_costspan_environment_open", "costspan", ["environment_id", "ended_at"], unique=False
    )
    op.create_index(
        "ix_costspan_repository_time", "costspan", ["repository", "started_at"], unique=False
    )
    op.create_index("ix_costspan_silo_time", "costspan", ["silo_name", "started_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_costspan_silo_time", table_name="costspan")
    op.drop_index("ix_costspan_repository_time", table_name="costspan")
    op.drop_index("ix_costspan_environment_open", table_name="costspan")
    op.drop_table("costspan")
    with op.batch_alter_table("environment") as batch:
        batch.drop_column("sleep_reason")
        batch.drop_column("slept_at")
    with op.batch_alter_table("silo") as batch:
        batch.drop_column("token_version")
