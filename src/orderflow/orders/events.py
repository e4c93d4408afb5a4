"""The events of orders: which a change of an order causes, and their bodies.

`caused(before, after)` is the one rule: a cancellation asked for (ADR 28), a status
reached (CONFIRMED, REJECTED, CANCELLED) and an order becoming settled (a CONFIRMED or
CANCELLED one: every follow-up done) each give one event. Use cases write what it returns
in the transaction of the change, so a repeated, idempotent call (no change) writes
nothing.
"""

from __future__ import annotations

from google.protobuf.message import Message

from orderflow.events.v1 import events_pb2
from orderflow.orders.domain import Order, OrderStatus


def _lines(order: Order) -> list[events_pb2.OrderLine]:
    return [
        events_pb2.OrderLine(sku=x.sku, quantity=x.quantity, unit_price=x.unit_price)
        for x in order.lines
    ]


def confirmed(order: Order) -> events_pb2.OrderConfirmed:
    return events_pb2.OrderConfirmed(
        order_id=order.id,
        customer_id=order.customer_id,
        lines=_lines(order),
        currency=order.currency,
        subtotal=order.subtotal,
        discount=order.discount,
        points_redeemed=order.points_redeemed,
        total=order.total,
        points_earned=order.points_earned,
    )


def rejected(order: Order) -> events_pb2.OrderRejected:
    failure = order.failure
    return events_pb2.OrderRejected(
        order_id=order.id,
        customer_id=order.customer_id,
        failure_code=failure.code if failure else "",
        failure_message=failure.message if failure else "",
    )


def cancel_requested(order: Order) -> events_pb2.OrderCancelRequested:
    return events_pb2.OrderCancelRequested(order_id=order.id, customer_id=order.customer_id)


def cancelled(order: Order) -> events_pb2.OrderCancelled:
    return events_pb2.OrderCancelled(
        order_id=order.id,
        customer_id=order.customer_id,
        lines=_lines(order),
        currency=order.currency,
        total=order.total,
        points_redeemed=order.points_redeemed,
        points_earned=order.points_earned,
    )


def settled(order: Order) -> events_pb2.OrderSettled:
    return events_pb2.OrderSettled(
        order_id=order.id, customer_id=order.customer_id, status=order.status.value
    )


_REACHED = {
    OrderStatus.CONFIRMED: confirmed,
    OrderStatus.REJECTED: rejected,
    OrderStatus.CANCELLED: cancelled,
}


def caused(before: Order, after: Order) -> list[Message]:
    """The events of the change from before to after, in the order they happened."""
    out: list[Message] = []
    if after.cancel_requested and not before.cancel_requested:
        out.append(cancel_requested(after))
    if after.status != before.status and after.status in _REACHED:
        out.append(_REACHED[after.status](after))
    if (
        after.settled
        and not before.settled
        and after.status in (OrderStatus.CONFIRMED, OrderStatus.CANCELLED)
    ):
        out.append(settled(after))
    return out
