"""phase timings: how long each run waited in the queue and spent in each engine phase

`run.timings` holds seconds per phase; `silo.requested_at` and `environment.requested_at` say
when the generation now wanted was asked for, which is where a run's queue wait starts.

Revision ID: 0018
Revises: 0017
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("run") as batch:
        batch.add_column(sa.Column("timings", sa.JSON(), nullable=True))
    for table in ("silo", "environment"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("requested_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    for table in ("environment", "silo"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("requested_at")
    with op.batch_alter_table("run") as batch:
        batch.drop_column("timings")
