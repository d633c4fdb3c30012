"""target records: the template and inputs of every applied engine target

`targetrecord` keeps, per engine target, the stack (source pinned to its commit) and the inputs
of its last apply, written before the apply starts and dropped once its state is destroyed. The
orphan sweep destroys state that outlived its silo or environment row with it.

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db.models

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "targetrecord",
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("target_id", sa.String(length=63), nullable=False),
        sa.Column("stack", sa.String(length=200), nullable=False),
        sa.Column("stack_source", sa.JSON(), nullable=False),
        sa.Column("variables", sa.JSON(), nullable=False),
        sa.Column("sensitive", sa.JSON(), nullable=False),
        sa.Column("declared_backend", sa.String(length=40), nullable=True),
        sa.Column("recorded_at", app.db.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("targetrecord")
