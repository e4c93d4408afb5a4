"""Inventory tables and the unit of work that reads and changes them (SQLAlchemy Core).

Stock counters change only through conditional UPDATEs (`... WHERE available >= :n`),
so concurrent reservations can never drive a counter negative on either database, and
several server processes may share one database. A reservation row is locked
(SELECT ... FOR UPDATE on PostgreSQL; the write lock on SQLite) before its state moves.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    MetaData,
    String,
    Table,
    select,
    update,
)
from sqlalchemy.engine import Row

from orderflow.inventory.domain import (
    Item,
    ItemChange,
    NewItem,
    Reservation,
    ReservationState,
    ReservedLine,
)
from orderflow.platform.db import UnitOfWork

metadata = MetaData()

items = Table(
    "items",
    metadata,
    Column("sku", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("price", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("available", BigInteger, nullable=False),
    Column("reserved", BigInteger, nullable=False),
    Column("sold", BigInteger, nullable=False),
    Column("received", BigInteger, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    CheckConstraint("price >= 0", name="ck_items_price"),
    CheckConstraint("available >= 0", name="ck_items_available"),
    CheckConstraint("reserved >= 0", name="ck_items_reserved"),
    CheckConstraint("sold >= 0", name="ck_items_sold"),
    CheckConstraint("available + reserved + sold = received", name="ck_items_conserved"),
)

reservations = Table(
    "reservations",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
)

reservation_lines = Table(
    "reservation_lines",
    metadata,
    Column(
        "order_id",
        String(64),
        ForeignKey("reservations.order_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("sku", String(64), primary_key=True),
    Column("quantity", BigInteger, nullable=False),
    Column("unit_price", BigInteger, nullable=False),
    CheckConstraint("quantity > 0", name="ck_reservation_lines_quantity"),
)

_ITEM_COLUMNS = (
    items.c.sku,
    items.c.name,
    items.c.price,
    items.c.currency,
    items.c.available,
    items.c.reserved,
    items.c.sold,
    items.c.received,
)


def _item(row: Row[*tuple[Any, ...]]) -> Item:
    return Item(**row._mapping)


class InventoryUnitOfWork(UnitOfWork):
    # -- items -------------------------------------------------------------------------

    async def get_item(self, sku: str) -> Item | None:
        row = (
            await self.connection.execute(select(*_ITEM_COLUMNS).where(items.c.sku == sku))
        ).first()
        return None if row is None else _item(row)

    async def add_item(self, new: NewItem, currency: str, now: int) -> None:
        await self.connection.execute(
            items.insert().values(
                sku=new.sku,
                name=new.name,
                price=new.price,
                currency=currency,
                available=new.stock,
                reserved=0,
                sold=0,
                received=new.stock,
                created_us=now,
                updated_us=now,
            )
        )

    async def list_items(self, after: str, limit: int) -> list[Item]:
        query = select(*_ITEM_COLUMNS).order_by(items.c.sku).limit(limit)
        if after:
            query = query.where(items.c.sku > after)
        return [_item(row) for row in await self.connection.execute(query)]

    async def change_item(self, change: ItemChange, now: int) -> bool:
        values: dict[str, object] = {"updated_us": now}
        if change.name is not None:
            values["name"] = change.name
        if change.price is not None:
            values["price"] = change.price
        if change.restock is not None:
            values["available"] = items.c.available + change.restock
            values["received"] = items.c.received + change.restock
        result = await self.connection.execute(
            update(items).where(items.c.sku == change.sku).values(values)
        )
        return result.rowcount == 1

    async def known_skus(self, skus: Iterable[str]) -> set[str]:
        query = select(items.c.sku).where(items.c.sku.in_(list(skus)))
        return set((await self.connection.execute(query)).scalars())

    async def take_stock(self, sku: str, quantity: int, now: int) -> int | None:
        """Move quantity from available to reserved if there is enough; the unit price or None."""
        result = await self.connection.execute(
            update(items)
            .where(items.c.sku == sku, items.c.available >= quantity)
            .values(
                available=items.c.available - quantity,
                reserved=items.c.reserved + quantity,
                updated_us=now,
            )
            .returning(items.c.price)
        )
        price = result.scalar_one_or_none()
        return None if price is None else int(price)

    async def move_stock(
        self, lines: Sequence[ReservedLine], source: str, target: str, now: int
    ) -> None:
        """Move each line's quantity between two counters (reserved/sold -> available/sold)."""
        for line in sorted(lines, key=lambda x: x.sku):
            src, dst = items.c[source], items.c[target]
            result = await self.connection.execute(
                update(items)
                .where(items.c.sku == line.sku, src >= line.quantity)
                .values(
                    {source: src - line.quantity, target: dst + line.quantity, "updated_us": now}
                )
            )
            if result.rowcount != 1:
                raise RuntimeError(
                    f"stock of {line.sku} does not hold the {line.quantity} {source} units "
                    "of a reservation: the counters were changed outside orderflow"
                )

    # -- reservations ------------------------------------------------------------------

    async def get_reservation(self, order_id: str, *, lock: bool = False) -> Reservation | None:
        query = select(reservations.c.state, reservations.c.currency).where(
            reservations.c.order_id == order_id
        )
        if lock:
            query = query.with_for_update()
        head = (await self.connection.execute(query)).first()
        if head is None:
            return None
        rows = await self.connection.execute(
            select(
                reservation_lines.c.sku,
                reservation_lines.c.quantity,
                reservation_lines.c.unit_price,
            )
            .where(reservation_lines.c.order_id == order_id)
            .order_by(reservation_lines.c.sku)
        )
        lines = tuple(ReservedLine(sku, quantity, price) for sku, quantity, price in rows)
        return Reservation(order_id, ReservationState(head.state), lines, head.currency)

    async def add_reservation(self, reservation: Reservation, now: int) -> None:
        await self.connection.execute(
            reservations.insert().values(
                order_id=reservation.order_id,
                state=reservation.state.value,
                currency=reservation.currency,
                created_us=now,
                updated_us=now,
            )
        )
        if reservation.lines:
            await self.connection.execute(
                reservation_lines.insert(),
                [
                    {
                        "order_id": reservation.order_id,
                        "sku": x.sku,
                        "quantity": x.quantity,
                        "unit_price": x.unit_price,
                    }
                    for x in reservation.lines
                ],
            )

    async def set_reservation_state(self, order_id: str, state: ReservationState, now: int) -> None:
        await self.connection.execute(
            update(reservations)
            .where(reservations.c.order_id == order_id)
            .values(state=state.value, updated_us=now)
        )
