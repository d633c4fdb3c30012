"""ix_delivery_claim: deliveries by status, then received_at and processed_at, with their id

It replaces the index on status alone, with which claiming from a backlog of pending
deliveries read every pending payload to sort them (see `Delivery`).

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_delivery_claim", "delivery", ["status", "received_at", "processed_at", "id"]
    )
    op.drop_index("ix_delivery_status", table_name="delivery")


def downgrade() -> None:
    op.create_index("ix_delivery_status", "delivery", ["status"])
    op.drop_index("ix_delivery_claim", table_name="delivery")
