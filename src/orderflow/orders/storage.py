"""Orders tables and the unit of work that reads and changes them (SQLAlchemy Core).

An order is written back as a compare-and-set on the version it was read at, after a
SELECT ... FOR UPDATE on PostgreSQL (the write lock serialises writers on SQLite), so a
status never moves from a state its writer did not see. Claiming stale orders uses
FOR UPDATE SKIP LOCKED, so several gateways' recovery workers never claim the same one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    and_,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Row

from orderflow.errors import ConflictError
from orderflow.orders.domain import Failure, Order, OrderLine, OrderStatus
from orderflow.platform.db import UnitOfWork

metadata = MetaData()

orders = Table(
    "orders",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("customer_id", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("subtotal", BigInteger, nullable=False),
    Column("discount", BigInteger, nullable=False),
    Column("redeem_points", BigInteger, nullable=False),
    Column("points_redeemed", BigInteger, nullable=False),
    Column("total", BigInteger, nullable=False),
    Column("points_earned", BigInteger, nullable=False),
    Column("failure_code", String(64), nullable=True),
    Column("failure_message", String(500), nullable=True),
    Column("idempotency_key", String(255), nullable=True),
    Column("request_fingerprint", String(128), nullable=False),
    Column("settled", Boolean, nullable=False),
    Column("cancel_requested", Boolean, nullable=False),
    Column("lease_owner", String(128), nullable=False),
    Column("lease_expires_us", BigInteger, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Column("version", Integer, nullable=False),
    UniqueConstraint("customer_id", "idempotency_key", name="uq_orders_customer_key"),
    CheckConstraint("total >= 0", name="ck_orders_total"),
    Index("ix_orders_created", "created_us", "id"),
    Index("ix_orders_customer_created", "customer_id", "created_us", "id"),
    Index("ix_orders_unsettled", "settled", "lease_expires_us"),
)

order_lines = Table(
    "order_lines",
    metadata,
    Column("order_id", String(64), ForeignKey("orders.id", ondelete="CASCADE"), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("sku", String(64), nullable=False),
    Column("quantity", BigInteger, nullable=False),
    Column("unit_price", BigInteger, nullable=False),
    CheckConstraint("quantity > 0", name="ck_order_lines_quantity"),
)

_FIELDS = [c.name for c in orders.c if c.name not in ("failure_code", "failure_message")]


def _row_values(order: Order) -> dict[str, Any]:
    values = {name: getattr(order, name) for name in _FIELDS}
    values["status"] = order.status.value
    values["idempotency_key"] = order.idempotency_key or None
    values["failure_code"] = order.failure.code if order.failure else None
    values["failure_message"] = order.failure.message if order.failure else None
    return values


def _order(row: Row[*tuple[Any, ...]], lines: Sequence[OrderLine]) -> Order:
    values = dict(row._mapping)
    code, message = values.pop("failure_code"), values.pop("failure_message")
    values["failure"] = Failure(code, message or "") if code else None
    values["status"] = OrderStatus(values["status"])
    values["idempotency_key"] = values["idempotency_key"] or ""
    return Order(lines=tuple(lines), **values)


class OrdersUnitOfWork(UnitOfWork):
    async def _with_lines(self, rows: Sequence[Row[*tuple[Any, ...]]]) -> list[Order]:
        """Orders for rows, with their lines read in one query for all of them."""
        if not rows:
            return []
        ids = [row.id for row in rows]
        lines: dict[str, list[OrderLine]] = {i: [] for i in ids}
        found = await self.connection.execute(
            select(order_lines)
            .where(order_lines.c.order_id.in_(ids))
            .order_by(order_lines.c.order_id, order_lines.c.position)
        )
        for line in found:
            lines[line.order_id].append(OrderLine(line.sku, line.quantity, line.unit_price))
        return [_order(row, lines[row.id]) for row in rows]

    async def get(self, order_id: str, *, lock: bool = False) -> Order | None:
        query = select(orders).where(orders.c.id == order_id)
        if lock:
            query = query.with_for_update()
        row = (await self.connection.execute(query)).first()
        return None if row is None else (await self._with_lines([row]))[0]

    async def find_by_key(self, customer_id: str, idempotency_key: str) -> Order | None:
        row = (
            await self.connection.execute(
                select(orders).where(
                    orders.c.customer_id == customer_id,
                    orders.c.idempotency_key == idempotency_key,
                )
            )
        ).first()
        return None if row is None else (await self._with_lines([row]))[0]

    async def add(self, order: Order) -> None:
        await self.connection.execute(orders.insert().values(_row_values(order)))
        await self.connection.execute(
            order_lines.insert(),
            [
                {
                    "order_id": order.id,
                    "position": n,
                    "sku": x.sku,
                    "quantity": x.quantity,
                    "unit_price": x.unit_price,
                }
                for n, x in enumerate(order.lines)
            ],
        )

    async def save(self, order: Order, read: Order) -> None:
        """Write order over read, the version it was computed from (compare-and-set)."""
        result = await self.connection.execute(
            update(orders)
            .where(orders.c.id == order.id, orders.c.version == read.version)
            .values(_row_values(order))
        )
        if result.rowcount != 1:
            raise ConflictError(f"order {order.id} changed meanwhile", order_id=order.id)
        if order.lines != read.lines:
            for n, x in enumerate(order.lines):
                await self.connection.execute(
                    update(order_lines)
                    .where(order_lines.c.order_id == order.id, order_lines.c.position == n)
                    .values(sku=x.sku, quantity=x.quantity, unit_price=x.unit_price)
                )

    async def page(
        self, customer_id: str, status: str, before: tuple[int, str] | None, limit: int
    ) -> list[Order]:
        """Newest first, strictly older than `before` = (created_us, id)."""
        query = select(orders).order_by(orders.c.created_us.desc(), orders.c.id.desc())
        if customer_id:
            query = query.where(orders.c.customer_id == customer_id)
        if status:
            query = query.where(orders.c.status == status)
        if before is not None:
            created, order_id = before
            query = query.where(
                or_(
                    orders.c.created_us < created,
                    and_(orders.c.created_us == created, orders.c.id < order_id),
                )
            )
        rows = (await self.connection.execute(query.limit(limit))).all()
        return await self._with_lines(rows)

    async def stale(self, now: int, limit: int) -> list[Order]:
        """Unsettled orders with no live lease, oldest first, locked (skipping locked ones)."""
        query = (
            select(orders)
            .where(orders.c.settled.is_(False), orders.c.lease_expires_us <= now)
            .order_by(orders.c.updated_us)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        rows = (await self.connection.execute(query)).all()
        return await self._with_lines(rows)
