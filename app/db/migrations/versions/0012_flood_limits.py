"""flood limits and public repositories: what runbot wrote per command, and repo visibility

`commentcommand.limited/writes/replied_at` let runbot cap what it writes in answer to people
below triage (one reply per PR per interval, a per-user budget across PRs); `pullrequest.public`
lets a failed run's comment link to the log instead of quoting it on public repositories.

Revision ID: 0012
Revises: 0011
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db.models

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("commentcommand") as batch:
        batch.add_column(
            sa.Column("limited", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("writes", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("replied_at", app.db.models.UTCDateTime(), nullable=True))
    op.create_index("ix_commentcommand_author", "commentcommand", ["author", "created_at"])
    with op.batch_alter_table("pullrequest") as batch:
        batch.add_column(sa.Column("public", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pullrequest") as batch:
        batch.drop_column("public")
    op.drop_index("ix_commentcommand_author", table_name="commentcommand")
    with op.batch_alter_table("commentcommand") as batch:
        batch.drop_column("replied_at")
        batch.drop_column("writes")
        batch.drop_column("limited")
