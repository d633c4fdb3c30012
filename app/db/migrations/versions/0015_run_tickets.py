"""run tickets: what a Kubernetes pod may fetch and push for one run, by its run token

`runticket` holds the token's hash, its expiry, the signed run spec, the pinned template
tarball and the pushed result; `runticketline` the pushed log lines, keyed by (run_id, seq) so
a resent batch is ignored.

Revision ID: 0015
Revises: 0014
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "runticket",
        sa.Column("run_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("target", sa.String(length=200), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("template", sa.LargeBinary(), nullable=True),
        sa.Column("phases", sa.String(length=200), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("run_id"),
    )
    op.create_table(
        "runticketline",
        sa.Column("run_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "seq"),
    )


def downgrade() -> None:
    op.drop_table("runticketline")
    op.drop_table("runticket")
