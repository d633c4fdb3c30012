"""revokedsession: dashboard sessions signed out before their cookie expired

A signed cookie stays valid until it expires; logout records its session id here, so a copy
of the cookie no longer signs anyone in, on any replica.

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.db.models import UTCDateTime

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "revokedsession",
        sa.Column("sid", sa.String(length=64), primary_key=True),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_revokedsession_expires_at", "revokedsession", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_revokedsession_expires_at", table_name="revokedsession")
    op.drop_table("revokedsession")
