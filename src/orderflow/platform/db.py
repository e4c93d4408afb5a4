"""Async database access: engines for SQLite and PostgreSQL, a unit of work, and retries.

SQLite runs in WAL mode with a busy timeout, and every write transaction starts with
BEGIN IMMEDIATE, so writers queue for the lock instead of failing on upgrade. Within
one process, SQLite writers also take an asyncio lock: they would serialise on the file
anyway, and waiting on the lock is cheaper than the busy-wait. PostgreSQL gets row
locks from the conditional UPDATEs and SELECT ... FOR UPDATE of the repositories.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from sqlalchemy import Table, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.dml import Insert

T = TypeVar("T")
U = TypeVar("U", bound="UnitOfWork")

SQLITE_BUSY_TIMEOUT_MS = 30_000

# PostgreSQL SQLSTATEs worth retrying the whole transaction for.
_RETRYABLE_SQLSTATES = {"40001", "40P01", "55P03"}  # serialization, deadlock, lock not available


def now_us() -> int:
    """The wall clock in epoch microseconds: how every service stores its timestamps."""
    return time.time_ns() // 1000


class Rollback(Exception):
    """Raised inside a unit of work to roll it back on purpose (caught by its caller)."""


class Database:
    """An engine plus what its dialect needs to make units of work behave the same everywhere."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None
        self._insert_ignore: dict[tuple[str, tuple[str, ...]], Insert] = {}

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    async def ping(self) -> None:
        """Raise unless the database answers a trivial query."""
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def ping_schema(self, expected_revision: str) -> None:
        """Raise unless the database answers and its migrations are at expected_revision, so
        a server started before its migrations ran (e.g. by a Job) does not report SERVING."""
        async with self.engine.connect() as conn:
            try:
                found = (
                    await conn.execute(text("SELECT version_num FROM alembic_version"))
                ).scalar()
            except DBAPIError as exc:
                if "alembic_version" not in str(exc):
                    raise  # the database itself is not answering
                found = None
        if found != expected_revision:
            raise RuntimeError(
                f"database schema is at revision {found or 'none'}, not {expected_revision}: "
                "run `orderflow migrate`"
            )

    async def dispose(self) -> None:
        await self.engine.dispose()

    def insert_ignore(self, table: Table, index_elements: Sequence[str]) -> Insert:
        """An INSERT that does nothing when the row's key already exists (built once, then
        reused: pass the row as execution parameters)."""
        key = (table.name, tuple(index_elements))
        statement = self._insert_ignore.get(key)
        if statement is None:
            # Imported here: a process loads only the dialect it talks to.
            if self.is_sqlite:
                from sqlalchemy.dialects import sqlite

                statement = sqlite.insert(table).on_conflict_do_nothing(
                    index_elements=index_elements
                )
            else:
                from sqlalchemy.dialects import postgresql

                statement = postgresql.insert(table).on_conflict_do_nothing(
                    index_elements=index_elements
                )
            self._insert_ignore[key] = statement
        return statement


def create_database(url: str, *, pool_size: int = 10) -> Database:
    """Build the engine for url (sqlite+aiosqlite or postgresql+asyncpg); connects lazily."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            pool_size=pool_size,
            max_overflow=pool_size,
            # Every unit of work ends in COMMIT or ROLLBACK itself; a second ROLLBACK when the
            # connection goes back to the pool would cost one more trip to the driver's thread.
            pool_reset_on_return=None,
        )
        _configure_sqlite(engine)
    else:
        engine = create_async_engine(
            url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, pool_timeout=30
        )
    return Database(engine)


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself, so it can say IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")


class UnitOfWork:
    """One transaction: `async with uow:` rolls back unless `await uow.commit()` ran.

    Subclasses attach their repositories to `self.connection` in `_attach()`.
    A read-only unit of work does not take SQLite's write lock.
    """

    connection: AsyncConnection

    def __init__(self, database: Database, *, readonly: bool = False) -> None:
        self.database = database
        self.readonly = readonly
        self._committed = False
        self._locked = False

    def _attach(self) -> None:
        """Create repositories on self.connection (override)."""

    async def __aenter__(self) -> Self:
        lock = self.database._write_lock
        if lock is not None and not self.readonly:
            await lock.acquire()
            self._locked = True
        try:
            conn = await self.database.engine.connect()
            if self.database.is_sqlite and self.readonly:
                conn = await conn.execution_options(sqlite_begin="DEFERRED")
            self.connection = conn
            await conn.begin()
        except BaseException:
            self._unlock()
            raise
        self._committed = False
        self._attach()
        return self

    async def commit(self) -> None:
        await self.connection.commit()
        self._committed = True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if not self._committed:
                await self.connection.rollback()
            await self.connection.close()
        finally:
            self._unlock()

    def _unlock(self) -> None:
        if self._locked and self.database._write_lock is not None:
            self._locked = False
            self.database._write_lock.release()


def is_retryable(exc: BaseException) -> bool:
    """True for failures where running the same transaction again can succeed."""
    if isinstance(exc, IntegrityError):
        # A unique key raced by a concurrent insert: the retry reads the winner's row.
        return True
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        if sqlstate in _RETRYABLE_SQLSTATES:
            return True
        return "database is locked" in str(orig)
    return False


async def retry_transaction(
    attempt: Callable[[], Awaitable[T]], *, attempts: int = 8, base_delay: float = 0.005
) -> T:
    """Run attempt() again (with jittered backoff) when it fails with a retryable DB error."""
    for n in range(1, attempts + 1):
        try:
            return await attempt()
        except (IntegrityError, DBAPIError) as exc:
            if n == attempts or not is_retryable(exc):
                raise
            await asyncio.sleep(base_delay * (2 ** (n - 1)) * (0.5 + random.random()))
    raise AssertionError("unreachable")


async def transact(make_uow: Callable[[], U], work: Callable[[U], Awaitable[T]]) -> T:
    """Run work(uow) in one transaction, committed unless it raised; retried when retryable.

    A domain error raised by work rolls everything back, so a refused request changes nothing.
    """

    async def attempt() -> T:
        async with make_uow() as uow:
            result = await work(uow)
            if not uow.readonly:
                await uow.commit()
            return result

    return await retry_transaction(attempt)
