"""The in-process bus served to the workers of `orderflow run` over a Unix socket (ADR 35):
the in-process bus's rules hold across the socket, a publish waits until every worker is
ready, and what a worker had not acked when it went away goes to the one that replaces it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orderflow.events.bus import InProcessBus, PublishError
from orderflow.events.envelope import Event
from orderflow.events.local import LocalBroker, LocalBus
from orderflow.events.registry import event_type
from orderflow.events.v1 import events_pb2

CONFIRMED = event_type("order.confirmed")


def confirmed(order_id: str) -> Event:
    return Event.new(events_pb2.OrderConfirmed(order_id=order_id, customer_id="c-1"))


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[LocalBroker]:
    ready: list[str] = []
    served = LocalBroker(
        InProcessBus(),
        str(tmp_path / "bus.sock"),
        ["orders", "inventory"],
        lambda n, _: ready.append(n),
    )
    await served.start()
    yield served
    await served.close()


async def connect(broker: LocalBroker, name: str) -> LocalBus:
    bus = LocalBus(broker.path, name, broker.bus.subject_prefix)
    await bus.connect()
    return bus


async def test_a_publish_is_taken_once_the_consumer_in_another_process_acked(
    broker: LocalBroker,
) -> None:
    orders, inventory = await connect(broker, "orders"), await connect(broker, "inventory")
    subscription = await inventory.subscribe("inventory", [CONFIRMED])
    event = confirmed(str(uuid.uuid4()))

    # Not every process is ready: nothing is taken (the relay will try again).
    await orders.ready()
    with pytest.raises(PublishError) as early:
        await orders.publish([event.wire()], wait=0.2)
    assert early.value.acked == 0

    await inventory.ready()
    publishing = asyncio.ensure_future(orders.publish([event.wire()], wait=5.0))
    (delivery,) = await subscription.fetch(10, 5.0)
    assert Event.decode(delivery.headers, delivery.body) == event
    assert delivery.attempt == 1
    await asyncio.sleep(0.1)
    assert not publishing.done()  # taken only once the consumer acked
    await delivery.ack()
    assert await asyncio.wait_for(publishing, 5) == 1
    for bus in (orders, inventory):
        await bus.close()


async def test_what_a_worker_had_not_acked_goes_to_the_one_that_replaces_it(
    broker: LocalBroker,
) -> None:
    orders, first = await connect(broker, "orders"), await connect(broker, "inventory")
    subscription = await first.subscribe("inventory", [CONFIRMED])
    await orders.ready()
    await first.ready()
    event = confirmed(str(uuid.uuid4()))
    publishing = asyncio.ensure_future(orders.publish([event.wire()], wait=10.0))
    assert len(await subscription.fetch(10, 5.0)) == 1
    await first.close()  # the inventory worker died before it acked

    second = await connect(broker, "inventory")
    again = await second.subscribe("inventory", [CONFIRMED])
    (delivery,) = await again.fetch(10, 5.0)
    assert delivery.attempt == 2
    assert Event.decode(delivery.headers, delivery.body).id == event.id
    await delivery.ack()
    assert await asyncio.wait_for(publishing, 5) == 1
    for bus in (orders, second):
        await bus.close()


async def test_a_worker_builds_only_after_go_and_learns_when_the_command_is_gone(
    broker: LocalBroker,
) -> None:
    early = await connect(broker, "orders")
    await asyncio.sleep(0.05)
    assert not early.go.is_set()
    broker.go()
    await asyncio.wait_for(early.go.wait(), 5)
    late = await connect(broker, "inventory")  # told at once
    await asyncio.wait_for(late.go.wait(), 5)

    await broker.close()
    await asyncio.wait_for(early.lost.wait(), 5)
    with pytest.raises(PublishError):
        await early.publish([confirmed("o-1").wire()], wait=0.5)
    for bus in (early, late):
        await bus.close()
