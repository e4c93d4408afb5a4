"""The in-process bus keeps JetStream's delivery rules: a publish is taken once every
subscribed consumer acked it, a nak redelivers with the attempt counted."""

from __future__ import annotations

import asyncio

import pytest

from orderflow.events import Event, InProcessBus, PublishError, event_type
from orderflow.events.v1 import events_pb2


async def test_publish_is_taken_once_every_subscriber_acked() -> None:
    bus = InProcessBus()
    inventory = await bus.subscribe("inventory", [event_type("order.confirmed")])
    loyalty = await bus.subscribe("loyalty", [event_type("order.confirmed")])
    await bus.subscribe("orders", [event_type("stock.committed")])
    message = Event.new(events_pb2.OrderConfirmed(order_id="o-1")).wire()
    publishing = asyncio.create_task(bus.publish([message], 2.0))
    [first] = await inventory.fetch(10, 1.0)
    await first.ack()
    await asyncio.sleep(0.01)
    assert not publishing.done()  # loyalty has not acked yet
    [second] = await loyalty.fetch(10, 1.0)
    assert (second.headers, second.body, second.attempt) == (message.headers, message.body, 1)
    assert second.subject == "orderflow.events.order.confirmed"
    await second.ack()
    assert await publishing == 1


async def test_nak_redelivers_with_the_attempt_counted() -> None:
    bus = InProcessBus()
    sub = await bus.subscribe("inventory", [event_type("order.confirmed")])
    message = Event.new(events_pb2.OrderConfirmed(order_id="o-1")).wire()
    publishing = asyncio.create_task(bus.publish([message], 2.0))
    [delivery] = await sub.fetch(10, 1.0)
    await delivery.nak(0.05)
    assert await sub.fetch(10, 0.01) == []
    [again] = await sub.fetch(10, 1.0)
    assert again.attempt == 2
    await again.ack()
    assert await publishing == 1


async def test_publish_not_acked_in_time_says_how_many_were_taken() -> None:
    bus = InProcessBus()
    sub = await bus.subscribe("inventory", [event_type("order.confirmed")])
    messages = [Event.new(events_pb2.OrderConfirmed(order_id=f"o-{i}")).wire() for i in range(3)]
    publishing = asyncio.create_task(bus.publish(messages, 0.3))
    first = (await sub.fetch(1, 1.0))[0]
    await first.ack()
    with pytest.raises(PublishError) as caught:
        await publishing
    assert caught.value.acked == 1


async def test_an_event_no_consumer_asked_for_is_taken_at_once() -> None:
    bus = InProcessBus()
    await bus.subscribe("orders", [event_type("stock.committed")])
    message = Event.new(events_pb2.ItemChanged(sku="MUG-1")).wire()
    assert await bus.publish([message], 0.1) == 1


async def test_a_republish_waits_for_the_first_copy_instead_of_adding_one() -> None:
    bus = InProcessBus()
    sub = await bus.subscribe("inventory", [event_type("order.confirmed")])
    message = Event.new(events_pb2.OrderConfirmed(order_id="o-1")).wire()
    with pytest.raises(PublishError):
        await bus.publish([message], 0.05)  # nobody fetched it in time
    again = asyncio.create_task(bus.publish([message], 2.0))
    deliveries = await sub.fetch(10, 1.0)
    assert len(deliveries) == 1
    await deliveries[0].ack()
    assert await again == 1
    assert await sub.fetch(10, 0.05) == []
    # Once acked, a republish is taken at once, and not delivered again.
    assert await bus.publish([message], 0.05) == 1
    assert await sub.fetch(10, 0.05) == []


async def test_a_batch_is_taken_up_to_its_first_event_not_acked() -> None:
    bus = InProcessBus()
    sub = await bus.subscribe("inventory", [event_type("order.confirmed")])
    messages = [Event.new(events_pb2.OrderConfirmed(order_id=f"o-{i}")).wire() for i in range(4)]
    publishing = asyncio.create_task(bus.publish(messages, 0.3))
    deliveries = await sub.fetch(10, 1.0)
    assert len(deliveries) == 4  # the whole batch at once
    for i in (0, 2, 3):  # the second is never acked
        await deliveries[i].ack()
    with pytest.raises(PublishError) as caught:
        await publishing
    assert caught.value.acked == 1
