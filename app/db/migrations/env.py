"""Alembic environment: runs on the connection handed over by Database.migrate()."""

from alembic import context
from sqlmodel import SQLModel

import app.db.models  # noqa: F401  (registers the tables)

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only through `alembic` CLI by hand
    raise SystemExit("run migrations through runbot (Database.migrate), which passes a connection")

context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
