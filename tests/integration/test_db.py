"""The unit of work on real databases: commit, rollback, and SQLite locked by another process.

On SQLite, units of work run inline on the event loop (ADR 8); these tests pin down what
that must not cost: a lock held by another process is waited for without stalling the
loop, and given up after the busy timeout with the connection still usable.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.exc import OperationalError

from orderflow.platform import db as dbmod
from orderflow.platform.db import Database, UnitOfWork, create_database, transact

metadata = MetaData()
notes = Table(
    "notes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("body", String(50), nullable=False),
)


@pytest.fixture
async def database(make_db_url: Callable[[str], object]) -> AsyncIterator[Database]:
    url = await make_db_url("unit")  # type: ignore[misc]
    database = create_database(str(url))
    async with database.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield database
    await database.dispose()


async def add(database: Database, body: str) -> None:
    async def work(uow: UnitOfWork) -> None:
        await uow.connection.execute(insert(notes), {"body": body})

    await transact(lambda: UnitOfWork(database), work)


async def bodies(database: Database) -> list[str]:
    async def work(uow: UnitOfWork) -> list[str]:
        rows = await uow.connection.execute(select(notes.c.body).order_by(notes.c.id))
        return [row.body for row in rows]

    return await transact(lambda: UnitOfWork(database, readonly=True), work)


async def test_commits_and_rolls_back(database: Database) -> None:
    await add(database, "kept")

    async def fails(uow: UnitOfWork) -> None:
        await uow.connection.execute(insert(notes), {"body": "undone"})
        raise dbmod.Rollback

    with pytest.raises(dbmod.Rollback):
        await transact(lambda: UnitOfWork(database), fails)
    await add(database, "after")  # the connection is usable after a rollback

    assert await bodies(database) == ["kept", "after"]
    # What the units of work wrote is what another engine reads from the database.
    async with database.engine.connect() as conn:
        count = (await conn.execute(select(func.count()).select_from(notes))).scalar_one()
    assert count == 2


async def test_concurrent_writers_all_land(database: Database) -> None:
    await asyncio.gather(*(add(database, f"n{i}") for i in range(200)))
    assert sorted(await bodies(database)) == sorted(f"n{i}" for i in range(200))


HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO notes (body) VALUES ('other process')")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def hold_write_lock(path: str, seconds: float) -> subprocess.Popen[str]:
    """Another process that takes SQLite's write lock and keeps it for `seconds`."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, path, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def sqlite_path(database: Database) -> str:
    return str(database.engine.url.database)


async def ticking(stop: asyncio.Event) -> int:
    """How many 10 ms ticks the event loop managed until stop: a stalled loop ticks less."""
    ticks = 0
    while not stop.is_set():
        await asyncio.sleep(0.01)
        ticks += 1
    return ticks


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_waits_for_another_process_without_stalling_the_loop(database: Database) -> None:
    await add(database, "before")
    holder = hold_write_lock(sqlite_path(database), 0.6)
    try:
        stop = asyncio.Event()
        ticker = asyncio.create_task(ticking(stop))
        started = time.monotonic()
        await add(database, "waited")
        waited = time.monotonic() - started
        stop.set()
        ticks = await ticker
    finally:
        holder.communicate(timeout=10)  # waits, and closes its stdout
    assert holder.returncode == 0
    assert waited >= 0.3  # it really had to wait for the other process's commit
    # While waiting, the loop kept running: roughly one tick per 10 ms, not a frozen loop.
    assert ticks >= waited / 0.01 * 0.5
    assert await bodies(database) == ["before", "other process", "waited"]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_gives_up_after_the_busy_timeout(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dbmod, "SQLITE_BUSY_TIMEOUT_MS", 300)
    holder = hold_write_lock(sqlite_path(database), 2.0)
    try:
        started = time.monotonic()
        with pytest.raises(OperationalError, match="database is locked"):
            await add(database, "refused")
        assert 0.3 <= time.monotonic() - started < 1.5
    finally:
        holder.communicate(timeout=10)  # waits, and closes its stdout
    await add(database, "later")  # once the other process is done, writes go through again
    assert await bodies(database) == ["other process", "later"]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_probes_do_not_wait_for_the_write_lock(database: Database) -> None:
    # Readiness probes run every few seconds; one that took the write lock would stall
    # every writer behind it, and one that needed it would fail while a write is long.
    async with database.engine.begin() as conn:
        await conn.exec_driver_sql("CREATE TABLE alembic_version (version_num VARCHAR(32))")
        await conn.exec_driver_sql("INSERT INTO alembic_version VALUES ('0001')")
    holder = hold_write_lock(sqlite_path(database), 3.0)
    try:
        started = time.monotonic()
        await database.ping()
        await database.ping_schema("0001")
        assert time.monotonic() - started < 1.0
        assert holder.poll() is None  # the other process still held the lock throughout
    finally:
        holder.communicate(timeout=10)  # waits, and closes its stdout


@pytest.mark.parametrize(
    "backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
async def test_a_connection_the_server_dropped_is_replaced(database: Database) -> None:
    # Pooled connections are not pinged before use (a round trip per transaction): when
    # PostgreSQL has dropped one (restart, failover, idle timeout), the transaction that
    # meets it is run again on a new connection instead of failing.
    await add(database, "before")
    url = database.engine.url
    admin = await asyncpg.connect(
        user=url.username, host=url.host, port=url.port, database=url.database
    )
    try:
        dropped = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()
    assert dropped >= 1  # the pool's idle connection was cut off
    await add(database, "after")
    assert await bodies(database) == ["before", "after"]


async def all_given_back(database: Database) -> None:
    """Wait (5 s at most) until the pool has every connection back."""
    deadline = time.monotonic() + 5
    pool: Any = database.engine.pool
    while pool.checkedout() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert pool.checkedout() == 0


async def test_a_unit_of_work_cancelled_while_it_ends_gives_its_connection_back(
    make_db_url: Callable[[str], object], caplog: pytest.LogCaptureFixture
) -> None:
    """A gRPC call past its deadline is cancelled, possibly again while its unit of work
    rolls back and returns its connection (and the pool, full, closes that connection):
    the clean-up still finishes, and nothing is logged as failed (sqlalchemy#8145)."""
    url = await make_db_url("cancel")  # type: ignore[misc]
    database = create_database(str(url), pool_size=1)  # a second connection is overflow
    try:
        async with database.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        for turns in range(30):
            held, release, inside = asyncio.Event(), asyncio.Event(), asyncio.Event()

            async def holder(held: asyncio.Event = held, release: asyncio.Event = release) -> None:
                async with UnitOfWork(database, readonly=True) as uow:
                    await uow.connection.execute(select(notes.c.id))
                    held.set()
                    await release.wait()

            async def work(inside: asyncio.Event = inside) -> None:
                async with UnitOfWork(database) as uow:
                    await uow.connection.execute(insert(notes), {"body": "never"})
                    inside.set()
                    await asyncio.sleep(30)

            holding = asyncio.create_task(holder())
            await held.wait()
            task = asyncio.create_task(work())
            await inside.wait()
            release.set()
            await holding  # the pool is full again: work's connection will be closed
            task.cancel()  # in the body: the unit of work rolls back, gives back, closes
            for _ in range(turns % 6):
                await asyncio.sleep(0)
            task.cancel()  # and again, somewhere in that clean-up
            with contextlib.suppress(asyncio.CancelledError):
                await task
            # The shielded clean-up may still be running: the connection is given back
            # within moments, before the next turn. (Left running into it, the next unit of
            # work waits for a connection, and SQLAlchemy's pool wakes a waiter for a
            # connection given back, not for one it closed: it slept its whole pool_timeout,
            # 30 s, in one turn of five under coverage.)
            await all_given_back(database)

        assert await bodies(database) == []
        await add(database, "after")  # connections and the write lock still usable
        assert await bodies(database) == ["after"]
        pool_errors = [r for r in caplog.records if r.name.startswith("sqlalchemy.pool")]
        assert pool_errors == [], [r.getMessage() for r in pool_errors]
    finally:
        await database.dispose()
