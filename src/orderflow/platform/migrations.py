"""Apply a service's Alembic migrations to its own database, safely from several processes at once.

Each service keeps its history in `orderflow/<service>/migrations/`; its `env.py` calls
`run_env()` below. On PostgreSQL an advisory lock makes concurrent start-ups of replicas
wait for one another; on SQLite the BEGIN IMMEDIATE of the migration transaction does.
"""

from __future__ import annotations

import zlib
from importlib import resources
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection

from orderflow.platform.db import Database


def _config(service: str, connection: Connection | None = None) -> Config:
    cfg = Config()
    location = resources.files(f"orderflow.{service}") / "migrations"
    cfg.set_main_option("script_location", str(location))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


async def upgrade(database: Database, service: str) -> None:
    """Bring the database of `service` to the newest revision."""

    def _run(sync_conn: Connection) -> None:
        if sync_conn.dialect.name == "postgresql":
            key = zlib.crc32(f"orderflow.{service}.migrations".encode())
            sync_conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
        command.upgrade(_config(service, sync_conn), "head")

    async with database.engine.begin() as conn:
        await conn.run_sync(_run)


async def current_revision(database: Database) -> str | None:
    """The revision the database is at, or None before the first migration."""

    def _read(sync_conn: Connection) -> str | None:
        return MigrationContext.configure(sync_conn).get_current_revision()

    async with database.reading() as conn:
        return await conn.run_sync(_read)


def head_revision(service: str) -> str | None:
    return ScriptDirectory.from_config(_config(service)).get_current_head()


def run_env(context: Any, target_metadata: MetaData) -> None:
    """The body of every service's migrations/env.py: run online on the given connection."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through `orderflow migrate`, which passes a connection")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
