"""check runs, quiet mode and a tidy GitHub: what runbot last wrote to a PR's check run

`pullrequest.check_run_*` remember the `runbot` check run on the head commit (id, commit, what
it showed, completed or not) so it is edited, not re-created; `quiet` and `keep_deployments`
carry `.runbot.yml`'s `comments: quiet` and `deployments: keep` to the notifier; `tidied_env`
records the environment whose inactive deployments were deleted after the PR closed.

Revision ID: 0014
Revises: 0013
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FLAGS = ("check_run_done", "quiet", "keep_deployments")


def upgrade() -> None:
    with op.batch_alter_table("pullrequest") as batch:
        batch.add_column(sa.Column("check_run_id", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("check_run_sha", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("check_run_digest", sa.String(length=64), nullable=True))
        for name in _FLAGS:
            batch.add_column(sa.Column(name, sa.Boolean(), nullable=True))  # None: false
        batch.add_column(sa.Column("tidied_env", sa.String(length=63), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pullrequest") as batch:
        for name in ("tidied_env", *reversed(_FLAGS), "check_run_digest", "check_run_sha"):
            batch.drop_column(name)
        batch.drop_column("check_run_id")
