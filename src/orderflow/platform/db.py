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
Each statement then runs straight on the driver from a plan made once per shape of
statement (platform.inline_sql, ADR 33): SQLAlchemy's dispatch of a statement costs
several times what SQLite takes to run it.
The aiosqlite engine (`Database.engine`) remains for migrations, probes and tools.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar, cast

import structlog
from sqlalchemy import Table, create_engine, event, text
from sqlalchemy.engine import Connection, CursorResult, Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.sql import Executable
from sqlalchemy.sql.dml import Insert

from orderflow.platform.async_engine import AsyncConnection, AsyncEngine, create_async_engine
from orderflow.platform.inline_sql import MAX_PLANS, StatementPlan, plan_for

T = TypeVar("T")
U = TypeVar("U", bound="Transactional")
U_co = TypeVar("U_co", covariant=True)

log = structlog.get_logger("orderflow.db")

SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_INLINE_BUSY_MS = 20
# How long a cancelled unit of work waits for its connection's rollback and return (a few
# milliseconds as a rule) before it lets the cancellation through anyway, leaving them to
# finish in the background: a server gone silent must not keep a cancelled call forever.
GIVE_BACK_GRACE_SECONDS = 5.0

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
        # Statement plans of the inline (SQLite) connections, by shape (platform.inline_sql).
        self._plans: dict[Any, StatementPlan | None] = {}

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads outside units of work (probes, tools). On SQLite its
        transaction starts DEFERRED, so a probe never holds the write lock that writers
        wait for (engine connections otherwise BEGIN IMMEDIATE, as migrations need)."""
        conn = await self.engine.connect()
        try:
            if self.is_sqlite:
                conn = await conn.execution_options(sqlite_begin="DEFERRED")
            yield conn
        finally:
            await _to_the_end(_give_back(conn, rollback=False))  # as in end()

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

    # -- transactions (what units of work run in) -------------------------------------

    async def begin(self, *, readonly: bool = False) -> Transaction:
        """Open a transaction. On SQLite a writer first waits its turn on the write lock and
        runs inline on the shared writer connection; a reader gets a connection of its own."""
        locked = False
        if self._write_lock is not None and not readonly:
            await self._write_lock.acquire()
            locked = True
        try:
            if self.inline_engine is not None:
                return self._begin_inline(self.inline_engine, readonly=readonly, locked=locked)
            conn = await self.engine.connect()
            try:
                await conn.begin()
            except BaseException:
                await _to_the_end(_give_back(conn, rollback=False))  # as in end()
                raise
            return Transaction(conn, None, readonly=readonly, locked=locked)
        except BaseException:
            self._unlock(locked)
            raise

    def _begin_inline(self, engine: Engine, *, readonly: bool, locked: bool) -> Transaction:
        sync: Connection
        if readonly:
            sync = engine.connect()
        elif self._writer is None or self._writer.closed or self._writer.invalidated:
            # We hold the write lock: the shared writer connection is ours to (re)open.
            sync = self._writer = engine.connect()
        else:
            sync = self._writer
        sync.begin()  # SQLAlchemy's own bookkeeping: the driver sends nothing for it
        try:
            _raw_begin(sync, "DEFERRED" if readonly else "IMMEDIATE")
        except BaseException:
            # A refused BEGIN (the file is locked) leaves the connection as it was.
            sync.rollback()
            self._release_inline(sync, readonly=readonly, broken=sync.invalidated)
            raise
        connection = InlineConnection(sync, self._plans)
        return Transaction(connection, sync, readonly=readonly, locked=locked)

    async def commit(self, transaction: Transaction) -> None:
        """The database commit of transaction."""
        if transaction.sync is not None:
            transaction.sync.commit()
        else:
            assert isinstance(transaction.connection, AsyncConnection)
            try:
                await transaction.connection.commit()
            except DBAPIError as exc:
                if exc.connection_invalidated:
                    raise CommitOutcomeUnknownError(
                        "the database connection broke during COMMIT"
                    ) from exc
                raise
        transaction.committed = True

    async def end(self, transaction: Transaction) -> None:
        """Roll transaction back unless it was committed, and give back what it held."""
        try:
            sync = transaction.sync
            if sync is not None:
                broken = True
                try:
                    if not transaction.committed:
                        sync.rollback()
                    broken = False
                finally:
                    self._release_inline(sync, readonly=transaction.readonly, broken=broken)
            else:
                conn = transaction.connection
                assert isinstance(conn, AsyncConnection)
                # A call cancelled at its deadline must not cancel the rollback and the return
                # of its connection half-way (the pool would log a traceback and drop the
                # connection, sqlalchemy#8145); and it ends only once they are done.
                await _to_the_end(_give_back(conn, rollback=not transaction.committed))
        finally:
            self._unlock(transaction.locked)
            transaction.locked = False

    def _release_inline(self, sync: Connection, *, readonly: bool, broken: bool) -> None:
        """Give back a reader's connection; keep the writer's unless it may be unusable."""
        if readonly or broken:
            if sync is self._writer:
                self._writer = None
            sync.close()

    def _unlock(self, locked: bool) -> None:
        if locked and self._write_lock is not None:
            self._write_lock.release()

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


async def _to_the_end(cleanup: Coroutine[Any, Any, None]) -> None:
    """Run cleanup (a connection's rollback and return) to its end, even if this task is
    cancelled meanwhile, once or more, and only then let the cancellation through — unless
    it takes longer than GIVE_BACK_GRACE_SECONDS, when it goes on in the background.

    A bare asyncio.shield would let a second cancel end the task while its connection is
    still being given back: the pool then counts that connection as checked out, and a
    checkout that finds the pool at its limit meanwhile waits the whole pool timeout (30 s),
    since SQLAlchemy's pool wakes a waiter when a connection comes back to it, not when a
    closed overflow connection makes room.
    """
    task = asyncio.ensure_future(cleanup)
    try:
        await asyncio.shield(task)
        return
    except asyncio.CancelledError as exc:
        if task.done():  # the clean-up is over (or was itself cancelled: loop closing)
            raise
        cancelled = exc
    loop = asyncio.get_running_loop()
    until = loop.time() + GIVE_BACK_GRACE_SECONDS
    while not task.done() and (left := until - loop.time()) > 0:
        with contextlib.suppress(asyncio.CancelledError):  # cancelled again: wait on
            await asyncio.wait((task,), timeout=left)  # (never cancels the clean-up)
    if not task.done():
        log.warning("connection_give_back_slow", waited_seconds=GIVE_BACK_GRACE_SECONDS)
        task.add_done_callback(_retrieve)
        raise cancelled
    failed = None if task.cancelled() else task.exception()
    if failed is not None:
        raise cancelled from failed
    raise cancelled


def _retrieve(task: asyncio.Future[None]) -> None:
    """Read the outcome of a clean-up nobody waits for any more (asyncio would log it as
    never retrieved)."""
    if not task.cancelled():
        task.exception()


async def _give_back(conn: AsyncConnection, *, rollback: bool) -> None:
    try:
        if rollback:
            await conn.rollback()
    finally:
        await conn.close()


def _configure_sqlite(engine: Engine, busy_ms: int, *, begin_event: bool) -> None:
    """Pragmas on every new connection; with begin_event, BEGIN [IMMEDIATE] on every begin.

    The inline engine has no begin event: any connection event listener makes SQLAlchemy
    dispatch (empty) events around every statement, so its units of work emit BEGIN
    themselves (`Database._begin_inline`).
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
    statement runs right away on the calling thread (ADR 8), straight on the driver when
    it has a plan (platform.inline_sql), else through SQLAlchemy."""

    __slots__ = ("_driver", "_plans", "sync_connection")

    def __init__(self, sync_connection: Connection, plans: dict[Any, StatementPlan | None]) -> None:
        self.sync_connection = sync_connection
        self._plans = plans
        self._driver: Any = None

    async def execute(self, statement: Executable, parameters: Any = None) -> CursorResult[Any]:
        if parameters is None:
            sets: Sequence[Mapping[str, Any]] = ({},)
        elif isinstance(parameters, Mapping):
            sets = (parameters,)
        else:
            sets = parameters
        cache_key = statement._generate_cache_key() if sets else None  # type: ignore[attr-defined]
        if cache_key is None:  # not cacheable: SQLAlchemy's own way
            return self.sync_connection.execute(statement, parameters)
        keys = tuple(sorted(sets[0]))
        shape = (cache_key.key, keys, len(sets) > 1)
        try:
            plan = self._plans[shape]
        except KeyError:
            dialect = self.sync_connection.dialect
            plan = plan_for(statement, keys, len(sets) > 1, dialect, cache_key)
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
            self._plans[shape] = plan
        if plan is None or any(p.keys() != sets[0].keys() for p in sets[1:]):
            return self.sync_connection.execute(statement, parameters)
        if self._driver is None:
            self._driver = self.sync_connection.connection.dbapi_connection
        # Typed as what SQLAlchemy returns: InlineResult offers what repositories use of it.
        return cast(CursorResult[Any], plan.run(self._driver, sets, cache_key.bindparams))


class Transaction:
    """An open transaction of a Database (`Database.begin`): statements go to `connection`;
    `Database.commit` and `Database.end` finish it. Only the Database reads the rest."""

    __slots__ = ("committed", "connection", "locked", "readonly", "sync")

    def __init__(
        self,
        connection: UnitOfWorkConnection,
        sync: Connection | None,
        *,
        readonly: bool,
        locked: bool,
    ) -> None:
        self.connection = connection
        self.sync = sync  # the inline (SQLite) connection, or None on PostgreSQL
        self.readonly = readonly
        self.locked = locked  # holds the database's write lock
        self.committed = False


class Transactional(Protocol):
    """What `transact` needs of a unit of work: `async with` it, then commit unless readonly.

    Each service describes its own unit of work (the repositories it exposes) on top of this,
    so its use cases run on the SQL one in production and on a fake in unit tests.
    """

    readonly: bool

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def commit(self) -> None:
        """Make the transaction's changes durable (the database commit)."""
        ...


class UnitOfWorkFactory(Protocol[U_co]):
    """What a service is given to open units of work: `factory(readonly=True)` for reads."""

    def __call__(self, *, readonly: bool = False) -> U_co: ...


class SqlRepository:
    """Base of the services' Sql...Repository classes: the unit of work's connection, and
    the database for the statements it builds per dialect (`insert_ignore`)."""

    __slots__ = ("connection", "database")

    def __init__(self, connection: UnitOfWorkConnection, database: Database) -> None:
        self.connection = connection
        self.database = database


class UnitOfWork:
    """One SQL transaction: `async with uow:` rolls back unless `await uow.commit()` ran.

    Each service's Sql...UnitOfWork subclass puts its repositories on `self.connection` in
    `_attach()`. A read-only unit of work does not take SQLite's write lock.
    """

    connection: UnitOfWorkConnection

    def __init__(self, database: Database, *, readonly: bool = False) -> None:
        self.database = database
        self.readonly = readonly
        self._transaction: Transaction | None = None

    def _attach(self) -> None:
        """Create repositories on self.connection (override)."""

    async def __aenter__(self) -> Self:
        self._transaction = await self.database.begin(readonly=self.readonly)
        self.connection = self._transaction.connection
        self._attach()
        return self

    async def commit(self) -> None:
        assert self._transaction is not None, "commit() outside `async with`"
        await self.database.commit(self._transaction)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        transaction, self._transaction = self._transaction, None
        if transaction is not None:
            await self.database.end(transaction)


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
