"""Engine, sessions and migrations.

SQLite is the embedded default (one process; WAL so readers never wait on the writer).
PostgreSQL is the multi-replica mode: row claims use FOR UPDATE SKIP LOCKED.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry
from sqlmodel import Session, create_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class DatabaseError(Exception):
    """The database cannot be reached or migrated; the message says which and what to check."""


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.is_postgres = url.startswith("postgresql")
        self.engine = self._create_engine(url)
        self._owned: list[Any] = []

    @staticmethod
    def _create_engine(url: str) -> Engine:
        if url.startswith("sqlite"):
            path = make_url(url).database
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA busy_timeout=30000")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.close()

            return engine
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    def own_connection(self) -> Any:
        """A DB-API connection outside the pool, with the engine's settings, for one component
        to keep for good (closed by `dispose`)."""
        pooled = self.engine.raw_connection()
        connection = pooled.driver_connection
        pooled.detach()
        self._owned.append(connection)
        return connection

    def _alembic_config(self) -> Config:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        return config

    def migrate(self) -> None:
        """Bring the schema to head; run at every start so upgrades need no manual step."""
        config = self._alembic_config()
        try:
            with self.engine.begin() as connection:
                if self.is_postgres:
                    # Replicas starting together must not migrate concurrently.
                    connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7215061)")
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except Exception as exc:
            raise DatabaseError(
                f"cannot migrate the database at {self.safe_url}: {exc}. "
                "Check RUNBOT_DATABASE_URL and that the server is reachable."
            ) from exc

    def pending_migrations(self) -> list[str]:
        script = ScriptDirectory.from_config(self._alembic_config())
        with self.engine.connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
        heads = set(script.get_heads())
        return sorted(heads - current)

    @property
    def is_sqlite_file(self) -> bool:
        """SQLite on a file: a second connection sees the same database (not so in memory)."""
        database = make_url(self.url).database
        return not self.is_postgres and database not in (None, "", ":memory:")

    @property
    def safe_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    def dispose(self) -> None:
        for connection in self._owned:
            connection.close()
        self._owned.clear()
        self.engine.dispose()
