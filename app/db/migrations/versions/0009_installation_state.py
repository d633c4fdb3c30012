"""installation.state and removed_repositories: uninstalling the App is a kill switch

`active` could not tell a suspended installation from an uninstalled one, nor say which
repositories were removed from an installation: the environments of all three kept running
until their TTL. An inactive installation is backfilled as deleted, the safe reading: its
environments are destroyed, and its GitHub writes, which can never land, are dropped.

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("installation") as batch:
        batch.add_column(
            sa.Column("state", sa.String(length=20), nullable=False, server_default="active")
        )
        batch.add_column(
            sa.Column("removed_repositories", sa.JSON(), nullable=False, server_default="[]")
        )
    installation = sa.table(
        "installation", sa.column("state", sa.String()), sa.column("active", sa.Boolean())
    )
    op.get_bind().execute(
        installation.update().where(installation.c.active.is_(False)).values(state="deleted")
    )
    with op.batch_alter_table("installation") as batch:
        batch.alter_column("state", server_default=None)
        batch.alter_column("removed_repositories", server_default=None)
        batch.drop_column("active")


def downgrade() -> None:
    with op.batch_alter_table("installation") as batch:
        batch.add_column(
            sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true())
        )
    installation = sa.table(
        "installation", sa.column("state", sa.String()), sa.column("active", sa.Boolean())
    )
    op.get_bind().execute(
        installation.update().where(installation.c.state != "active").values(active=False)
    )
    with op.batch_alter_table("installation") as batch:
        batch.alter_column("active", server_default=None)
        batch.drop_column("removed_repositories")
        batch.drop_column("state")
