"""SQLite units of work run their statements straight on the driver (platform.inline_sql):
what they read and write must be what SQLAlchemy would have, statement by statement.

Each case runs on a real SQLite file twice, once through a unit of work (the plan) and
once through SQLAlchemy's own engine, and compares.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    MetaData,
    String,
    Table,
    bindparam,
    false,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError

from orderflow.platform.db import Database, UnitOfWork, create_database, transact
from orderflow.platform.inline_sql import InlineResult

metadata = MetaData()
things = Table(
    "things",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("flag", Boolean, nullable=False, server_default=false()),
    Column("parts", JSON, nullable=False),
    Column("note", String(50), nullable=True),
)

_BY_ID = select(things).where(things.c.id == bindparam("_id"))
_GROW = (
    update(things)
    .where(things.c.id == bindparam("_id"), things.c.size >= bindparam("_n"))
    .values(size=things.c.size + bindparam("_n"), flag=True)
    .returning(things.c.size, things.c.flag, things.c.parts)
)
ROWS = [
    {"id": "a", "size": 1, "parts": [{"sku": "X", "n": 1}], "note": None},
    {"id": "b", "size": 2, "parts": [], "note": "two"},
    {"id": "c", "size": 3, "parts": {"k": [1, 2]}, "note": "three"},
]


@pytest.fixture
async def database(sqlite_url: Callable[[str], str]) -> AsyncIterator[Database]:
    database = create_database(sqlite_url("inline"))
    async with database.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield database
    await database.dispose()


async def run(database: Database, statement: Any, parameters: Any = None) -> Any:
    async def work(uow: UnitOfWork) -> Any:
        return await uow.connection.execute(statement, parameters)

    return await transact(lambda: UnitOfWork(database), work)


async def both(database: Database, statement: Any, parameters: Any = None) -> tuple[Any, Any]:
    """(rows, rowcount) through the plan, and through SQLAlchemy, in two transactions
    rolled back so that each sees the same data."""

    async def planned(uow: UnitOfWork) -> tuple[Any, Any]:
        result = await uow.connection.execute(statement, parameters)
        assert isinstance(result, InlineResult)  # it did take the plan
        return _seen(result)

    mine = await UnitOfWork(database).__aenter__()
    try:
        got = await planned(mine)
    finally:
        await mine.__aexit__(None, None, None)
    async with database.engine.connect() as conn:
        theirs = _seen(await conn.execute(statement, parameters))
        await conn.rollback()
    return got, theirs


def _seen(result: Any) -> tuple[Any, Any]:
    rows = [dict(row._mapping) for row in result] if result.returns_rows else None
    return rows, result.rowcount


async def test_rows_read_and_changed_are_what_sqlalchemy_gives(database: Database) -> None:
    result = await run(database, insert(things), ROWS)  # executemany
    assert isinstance(result, InlineResult) and result.rowcount == 3
    assert await both(database, insert(things), {**ROWS[0], "id": "d"}) == ((None, 1), (None, 1))
    bumped = update(things).where(things.c.size < bindparam("_max")).values(note="small")
    assert await both(database, bumped, {"_max": 3}) == ((None, 2), (None, 2))
    mine, theirs = await both(database, _BY_ID, {"_id": "a"})
    assert mine == theirs
    assert mine[0] == [{**ROWS[0], "flag": False}]  # JSON back as JSON, Boolean as bool
    # UPDATE ... RETURNING, with a literal of its own (flag=True) and a bound expression.
    mine, theirs = await both(database, _GROW, {"_id": "b", "_n": 2})
    assert mine == theirs == ([{"size": 4, "flag": True, "parts": []}], 1)
    assert await both(database, _GROW, {"_id": "b", "_n": 5}) == (([], 0), ([], 0))


async def test_statements_built_per_call_bind_their_own_literals(database: Database) -> None:
    """Two statements of one shape share a plan, each with its own values."""
    await run(database, insert(things), ROWS)
    for wanted in ("a", "c"):
        query = select(things.c.note, things.c.size).where(things.c.id == wanted)
        mine, theirs = await both(database, query)
        assert mine == theirs
        assert [row["size"] for row in mine[0]] == [1 if wanted == "a" else 3]
    first = await run(database, update(things).where(things.c.id == "a").values(note="x"))
    second = await run(database, update(things).where(things.c.id == "zz").values(note="y"))
    assert (first.rowcount, second.rowcount) == (1, 0)
    assert isinstance(first, InlineResult) and isinstance(second, InlineResult)
    notes = await run(database, select(things.c.id, things.c.note).order_by(things.c.id))
    assert [tuple(row) for row in notes] == [("a", "x"), ("b", "two"), ("c", "three")]


async def test_plain_sql_text_runs_as_sqlalchemy_runs_it(database: Database) -> None:
    await run(database, insert(things), ROWS)
    query = text("SELECT id, size FROM things WHERE size >= :least ORDER BY id")
    mine, theirs = await both(database, query, {"least": 2})
    assert mine == theirs == ([{"id": "b", "size": 2}, {"id": "c", "size": 3}], -1)
    change = text("UPDATE things SET note = :note WHERE id = :id")
    assert await both(database, change, {"note": "n", "id": "c"}) == ((None, 1), (None, 1))


async def test_results_offer_what_repositories_use(database: Database) -> None:
    await run(database, insert(things), ROWS)
    query = select(things.c.id).order_by(things.c.id)
    assert (await run(database, query)).scalars().all() == ["a", "b", "c"]
    assert (await run(database, select(func.count()).select_from(things))).scalar() == 3
    row = (await run(database, _BY_ID, {"_id": "c"})).first()
    assert (row.size, row.parts, row._mapping["note"]) == (3, {"k": [1, 2]}, "three")
    assert (await run(database, _BY_ID, {"_id": "none"})).first() is None
    grown = (await run(database, _GROW, {"_id": "a", "_n": 1})).first()
    assert grown is not None and grown.size == 2
    # An IN list is expanded per call: SQLAlchemy runs it, with the same result.
    found = await run(database, select(things.c.id).where(things.c.id.in_(["a", "c", "q"])))
    assert sorted(found.scalars()) == ["a", "c"]


async def test_a_driver_error_is_sqlalchemys_and_rolls_back(database: Database) -> None:
    await run(database, insert(things), ROWS[:1])
    async with UnitOfWork(database) as uow:
        await uow.connection.execute(insert(things), ROWS[1])
        with pytest.raises(IntegrityError):  # what retries and callers recognise
            await uow.connection.execute(insert(things), ROWS[0])  # the key is taken
    ids = await run(database, select(things.c.id))
    assert ids.scalars().all() == ["a"]
