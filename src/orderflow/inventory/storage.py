"""Inventory tables, their repositories and the unit of work that exposes them (SQLAlchemy Core).

Stock counters change only through conditional UPDATEs (`... WHERE available >= :n`),
so concurrent reservations can never drive a counter negative on either database, and
several server processes may share one database. A reservation row is locked
(SELECT ... FOR UPDATE on PostgreSQL; the write lock on SQLite) before its state moves.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    MetaData,
    String,
    Table,
    bindparam,
    false,
    func,
    select,
    true,
    update,
)
from sqlalchemy.engine import Row

from orderflow.events.outbox import OutboxUnitOfWork
from orderflow.events.tables import event_tables
from orderflow.inventory.domain import (
    Item,
    ItemChange,
    NewItem,
    Reservation,
    ReservationState,
    ReservedLine,
)
from orderflow.platform.db import SqlRepository
from orderflow.platform.idempotency_store import SqlIdempotencyRecords, idempotency_table

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
    # At or below the low-stock threshold since item.low_stock was last emitted: the
    # event fires once per crossing, and again only after available went back above.
    Column("low_stock", Boolean, nullable=False, server_default=false()),
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
    # [{"sku", "quantity", "unit_price"}, ...] in sku order; empty for a tombstone.
    Column("lines", JSON, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
)

# outbox, relay lease, inbox and parked events (orderflow.events), in the same database.
outbox_tables = event_tables(metadata)

# Idempotency keys of the admin use cases and their results (ADR 0023).
idempotency_keys = idempotency_table(metadata)

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


# Hot-path statements are built once: building a statement costs more than running it.
_TAKE_STOCK = (
    update(items)
    .where(items.c.sku == bindparam("_sku"), items.c.available >= bindparam("_n"))
    .values(
        available=items.c.available - bindparam("_n"),
        reserved=items.c.reserved + bindparam("_n"),
        updated_us=bindparam("_now"),
    )
    .returning(items.c.price, items.c.available)
)
_MARK_LOW = (
    update(items)
    .where(
        items.c.sku == bindparam("_sku"),
        items.c.low_stock.is_(False),
        items.c.available <= bindparam("_threshold"),
    )
    .values(low_stock=true())
    .returning(items.c.available)
)
_REARM_LOW = (
    update(items)
    .where(
        items.c.sku == bindparam("_sku"),
        items.c.low_stock.is_(True),
        items.c.available > bindparam("_threshold"),
    )
    .values(low_stock=false())
)
_MOVES = {
    (source, target): update(items)
    .where(items.c.sku == bindparam("_sku"), items.c[source] >= bindparam("_n"))
    .values(
        {
            source: items.c[source] - bindparam("_n"),
            target: items.c[target] + bindparam("_n"),
            "updated_us": bindparam("_now"),
        }
    )
    for source, target in (("reserved", "available"), ("reserved", "sold"), ("sold", "available"))
}
_GET_ITEM = select(*_ITEM_COLUMNS).where(items.c.sku == bindparam("_sku"))
_GET_RESERVATION = select(
    reservations.c.state, reservations.c.currency, reservations.c.lines
).where(reservations.c.order_id == bindparam("_order_id"))
_LOCK_RESERVATION = _GET_RESERVATION.with_for_update()
# The fast path of every transition (platform/transitions.py): source -> target only if the
# reservation is still in source. It restates the domain's rule `outcome(fast_from) is MOVE`
# (inventory/domain.py); tests/integration/test_inventory.py checks the two agree.
_MOVE_RESERVATION = (
    update(reservations)
    .where(
        reservations.c.order_id == bindparam("_order_id"),
        reservations.c.state == bindparam("_from"),
    )
    .values(state=bindparam("_to"), updated_us=bindparam("_now"))
    .returning(reservations.c.currency, reservations.c.lines)
)


def _lines(raw: list[dict[str, Any]]) -> tuple[ReservedLine, ...]:
    return tuple(ReservedLine(**x) for x in raw)


class SqlItemRepository(SqlRepository):
    """Items and their stock counters."""

    __slots__ = ()

    async def get(self, sku: str) -> Item | None:
        row = (await self.connection.execute(_GET_ITEM, {"_sku": sku})).first()
        return None if row is None else _item(row)

    async def add(self, new: NewItem, currency: str, now: int) -> None:
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
                low_stock=False,
            )
        )

    async def page(self, after: str, limit: int) -> list[Item]:
        """Items in sku order, strictly after `after`."""
        query = select(*_ITEM_COLUMNS).order_by(items.c.sku).limit(limit)
        if after:
            query = query.where(items.c.sku > after)
        return [_item(row) for row in await self.connection.execute(query)]

    async def low_on_stock(self, threshold: int, limit: int) -> list[Item]:
        """Items with available <= threshold, fewest available first, then by sku."""
        query = (
            select(*_ITEM_COLUMNS)
            .where(items.c.available <= threshold)
            .order_by(items.c.available, items.c.sku)
            .limit(limit)
        )
        return [_item(row) for row in await self.connection.execute(query)]

    async def change(self, change: ItemChange, now: int) -> bool:
        """Apply change; False if there is no such item."""
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

    async def take_stock(self, sku: str, quantity: int, now: int) -> tuple[int, int] | None:
        """Move quantity from available to reserved if there is enough: (unit price, units
        available after), or None."""
        row = (
            await self.connection.execute(_TAKE_STOCK, {"_sku": sku, "_n": quantity, "_now": now})
        ).first()
        return None if row is None else (int(row.price), int(row.available))

    async def mark_low(self, sku: str, threshold: int) -> int | None:
        """Mark the item low if available <= threshold and it is not yet: its available
        units, or None (nothing marked)."""
        row = (
            await self.connection.execute(_MARK_LOW, {"_sku": sku, "_threshold": threshold})
        ).first()
        return None if row is None else int(row.available)

    async def rearm_low(self, skus: Iterable[str], threshold: int) -> None:
        """Unmark the items whose available went back above threshold."""
        for sku in sorted(set(skus)):
            await self.connection.execute(_REARM_LOW, {"_sku": sku, "_threshold": threshold})

    async def move_stock(
        self, lines: Sequence[ReservedLine], source: str, target: str, now: int
    ) -> None:
        """Move each line's quantity between two counters (reserved/sold -> available/sold)."""
        statement = _MOVES[(source, target)]
        for line in sorted(lines, key=lambda x: x.sku):
            result = await self.connection.execute(
                statement, {"_sku": line.sku, "_n": line.quantity, "_now": now}
            )
            if result.rowcount != 1:
                raise RuntimeError(
                    f"stock of {line.sku} does not hold the {line.quantity} {source} units "
                    "of a reservation: the counters were changed outside orderflow"
                )

    async def count_low(self, threshold: int) -> int:
        """How many items have available <= threshold (every item, not a page)."""
        query = select(func.count()).select_from(items).where(items.c.available <= threshold)
        return int((await self.connection.execute(query)).scalar_one())


class SqlReservationRepository(SqlRepository):
    """Reservations: one per order, moved between states by conditional UPDATEs."""

    __slots__ = ()

    async def get(self, order_id: str, *, lock: bool = False) -> Reservation | None:
        query = _LOCK_RESERVATION if lock else _GET_RESERVATION
        row = (await self.connection.execute(query, {"_order_id": order_id})).first()
        if row is None:
            return None
        return Reservation(order_id, ReservationState(row.state), _lines(row.lines), row.currency)

    async def add_if_absent(self, reservation: Reservation, now: int) -> bool:
        """Insert the reservation; False (nothing inserted) if the order already has one."""
        statement = self.database.insert_ignore(reservations, ["order_id"])
        result = await self.connection.execute(statement, _reservation_row(reservation, now))
        return result.rowcount == 1

    async def add(self, reservation: Reservation, now: int) -> None:
        """Insert the reservation; if the order has one already, IntegrityError, so the
        transaction is retried and sees it."""
        await self.connection.execute(reservations.insert(), _reservation_row(reservation, now))

    async def move(
        self, order_id: str, source: ReservationState, target: ReservationState, now: int
    ) -> Reservation | None:
        """source -> target in one statement; the reservation in target, or None if it was
        not in source (then nothing changed)."""
        row = (
            await self.connection.execute(
                _MOVE_RESERVATION,
                {"_order_id": order_id, "_from": source.value, "_to": target.value, "_now": now},
            )
        ).first()
        return (
            None if row is None else Reservation(order_id, target, _lines(row.lines), row.currency)
        )


def _reservation_row(reservation: Reservation, now: int) -> dict[str, Any]:
    return {
        "order_id": reservation.order_id,
        "state": reservation.state.value,
        "currency": reservation.currency,
        "lines": [
            {"sku": x.sku, "quantity": x.quantity, "unit_price": x.unit_price}
            for x in reservation.lines
        ],
        "created_us": now,
        "updated_us": now,
    }


class SqlInventoryUnitOfWork(OutboxUnitOfWork):
    """A transaction on the inventory database with its repositories and its outbox."""

    event_tables = outbox_tables
    items: SqlItemRepository
    reservations: SqlReservationRepository
    idempotency: SqlIdempotencyRecords

    def _attach(self) -> None:
        super()._attach()
        self.items = SqlItemRepository(self.connection, self.database)
        self.reservations = SqlReservationRepository(self.connection, self.database)
        self.idempotency = SqlIdempotencyRecords(self.connection, self.database, idempotency_keys)
