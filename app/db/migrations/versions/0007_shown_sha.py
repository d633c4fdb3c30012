"""shown_sha: the PR head commit the status comment last showed

`/runbot deploy` approves that commit rather than whatever head is stored when the command is
read, so a push landing between a maintainer's review and the command is never approved by it.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("pullrequest") as batch:
        batch.add_column(sa.Column("shown_sha", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pullrequest") as batch:
        batch.drop_column("shown_sha")
