"""OrderWatch on the in-process bus: which events wake the streams watching an order."""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf.message import Message

from orderflow.events import Event, InProcessBus
from orderflow.events.v1 import events_pb2
from orderflow.gateway.watch import ORDER_EVENTS, OrderWatch


async def publish(bus: InProcessBus, data: Message) -> None:
    assert await bus.publish([Event.new(data).wire()], 1.0) == 1


@pytest.mark.parametrize(
    "data",
    [
        events_pb2.OrderConfirmed(order_id="o-1"),
        events_pb2.OrderRejected(order_id="o-1"),
        events_pb2.OrderCancelRequested(order_id="o-1", customer_id="c-1"),
        events_pb2.OrderCancelled(order_id="o-1"),
        events_pb2.OrderSettled(order_id="o-1", status="CANCELLED"),
    ],
    ids=lambda data: type(data).__name__,
)
async def test_each_change_of_the_order_wakes_its_streams(data: Message) -> None:
    bus = InProcessBus()
    watch = OrderWatch(bus)
    await watch.start()
    try:
        assert watch.live
        with watch.watching("o-1") as changed, watch.watching("o-2") as other:
            await publish(bus, data)
            assert changed.is_set()
            assert not other.is_set()  # another order's stream sleeps on
    finally:
        await watch.stop()


async def test_events_that_are_not_the_orders_own_wake_nothing() -> None:
    """stock.returned and loyalty.committed carry the order id too, but say nothing the
    stream shows; the order's own event follows them."""
    bus = InProcessBus()
    watch = OrderWatch(bus)
    await watch.start()
    try:
        with watch.watching("o-1") as changed:
            await publish(bus, events_pb2.StockReturned(order_id="o-1"))
            await publish(bus, events_pb2.LoyaltyCommitted(order_id="o-1"))
            await asyncio.sleep(0)
            assert not changed.is_set()
        assert watch.watchers == 0
    finally:
        await watch.stop()


def test_the_tap_takes_every_order_event_of_the_registry() -> None:
    assert {t.name for t in ORDER_EVENTS} == {
        "order.confirmed",
        "order.rejected",
        "order.cancel_requested",
        "order.cancelled",
        "order.settled",
    }
