"""hold_kind: why a PR's head is not deployed, as a kind code branches on

Until now the reason was only a sentence (`hold_reason`) that code matched with prefixes, so
rewording it could change behaviour. Existing rows are backfilled from that wording, the last
time it is read.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (kind, SQL LIKE pattern of the sentence it was stored as), first match wins.
_BACKFILL = (
    ("closed", "closed"),
    ("queued", "queued:%"),
    ("ci_failed", "checks failed on %"),
    ("waiting_for_ci", "waiting for checks on %"),
    ("fork_off", "PRs from forks are not deployed here%"),
    ("fork_awaiting_approval", "PRs from forks wait for %"),
    ("draft", "draft PRs are not deployed%"),
    ("labels", "waiting for the label(s)%"),
    ("cannot_deploy", "cannot deploy: %"),
)


def upgrade() -> None:
    with op.batch_alter_table("pullrequest") as batch:
        batch.add_column(sa.Column("hold_kind", sa.String(length=40), nullable=True))
        batch.create_index("ix_pullrequest_hold_kind", ["hold_kind"])
    pull = sa.table(
        "pullrequest",
        sa.column("hold_kind", sa.String()),
        sa.column("hold_reason", sa.Text()),
        sa.column("config_error", sa.Text()),
    )
    bind = op.get_bind()
    bind.execute(
        pull.update().where(pull.c.config_error.is_not(None)).values(hold_kind="config_error")
    )
    for kind, pattern in _BACKFILL:
        bind.execute(
            pull.update()
            .where(pull.c.hold_kind.is_(None), pull.c.hold_reason.like(pattern))
            .values(hold_kind=kind)
        )


def downgrade() -> None:
    with op.batch_alter_table("pullrequest") as batch:
        batch.drop_index("ix_pullrequest_hold_kind")
        batch.drop_column("hold_kind")
