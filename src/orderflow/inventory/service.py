"""Inventory use cases: each one checks its input, then runs as one retried transaction."""

from __future__ import annotations

from collections.abc import Callable

from orderflow.errors import (
    AlreadyExistsError,
    CompensatedError,
    ConflictError,
    InvalidStateError,
    NotFoundError,
    OutOfStockError,
    UnknownSkuError,
)
from orderflow.inventory import domain
from orderflow.inventory.domain import Item, Reservation, ReservationState, ReservedLine
from orderflow.inventory.storage import InventoryUnitOfWork
from orderflow.platform.db import Database, Rollback, now_us, transact
from orderflow.validation import check_id, check_limit, check_sku, decode_cursor, encode_cursor

DEFAULT_PAGE = 50


class InventoryService:
    def __init__(
        self, database: Database, *, currency: str, clock: Callable[[], int] = now_us
    ) -> None:
        self.database = database
        self.currency = currency
        self.now = clock

    def _uow(self, readonly: bool = False) -> Callable[[], InventoryUnitOfWork]:
        return lambda: InventoryUnitOfWork(self.database, readonly=readonly)

    # -- catalog -----------------------------------------------------------------------

    async def create_item(self, sku: str, name: str, price: int, stock: int) -> Item:
        new = domain.new_item(sku, name, price, stock)

        async def work(uow: InventoryUnitOfWork) -> Item:
            if await uow.get_item(new.sku) is not None:
                raise AlreadyExistsError(f"item {new.sku} already exists", sku=new.sku)
            await uow.add_item(new, self.currency, self.now())
            return await self._item(uow, new.sku)

        return await transact(self._uow(), work)

    async def get_item(self, sku: str) -> Item:
        sku = check_sku(sku)
        return await transact(self._uow(readonly=True), lambda uow: self._item(uow, sku))

    async def list_items(self, limit: int, cursor: str) -> tuple[list[Item], str]:
        limit = check_limit(limit, default=DEFAULT_PAGE)
        after = decode_cursor(cursor) if cursor else ""

        async def work(uow: InventoryUnitOfWork) -> tuple[list[Item], str]:
            found = await uow.list_items(after, limit + 1)
            more = len(found) > limit
            page = found[:limit]
            return page, encode_cursor(page[-1].sku) if more else ""

        return await transact(self._uow(readonly=True), work)

    async def update_item(
        self, sku: str, name: str | None, price: int | None, restock: int | None
    ) -> Item:
        change = domain.item_change(sku, name, price, restock)

        async def work(uow: InventoryUnitOfWork) -> Item:
            if not await uow.change_item(change, self.now()):
                raise NotFoundError(f"no item with sku {change.sku}", sku=change.sku)
            return await self._item(uow, change.sku)

        return await transact(self._uow(), work)

    @staticmethod
    async def _item(uow: InventoryUnitOfWork, sku: str) -> Item:
        item = await uow.get_item(sku)
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
            for sku, quantity in wanted:  # sorted by sku: rows are locked in one order
                price = await uow.take_stock(sku, quantity, now)
                if price is None:
                    if await uow.get_reservation(order_id) is not None:
                        raise Rollback  # the order has one already: roll back, read it below
                    # Refused, and rolled back: say why, naming every unknown sku first.
                    skus = [s for s, _ in wanted]
                    unknown = sorted(set(skus) - await uow.known_skus(skus))
                    if unknown:
                        raise UnknownSkuError(f"unknown sku: {', '.join(unknown)}", skus=unknown)
                    item = await uow.get_item(sku)
                    available = item.available if item else 0
                    raise OutOfStockError(
                        f"{sku}: {quantity} requested, {available} available",
                        sku=sku,
                        requested=quantity,
                        available=available,
                    )
                reserved.append(ReservedLine(sku, quantity, price))
            reservation = Reservation(
                order_id, ReservationState.RESERVED, tuple(reserved), self.currency
            )
            if not await uow.add_reservation(reservation, now):
                raise Rollback  # a repeat: give the stock back, return the first reservation
            return reservation

        try:
            return await transact(self._uow(), work)
        except Rollback:
            pass

        async def existing(uow: InventoryUnitOfWork) -> Reservation:
            found = await uow.get_reservation(order_id)
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

        return await transact(self._uow(readonly=True), existing)

    async def release(self, order_id: str) -> ReservationState:
        """Give reserved stock back; with no reservation yet, leave a RELEASED tombstone."""
        return await self._finish(
            order_id,
            ReservationState.RELEASED,
            moves={ReservationState.RESERVED: ("reserved", "available")},
            done=(ReservationState.RELEASED, ReservationState.RETURNED),
            tombstone=True,
        )

    async def commit(self, order_id: str) -> ReservationState:
        """Turn reserved stock into sold stock."""
        return await self._finish(
            order_id,
            ReservationState.COMMITTED,
            moves={ReservationState.RESERVED: ("reserved", "sold")},
            done=(ReservationState.COMMITTED,),
            tombstone=False,
        )

    async def return_stock(self, order_id: str) -> ReservationState:
        """Give a cancelled order's stock (sold or still reserved) back to available."""
        return await self._finish(
            order_id,
            ReservationState.RETURNED,
            moves={
                ReservationState.RESERVED: ("reserved", "available"),
                ReservationState.COMMITTED: ("sold", "available"),
            },
            done=(ReservationState.RELEASED, ReservationState.RETURNED),
            tombstone=True,
        )

    async def _finish(
        self,
        order_id: str,
        target: ReservationState,
        *,
        moves: dict[ReservationState, tuple[str, str]],
        done: tuple[ReservationState, ...],
        tombstone: bool,
    ) -> ReservationState:
        """Move a reservation to target: from a state in moves (moving its stock), no-op if done."""
        order_id = check_id("order_id", order_id)

        if ReservationState.RESERVED in moves:
            # The usual case in one statement: RESERVED -> target, then its stock.
            async def fast(uow: InventoryUnitOfWork) -> ReservationState | None:
                now = self.now()
                lines = await uow.move_reservation(order_id, ReservationState.RESERVED, target, now)
                if lines is None:
                    return None
                source, destination = moves[ReservationState.RESERVED]
                await uow.move_stock(lines, source, destination, now)
                return target

            state = await transact(self._uow(), fast)
            if state is not None:
                return state

        async def work(uow: InventoryUnitOfWork) -> ReservationState:
            now = self.now()
            reservation = await uow.get_reservation(order_id, lock=True)
            if reservation is None:
                if not tombstone:
                    raise NotFoundError(f"order {order_id} has no reservation", order_id=order_id)
                await uow.add_reservation(
                    Reservation(order_id, target, (), self.currency), now, if_absent=False
                )
                return target
            if reservation.state in done:
                return reservation.state
            if reservation.state not in moves:
                raise InvalidStateError(
                    f"the reservation of order {order_id} is {reservation.state.value}; "
                    f"it cannot become {target.value}",
                    order_id=order_id,
                    state=reservation.state.value,
                )
            source, destination = moves[reservation.state]
            if await uow.move_reservation(order_id, reservation.state, target, now) is None:
                raise ConflictError(f"the reservation of order {order_id} changed meanwhile")
            await uow.move_stock(reservation.lines, source, destination, now)
            return target

        return await transact(self._uow(), work)
