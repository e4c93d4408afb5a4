"""Async database access: engines for SQLite and PostgreSQL, a unit of work, and retries.

SQLite runs in WAL mode, and every write transaction starts with BEGIN IMMEDIATE, so
writers queue for the lock instead of failing on upgrade. Within one process, SQLite
writers also take an asyncio lock: they would serialise on the file anyway, and waiting
on the lock is cheaper than the busy-wait. PostgreSQL gets row locks from the conditional
UPDATEs and SELECT ... FOR UPDATE of the repositories.

Units of work on SQLite run their statements inline, on the event loop's thread, through
SQLAlchemy's synchronous engine (ADR 8): a small SQLite statement takes tens of
microseconds, while handing each one to aiosqlite's thread and back costs several hundred
per transaction. So that a lock held by another process never stalls the loop for long,
the inline connections wait at most SQLITE_INLINE_BUSY_MS for it; past that the whole
transaction is retried after an asyncio sleep, for up to SQLITE_BUSY_TIMEOUT_MS in all.
The aiosqlite engine (`Database.engine`) remains for migrations, probes and tools.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

from sqlalchemy import Table, create_engine, event, text
from sqlalchemy.engine import Connection, CursorResult, Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql import Executable
from sqlalchemy.sql.dml import Insert

T = TypeVar("T")
U = TypeVar("U", bound="UnitOfWork")

SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_INLINE_BUSY_MS = 20

# PostgreSQL SQLSTATEs worth retrying the whole transaction for.
_RETRYABLE_SQLSTATES = {"40001", "40P01", "55P03"}  # serialization, deadlock, lock not available


def now_us() -> int:
    """The wall clock in epoch microseconds: how every service stores its timestamps."""
    return time.time_ns() // 1000


class Rollback(Exception):
    """Raised inside a unit of work to roll it back on purpose (caught by its caller)."""


class CommitOutcomeUnknownError(RuntimeError):
    """The connection broke during COMMIT: the transaction may or may not have been applied,
    so, unlike a connection that broke before it, it is not run again."""


class Database:
    """An engine plus what its dialect needs to make units of work behave the same everywhere.

    `inline_engine` (SQLite only) is the synchronous engine units of work run on.
    """

    def __init__(self, engine: AsyncEngine, inline_engine: Engine | None = None) -> None:
        self.engine = engine
        self.inline_engine = inline_engine
        # SQLite writers take turns under _write_lock, so they can share one connection
        # checked out for good instead of a trip through the pool per unit of work.
        self._writer: Connection | None = None
        self.dialect = engine.dialect.name
        self._write_lock = asyncio.Lock() if self.dialect == "sqlite" else None
        self._insert_ignore: dict[tuple[str, tuple[str, ...]], Insert] = {}

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads outside units of work (probes, tools). On SQLite its
        transaction starts DEFERRED, so a probe never holds the write lock that writers
        wait for (engine connections otherwise BEGIN IMMEDIATE, as migrations need)."""
        async with self.engine.connect() as conn:
            if self.is_sqlite:
                conn = await conn.execution_options(sqlite_begin="DEFERRED")
            yield conn

    async def ping(self) -> None:
        """Raise unless the database answers a trivial query."""
        async with self.reading() as conn:
            await conn.execute(text("SELECT 1"))

    async def ping_schema(self, expected_revision: str) -> None:
        """Raise unless the database answers and its migrations are at expected_revision, so
        a server started before its migrations ran (e.g. by a Job) does not report SERVING."""
        async with self.reading() as conn:
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
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.inline_engine is not None:
            self.inline_engine.dispose()

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
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, pool_size=2
        )
        _configure_sqlite(engine.sync_engine, SQLITE_BUSY_TIMEOUT_MS, begin_event=True)
        inline = create_engine(
            parsed.set(drivername="sqlite"),
            connect_args={"timeout": SQLITE_INLINE_BUSY_MS / 1000},
            pool_size=pool_size,
            max_overflow=pool_size,
            # Every unit of work ends in COMMIT or ROLLBACK itself: no second ROLLBACK when
            # the connection goes back to the pool.
            pool_reset_on_return=None,
        )
        _configure_sqlite(inline, SQLITE_INLINE_BUSY_MS, begin_event=False)
        return Database(engine, inline)
    # No pre-ping (a round trip before every transaction): a connection the server dropped
    # fails its transaction as "invalidated", and retry_transaction runs it again on a
    # fresh one (every unit of work is safe to run twice).
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_timeout=30)
    return Database(engine)


def _configure_sqlite(engine: Engine, busy_ms: int, *, begin_event: bool) -> None:
    """Pragmas on every new connection; with begin_event, BEGIN [IMMEDIATE] on every begin.

    The inline engine has no begin event: any connection event listener makes SQLAlchemy
    dispatch (empty) events around every statement, so its units of work emit BEGIN
    themselves (`UnitOfWork._begin_inline`).
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # No implicit transactions from the driver: BEGIN is always ours, so it can say
        # IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    if begin_event:

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
            conn.exec_driver_sql(f"BEGIN {mode}")


def _raw_begin(sync: Connection, mode: str) -> None:
    """BEGIN straight to sqlite3 (BEGIN has no parameters or result, so SQLAlchemy's
    statement machinery would add only cost), its errors wrapped as SQLAlchemy's would be,
    so that retries recognise them."""
    statement = f"BEGIN {mode}"
    try:
        sync.connection.dbapi_connection.execute(statement)  # type: ignore[union-attr]
    except sqlite3.Error as exc:
        raise DBAPIError.instance(statement, None, exc, sqlite3.Error) from exc


class UnitOfWorkConnection(Protocol):
    """What repositories use of a connection: AsyncConnection (PostgreSQL) or InlineConnection."""

    async def execute(self, statement: Executable, parameters: Any = None) -> CursorResult[Any]:
        """Run one statement in the unit of work's transaction."""
        ...


class InlineConnection:
    """A synchronous SQLite connection behind the async calls a unit of work makes: each
    statement runs right away on the calling thread (ADR 8)."""

    __slots__ = ("sync_connection",)

    def __init__(self, sync_connection: Connection) -> None:
        self.sync_connection = sync_connection

    async def execute(self, statement: Executable, parameters: Any = None) -> CursorResult[Any]:
        return self.sync_connection.execute(statement, parameters)


class UnitOfWork:
    """One transaction: `async with uow:` rolls back unless `await uow.commit()` ran.

    Subclasses attach their repositories to `self.connection` in `_attach()`.
    A read-only unit of work does not take SQLite's write lock.
    """

    connection: UnitOfWorkConnection

    def __init__(self, database: Database, *, readonly: bool = False) -> None:
        self.database = database
        self.readonly = readonly
        self._committed = False
        self._locked = False
        self._sync: Connection | None = None

    def _attach(self) -> None:
        """Create repositories on self.connection (override)."""

    async def __aenter__(self) -> Self:
        lock = self.database._write_lock
        if lock is not None and not self.readonly:
            await lock.acquire()
            self._locked = True
        try:
            inline = self.database.inline_engine
            if inline is not None:
                self._begin_inline(inline)
            else:
                conn = await self.database.engine.connect()
                self.connection = conn
                try:
                    await conn.begin()
                except BaseException:
                    await conn.close()
                    raise
        except BaseException:
            self._unlock()
            raise
        self._committed = False
        self._attach()
        return self

    def _begin_inline(self, engine: Engine) -> None:
        database = self.database
        sync: Connection
        if self.readonly:
            sync = engine.connect()
        elif database._writer is None or database._writer.closed or database._writer.invalidated:
            # We hold the write lock: the shared writer connection is ours to (re)open.
            sync = database._writer = engine.connect()
        else:
            sync = database._writer
        sync.begin()  # SQLAlchemy's own bookkeeping: the driver sends nothing for it
        try:
            _raw_begin(sync, "DEFERRED" if self.readonly else "IMMEDIATE")
        except BaseException:
            # A refused BEGIN (the file is locked) leaves the connection as it was.
            sync.rollback()
            self._release_inline(sync, broken=sync.invalidated)
            raise
        self._sync = sync
        self.connection = InlineConnection(sync)

    def _release_inline(self, sync: Connection, *, broken: bool = False) -> None:
        """Give back a reader's connection; keep the writer's unless it may be unusable."""
        if self.readonly or broken:
            if sync is self.database._writer:
                self.database._writer = None
            sync.close()

    async def commit(self) -> None:
        if self._sync is not None:
            self._sync.commit()
        else:
            try:
                await self._async().commit()
            except DBAPIError as exc:
                if exc.connection_invalidated:
                    raise CommitOutcomeUnknownError(
                        "the database connection broke during COMMIT"
                    ) from exc
                raise
        self._committed = True

    def _async(self) -> AsyncConnection:
        assert isinstance(self.connection, AsyncConnection)
        return self.connection

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._sync is not None:
                sync, self._sync = self._sync, None
                broken = True
                try:
                    if not self._committed:
                        sync.rollback()
                    broken = False
                finally:
                    self._release_inline(sync, broken=broken)
            else:
                conn = self._async()
                try:
                    if not self._committed:
                        await conn.rollback()
                finally:
                    await conn.close()
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
        if exc.connection_invalidated:
            # The server dropped the connection (restart, failover, idle timeout): the pool
            # has discarded it, and the next attempt gets a new one.
            return True
        orig = exc.orig
        sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        if sqlstate in _RETRYABLE_SQLSTATES:
            return True
        return is_busy(exc)
    return False


def is_busy(exc: BaseException) -> bool:
    """True when SQLite refused because another connection holds its lock."""
    return isinstance(exc, DBAPIError) and "database is locked" in str(exc.orig)


async def retry_transaction(
    attempt: Callable[[], Awaitable[T]], *, attempts: int = 8, base_delay: float = 0.005
) -> T:
    """Run attempt() again (with jittered backoff) when it fails with a retryable DB error.

    SQLite's "database is locked" is retried for up to SQLITE_BUSY_TIMEOUT_MS, however many
    attempts that takes: it only means another process is writing (ADR 8).
    """
    busy_until: float | None = None
    n = 0
    while True:
        n += 1
        try:
            return await attempt()
        except (IntegrityError, DBAPIError) as exc:
            if is_busy(exc):
                now = time.monotonic()
                if busy_until is None:
                    busy_until = now + SQLITE_BUSY_TIMEOUT_MS / 1000
                if now >= busy_until:
                    raise
                delay = min(base_delay * (2 ** min(n - 1, 4)), 0.05)
            elif n >= attempts or not is_retryable(exc):
                raise
            else:
                delay = base_delay * (2 ** (n - 1))
            await asyncio.sleep(delay * (0.5 + random.random()))


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
