"""write-ahead marks for GitHub creates

`pullrequest.deployment_creating` and `pullrequest.check_run_creating` are set just before a
deployment or check run is created and cleared once its id is stored, so a process killed in
between finds what it created instead of leaving it pending forever.

Revision ID: 0019
Revises: 0018
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("pullrequest") as batch:
        batch.add_column(sa.Column("deployment_creating", sa.String(length=140), nullable=True))
        batch.add_column(sa.Column("check_run_creating", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pullrequest") as batch:
        batch.drop_column("check_run_creating")
        batch.drop_column("deployment_creating")
