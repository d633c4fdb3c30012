"""sleep: when each environment falls asleep, indexed for the sleep tick

`environment.sleep_due_at` is `last_activity_at + ttl.sleep_after` (NULL: it never sleeps);
the index on (desired, sleep_due_at) lets the tick select only the awake environments whose
time has come, however many there are. No row has `sleep_after` yet, so NULL is right for all.

Revision ID: 0017
Revises: 0016
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("environment") as batch:
        batch.add_column(sa.Column("sleep_due_at", sa.DateTime(), nullable=True))
        batch.create_index("ix_environment_sleep_due", ["desired", "sleep_due_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("environment") as batch:
        batch.drop_index("ix_environment_sleep_due")
        batch.drop_column("sleep_due_at")
