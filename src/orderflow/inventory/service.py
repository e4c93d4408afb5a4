"""Inventory use cases: each one checks its input, then runs as one retried transaction.

The service knows its storage only as the repositories described here (Protocols); the
bootstrap hands it a factory of SQL units of work, unit tests one of fakes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol, TypeVar

import structlog

from orderflow.errors import (
    AlreadyExistsError,
    CompensatedError,
    NotFoundError,
    OutOfStockError,
    UnknownSkuError,
)
from orderflow.events.outbox import EventSink
from orderflow.inventory import domain
from orderflow.inventory import events as inventory_events
from orderflow.inventory.domain import Item, Reservation, ReservationState, ReservedLine, StockMove
from orderflow.platform.db import Rollback, Transactional, UnitOfWorkFactory, now_us, transact
from orderflow.platform.idempotency import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_RETENTION_SECONDS,
    IdempotencyRecords,
    IdempotentRunner,
    keyed,
)
from orderflow.platform.transitions import StateRecords, Transition, TransitionRunner
from orderflow.validation import check_id, check_limit, check_sku, decode_cursor, encode_cursor

DEFAULT_PAGE = 50
DEFAULT_LOW_STOCK_THRESHOLD = 5

T = TypeVar("T")

log = structlog.get_logger("orderflow.inventory")


class ItemRepository(Protocol):
    async def get(self, sku: str) -> Item | None: ...

    async def add(self, new: domain.NewItem, currency: str, now: int) -> None: ...

    async def page(self, after: str, limit: int) -> list[Item]:
        """Up to limit items in sku order, strictly after `after`."""
        ...

    async def low_on_stock(self, threshold: int, limit: int) -> list[Item]:
        """Up to limit items with available <= threshold, fewest available first."""
        ...

    async def change(self, change: domain.ItemChange, now: int) -> bool:
        """Apply change; False if there is no such item."""
        ...

    async def known_skus(self, skus: Iterable[str]) -> set[str]: ...

    async def take_stock(self, sku: str, quantity: int, now: int) -> tuple[int, int] | None:
        """Move quantity from available to reserved if there is enough: (unit price, units
        available after), or None."""
        ...

    async def mark_low(self, sku: str, threshold: int) -> int | None:
        """Mark the item low on stock if available <= threshold and it is not marked yet:
        its available units, or None (nothing marked)."""
        ...

    async def rearm_low(self, skus: Iterable[str], threshold: int) -> None:
        """Unmark the items whose available went back above threshold (the next fall to
        it is a new crossing)."""
        ...

    async def move_stock(
        self, lines: Sequence[ReservedLine], source: str, target: str, now: int
    ) -> None:
        """Move each line's quantity from counter source to counter target."""
        ...


# Reservations: one per order, moved between states by conditional statements.
ReservationRepository = StateRecords[ReservationState, Reservation]


class InventoryUnitOfWork(Transactional, Protocol):
    @property
    def items(self) -> ItemRepository: ...

    @property
    def reservations(self) -> ReservationRepository: ...

    @property
    def events(self) -> EventSink: ...

    @property
    def idempotency(self) -> IdempotencyRecords: ...


def _item_json(item: Item) -> dict[str, object]:
    return dataclasses.asdict(item)


def _item_of(values: dict[str, object]) -> Item:
    return Item(**values)  # type: ignore[arg-type]


class InventoryService:
    def __init__(
        self,
        uow: UnitOfWorkFactory[InventoryUnitOfWork],
        *,
        currency: str,
        clock: Callable[[], int] = now_us,
        low_stock_threshold: int = DEFAULT_LOW_STOCK_THRESHOLD,
        idempotency_lease_seconds: float = DEFAULT_LEASE_SECONDS,
        idempotency_retention_seconds: float = DEFAULT_RETENTION_SECONDS,
    ) -> None:
        self.uow = uow
        self._reader = functools.partial(uow, readonly=True)
        self.currency = currency
        self.now = clock
        self.low_stock_threshold = low_stock_threshold
        self._reservations = TransitionRunner[
            InventoryUnitOfWork, ReservationState, StockMove, Reservation
        ](
            transact=self._transact,
            records=lambda uow: uow.reservations,
            effect=self._move_stock,
            tombstone=lambda order_id, state: domain.tombstone(order_id, state, currency),
            clock=clock,
            noun="reservation",
        )
        self._idempotent = IdempotentRunner[InventoryUnitOfWork](
            self._transact,
            clock,
            lease_seconds=idempotency_lease_seconds,
            retention_seconds=idempotency_retention_seconds,
        )

    def _transact(self, work: Callable[[InventoryUnitOfWork], Awaitable[T]]) -> Awaitable[T]:
        return transact(self.uow, work)

    # -- catalog -----------------------------------------------------------------------

    async def create_item(
        self,
        sku: str,
        name: str,
        price: int,
        stock: int,
        *,
        idempotency_key: str = "",
        caller: str = "",
        owner: str = "",
    ) -> Item:
        """Create an item; with an idempotency key, a repeat gets the first result (ADR 0023)."""
        new = domain.new_item(sku, name, price, stock)
        request = keyed(
            idempotency_key,
            caller,
            owner,
            "CreateItem",
            new.sku,
            name=new.name,
            price=new.price,
            stock=new.stock,
        )

        async def work(uow: InventoryUnitOfWork) -> Item:
            if await uow.items.get(new.sku) is not None:
                raise AlreadyExistsError(f"item {new.sku} already exists", sku=new.sku)
            await uow.items.add(new, self.currency, self.now())
            # Created at or below the threshold: marked, so that no crossing is reported
            # until it has been above it (a new item did not fall there).
            await uow.items.mark_low(new.sku, self.low_stock_threshold)
            item = await self._item(uow, new.sku)
            await uow.events.add(inventory_events.item_changed(item, created=True))
            return item

        return await self._idempotent.run(request, work, _item_json, _item_of)

    async def get_item(self, sku: str) -> Item:
        sku = check_sku(sku)
        return await transact(self._reader, lambda uow: self._item(uow, sku))

    async def list_items(self, limit: int, cursor: str) -> tuple[list[Item], str]:
        limit = check_limit(limit, default=DEFAULT_PAGE)
        after = decode_cursor(cursor) if cursor else ""

        async def work(uow: InventoryUnitOfWork) -> tuple[list[Item], str]:
            found = await uow.items.page(after, limit + 1)
            more = len(found) > limit
            page = found[:limit]
            return page, encode_cursor(page[-1].sku) if more else ""

        return await transact(self._reader, work)

    async def list_low_stock(self, limit: int) -> tuple[list[Item], bool]:
        """Items at or below the low-stock threshold, fewest available first; and whether
        there are more than limit."""
        limit = check_limit(limit, default=DEFAULT_PAGE)

        async def work(uow: InventoryUnitOfWork) -> tuple[list[Item], bool]:
            found = await uow.items.low_on_stock(self.low_stock_threshold, limit + 1)
            return found[:limit], len(found) > limit

        return await transact(self._reader, work)

    async def update_item(
        self,
        sku: str,
        name: str | None,
        price: int | None,
        restock: int | None,
        *,
        idempotency_key: str = "",
        caller: str = "",
        owner: str = "",
    ) -> Item:
        """Rename, reprice or restock; with an idempotency key, a repeat gets the first
        result and restocks nothing more (ADR 0023)."""
        change = domain.item_change(sku, name, price, restock)
        request = keyed(
            idempotency_key,
            caller,
            owner,
            "UpdateItem",
            change.sku,
            name=change.name,
            price=change.price,
            restock=change.restock,
        )

        async def work(uow: InventoryUnitOfWork) -> Item:
            if not await uow.items.change(change, self.now()):
                raise NotFoundError(f"no item with sku {change.sku}", sku=change.sku)
            if change.restock is not None:
                await uow.items.rearm_low([change.sku], self.low_stock_threshold)
            item = await self._item(uow, change.sku)
            await uow.events.add(inventory_events.item_changed(item, created=False))
            return item

        return await self._idempotent.run(request, work, _item_json, _item_of)

    async def purge_idempotency_keys(self) -> int:
        """Forget idempotency keys older than their retention."""
        return await self._idempotent.purge()

    @staticmethod
    async def _item(uow: InventoryUnitOfWork, sku: str) -> Item:
        item = await uow.items.get(sku)
        if item is None:
            raise NotFoundError(f"no item with sku {sku}", sku=sku)
        return item

    # -- reservations ------------------------------------------------------------------

    async def reserve(self, order_id: str, lines: list[tuple[str, int]]) -> Reservation:
        """Reserve every line of the order or none; repeating it returns the first result."""
        order_id, wanted = domain.order_lines(order_id, lines)

        async def work(uow: InventoryUnitOfWork) -> Reservation:
            now = self.now()
            reserved: list[ReservedLine] = []
            low: list[tuple[str, int]] = []
            for sku, quantity in wanted:  # sorted by sku: rows are locked in one order
                taken = await uow.items.take_stock(sku, quantity, now)
                if taken is None:
                    if await uow.reservations.get(order_id) is not None:
                        raise Rollback  # the order has one already: roll back, read it below
                    # Refused, and rolled back: say why, naming every unknown sku first.
                    skus = [s for s, _ in wanted]
                    unknown = sorted(set(skus) - await uow.items.known_skus(skus))
                    if unknown:
                        raise UnknownSkuError(f"unknown sku: {', '.join(unknown)}", skus=unknown)
                    item = await uow.items.get(sku)
                    available = item.available if item else 0
                    raise OutOfStockError(
                        f"{sku}: {quantity} requested, {available} available",
                        sku=sku,
                        requested=quantity,
                        available=available,
                    )
                price, available = taken
                reserved.append(ReservedLine(sku, quantity, price))
                if available <= self.low_stock_threshold:
                    low.append((sku, available))
            reservation = Reservation(
                order_id, ReservationState.RESERVED, tuple(reserved), self.currency
            )
            if not await uow.reservations.add_if_absent(reservation, now):
                raise Rollback  # a repeat: give the stock back, return the first reservation
            for sku, available in low:
                if await uow.items.mark_low(sku, self.low_stock_threshold) is not None:
                    await uow.events.add(
                        inventory_events.low_stock(sku, available, self.low_stock_threshold)
                    )
            return reservation

        try:
            return await transact(self.uow, work)
        except Rollback:
            pass

        async def existing(uow: InventoryUnitOfWork) -> Reservation:
            found = await uow.reservations.get(order_id)
            if found is None:  # pragma: no cover - reservations are never deleted
                raise RuntimeError(f"reservation of {order_id} vanished")
            if found.state.compensated:
                raise CompensatedError(
                    f"the reservation of order {order_id} was already "
                    f"{found.state.value.lower()}; it cannot be made again",
                    order_id=order_id,
                    state=found.state.value,
                )
            return found

        return await transact(self._reader, existing)

    async def release(self, order_id: str) -> ReservationState:
        """Give reserved stock back; with no reservation yet, leave a RELEASED tombstone."""
        return await self._move(domain.RELEASE, order_id)

    async def commit_stock(self, order_id: str) -> ReservationState:
        """Turn reserved stock into sold stock."""
        return await self._move(domain.COMMIT_STOCK, order_id)

    async def return_stock(self, order_id: str) -> ReservationState:
        """Give a cancelled order's stock (sold or still reserved) back to available."""
        return await self._move(domain.RETURN_STOCK, order_id)

    async def _move(
        self, transition: Transition[ReservationState, StockMove], order_id: str
    ) -> ReservationState:
        order_id = check_id("order_id", order_id)
        return (await self._reservations.apply(transition, order_id)).state

    async def commit_stock_for(self, uow: InventoryUnitOfWork, order_id: str) -> None:
        """In the unit of work of the consumer of order.confirmed: commit_stock. A
        reservation already given back (the order was cancelled before its event came) is
        left as it is: the event is late, not wrong."""
        found = await uow.reservations.get(order_id, lock=True)
        if found is not None and found.state.compensated:
            log.info("commit_stock_skipped", order_id=order_id, state=found.state.value)
            return
        runner = dataclasses.replace(self._reservations, transact=lambda work: work(uow))
        await runner.apply(domain.COMMIT_STOCK, order_id)

    async def _move_stock(
        self, uow: InventoryUnitOfWork, reservation: Reservation, move: StockMove, now: int
    ) -> None:
        source, target = move
        await uow.items.move_stock(reservation.lines, source, target, now)
        if target == "available":
            await uow.items.rearm_low([x.sku for x in reservation.lines], self.low_stock_threshold)
        event = inventory_events.stock_moved(reservation)
        if event is not None:
            await uow.events.add(event)
