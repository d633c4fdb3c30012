"""one live environment per PR, enforced by a partial unique index

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CONDITION = sa.text("desired != 'absent' AND status != 'destroyed'")


def upgrade() -> None:
    op.create_index(
        "uq_environment_live_pr",
        "environment",
        ["repository", "pr_number"],
        unique=True,
        sqlite_where=CONDITION,
        postgresql_where=CONDITION,
    )


def downgrade() -> None:
    op.drop_index("uq_environment_live_pr", table_name="environment")
