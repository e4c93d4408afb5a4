"""Apply a service's Alembic migrations to its own database, safely from several processes at once.

Alembic is imported only by the functions that migrate, so that checking a database
(`wait_for_database`) costs a serving process nothing more.

Each service keeps its history in `orderflow/<service>/migrations/`; its `env.py` calls
`run_env()` below. On PostgreSQL an advisory lock makes concurrent start-ups of replicas
wait for one another; on SQLite the BEGIN IMMEDIATE of the migration transaction does.
"""

from __future__ import annotations

import asyncio
import socket
import time
import zlib
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError

from orderflow.platform.async_engine import create_async_engine
from orderflow.platform.db import Database, create_database
from orderflow.settings import StartupError

if TYPE_CHECKING:
    from alembic.config import Config

# PostgreSQL error codes that waiting will not cure.
_MISSING_DATABASE = "3D000"
_REFUSED_LOGIN = ("28000", "28P01")  # no such role; wrong password
_DUPLICATE_DATABASE = "42P04"


def _config(service: str, connection: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    location = resources.files(f"orderflow.{service}") / "migrations"
    cfg.set_main_option("script_location", str(location))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


async def upgrade(database: Database, service: str) -> None:
    """Bring the database of `service` to the newest revision."""

    from alembic import command

    def _run(sync_conn: Connection) -> None:
        if sync_conn.dialect.name == "postgresql":
            key = zlib.crc32(f"orderflow.{service}.migrations".encode())
            sync_conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
        command.upgrade(_config(service, sync_conn), "head")

    async with database.engine.begin() as conn:
        await conn.run_sync(_run)


async def current_revision(database: Database) -> str | None:
    """The revision the database is at, or None before the first migration."""

    from alembic.runtime.migration import MigrationContext

    def _read(sync_conn: Connection) -> str | None:
        return MigrationContext.configure(sync_conn).get_current_revision()

    async with database.reading() as conn:
        return await conn.run_sync(_read)


def head_revision(service: str) -> str | None:
    from alembic.script import ScriptDirectory

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


def _causes(exc: BaseException) -> list[BaseException]:
    """exc and what it wraps (SQLAlchemy's .orig, then __cause__ / __context__)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 10:
        seen.append(current)
        orig = getattr(current, "orig", None)
        current = (
            orig if isinstance(orig, BaseException) else (current.__cause__ or current.__context__)
        )
    return seen


def lasting_problem(exc: BaseException, service: str, url: str, setting: str) -> str | None:
    """What is wrong, when waiting will not help (no such database, role or host); None
    when the database may just not be up yet."""
    parsed = make_url(url)
    where = f"{parsed.host or 'localhost'}:{parsed.port or 5432}"
    for cause in _causes(exc):
        state = getattr(cause, "sqlstate", None)
        if state == _MISSING_DATABASE:
            name = parsed.database
            return (
                f'{service}: database "{name}" does not exist on {where} ({setting}).\n'
                f"  Create it: orderflow migrate {service} --create-database"
                f'   (or in psql: CREATE DATABASE "{name}";)'
            )
        if state in _REFUSED_LOGIN:
            return f"{service}: {where} refused the login ({setting}): {cause}"
        if isinstance(cause, socket.gaierror):
            return f"{service}: unknown database host {parsed.host!r} ({setting})"
    return None


async def refuse_lasting_problem(service: str, url: str, setting: str) -> None:
    """Try the database once: StartupError for a lasting problem (no such database, role or
    host); nothing when it answers or may just not be up yet."""
    database = create_database(url, pool_size=1)
    try:
        await database.ping()
    except Exception as exc:
        problem = lasting_problem(exc, service, url, setting)
        if problem is not None:
            raise StartupError(problem) from None
    finally:
        await database.dispose()


async def wait_for_database(
    service: str,
    url: str,
    setting: str,
    wait: float,
    notice: Callable[[str], None],
) -> None:
    """Return once the database at url answers. A database started alongside (compose, a
    Job) may not answer yet: wait up to `wait` seconds with backoff, telling notice. A
    lasting problem (no such database, role or host) raises StartupError at once."""
    database = create_database(url, pool_size=1)
    deadline = time.monotonic() + wait
    delay = 0.5
    try:
        while True:
            try:
                await database.ping()
                return
            except Exception as exc:
                problem = lasting_problem(exc, service, url, setting)
                if problem is not None:
                    raise StartupError(problem) from None
                if time.monotonic() + delay > deadline:
                    raise StartupError(
                        f"{service}: database not reachable after {wait:g} s ({setting}): {exc}",
                        exit_code=1,
                    ) from None
                notice(f"{service}: database not reachable yet ({exc}); retrying in {delay:g} s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
    finally:
        await database.dispose()


async def create_missing_database(url: str) -> bool:
    """Create the PostgreSQL database url names, if it does not exist yet (connecting to
    the server's `postgres` database as the same user). True if it was created. A SQLite
    file is created by its first connection, so there is nothing to do for SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql" or not parsed.database:
        return False
    name = parsed.database
    admin = create_async_engine(
        parsed.set(database="postgres"), isolation_level="AUTOCOMMIT", pool_size=1
    )
    try:
        async with admin.connect() as conn:
            exists = await conn.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            )
            if exists:
                return False
            quoted = '"' + name.replace('"', '""') + '"'
            try:
                await conn.execute(text(f"CREATE DATABASE {quoted}"))
            except DBAPIError as exc:
                if getattr(exc.orig, "sqlstate", None) == _DUPLICATE_DATABASE:
                    return False  # another replica created it just now
                raise
            return True
    finally:
        await admin.dispose()
