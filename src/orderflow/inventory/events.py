"""The events of inventory and their bodies: item.changed, item.low_stock, stock.committed
and stock.returned (DESIGN.md, Events)."""

from __future__ import annotations

from collections.abc import Sequence

from orderflow.events.v1 import events_pb2
from orderflow.inventory.domain import Item, Reservation, ReservationState, ReservedLine


def item_changed(item: Item, *, created: bool) -> events_pb2.ItemChanged:
    return events_pb2.ItemChanged(
        sku=item.sku,
        name=item.name,
        price=item.price,
        currency=item.currency,
        available=item.available,
        reserved=item.reserved,
        sold=item.sold,
        created=created,
    )


def low_stock(sku: str, available: int, threshold: int) -> events_pb2.ItemLowStock:
    return events_pb2.ItemLowStock(sku=sku, available=available, threshold=threshold)


def _lines(lines: Sequence[ReservedLine]) -> list[events_pb2.StockLine]:
    return [events_pb2.StockLine(sku=x.sku, quantity=x.quantity) for x in lines]


def stock_moved(
    reservation: Reservation,
) -> events_pb2.StockCommitted | events_pb2.StockReturned | None:
    """The event of a reservation that just moved to its state (None: a release, which
    tells nobody anything: the order was rejected, and order.rejected says so)."""
    if reservation.state is ReservationState.COMMITTED:
        return events_pb2.StockCommitted(
            order_id=reservation.order_id, lines=_lines(reservation.lines)
        )
    if reservation.state is ReservationState.RETURNED:
        return events_pb2.StockReturned(
            order_id=reservation.order_id, lines=_lines(reservation.lines)
        )
    return None
