"""The idempotency keys table in a service's own database, and its repository (ADR 0023).

`idempotency_table(metadata)` adds the table to a service's MetaData;
`create_idempotency_table(op)` / `drop_idempotency_table(op)` are the same table as Alembic
operations, for the service's migration (built from the same column list).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    bindparam,
    delete,
    select,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.sql.schema import SchemaItem

from orderflow.platform.db import SqlRepository
from orderflow.platform.idempotency import KeyRecord

IDEMPOTENCY = "idempotency_keys"


def _columns() -> list[SchemaItem]:
    return [
        Column("scope", String(255), nullable=False),
        Column("key", String(255), nullable=False),
        Column("fingerprint", String(64), nullable=False),
        Column("owner", String(128), nullable=False),
        Column("token", String(32), nullable=False),
        Column("lease_until_us", BigInteger, nullable=False),
        # NULL while the claim is IN_PROGRESS; the JSON of the result once DONE.
        Column("result", Text, nullable=True),
        Column("created_us", BigInteger, nullable=False),
        PrimaryKeyConstraint("scope", "key", name="pk_idempotency_keys"),
        Index("ix_idempotency_keys_created", "created_us"),
    ]


def idempotency_table(metadata: MetaData) -> Table:
    return Table(IDEMPOTENCY, metadata, *_columns())


def create_idempotency_table(op: Any) -> None:
    items = _columns()
    op.create_table(IDEMPOTENCY, *[i for i in items if not isinstance(i, Index)])
    for index in (i for i in items if isinstance(i, Index)):
        op.create_index(index.name, IDEMPOTENCY, [str(c) for c in index.expressions])


def drop_idempotency_table(op: Any) -> None:
    op.drop_table(IDEMPOTENCY)


def _record(row: Row[Any]) -> KeyRecord:
    return KeyRecord(**dict(row._mapping))


class SqlIdempotencyRecords(SqlRepository):
    """Claims and results of idempotency keys, changed only by conditional statements."""

    __slots__ = ("table",)

    def __init__(self, connection: Any, database: Any, table: Table) -> None:
        super().__init__(connection, database)
        self.table = table

    async def get(self, scope: str, key: str, *, lock: bool = False) -> KeyRecord | None:
        t = self.table
        query = select(t).where(t.c.scope == scope, t.c.key == key)
        if lock:
            query = query.with_for_update()
        row = (await self.connection.execute(query)).first()
        return None if row is None else _record(row)

    async def add_if_absent(self, record: KeyRecord) -> bool:
        result = await self.connection.execute(
            self.database.insert_ignore(self.table, ["scope", "key"]), vars(record)
        )
        return bool(result.rowcount == 1)

    async def take_over(
        self, record: KeyRecord, owner: str, token: str, lease_until_us: int
    ) -> bool:
        t = self.table
        result = await self.connection.execute(
            update(t)
            .where(
                t.c.scope == record.scope,
                t.c.key == record.key,
                t.c.token == record.token,
                t.c.result.is_(None),
            )
            .values(owner=owner, token=token, lease_until_us=lease_until_us)
        )
        return bool(result.rowcount == 1)

    async def complete(self, scope: str, key: str, token: str, result: str) -> bool:
        t = self.table
        done = await self.connection.execute(
            update(t)
            .where(
                t.c.scope == bindparam("_scope"),
                t.c.key == bindparam("_key"),
                t.c.token == bindparam("_token"),
                t.c.result.is_(None),
            )
            .values(result=bindparam("_result")),
            {"_scope": scope, "_key": key, "_token": token, "_result": result},
        )
        return bool(done.rowcount == 1)

    async def purge(self, before_us: int, limit: int) -> int:
        t = self.table
        oldest = (
            select(t.c.scope, t.c.key)
            .where(t.c.created_us < before_us)
            .order_by(t.c.created_us)
            .limit(limit)
        )
        rows = (await self.connection.execute(oldest)).all()
        for row in rows:
            await self.connection.execute(
                delete(t).where(t.c.scope == row.scope, t.c.key == row.key)
            )
        return len(rows)
