"""Batches (ADR 32): the relay publishes a batch with its acks pipelined and marks it in
one transaction, which also reads the next; a consumer handles a fetched batch in one
transaction, inbox rows included, and falls back to one event per transaction when the
batch fails. On SQLite and PostgreSQL, over the in-process bus and real NATS JetStream.

What the databases show after the fact is the evidence: every row of one relay batch
carries the same `published_us` (one UPDATE), and every inbox row of one consumer batch
the same `handled_us` (one INSERT, in the transaction of the batch's effects).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from nats.js.api import AckPolicy, ConsumerConfig
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select

from orderflow.events import (
    ConsumerRunner,
    Event,
    EventBus,
    EventMetrics,
    InProcessBus,
    JetStreamBus,
    WireMessage,
    list_parked,
)
from orderflow.events.v1 import events_pb2
from orderflow.platform.db import UnitOfWork
from tests.integration.test_events_jetstream import (
    NATS_URL,
    confirm_interleaved,
    new_bus,
    per_aggregate,
    run_child,
    stream_messages,
)
from tests.integration.test_events_jetstream import _unavailable as unavailable
from tests.integration.test_events_outbox import Running, ToyService, running, toy, wait_for

__all__ = ["running", "toy"]  # fixtures, shared with test_events_outbox


class CountingUnitOfWork(UnitOfWork):
    """A unit of work that counts its commits on the service it belongs to."""

    commits = 0

    async def commit(self) -> None:
        await super().commit()
        CountingUnitOfWork.commits += 1


@pytest.fixture(params=["in-process", "jetstream"])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[EventBus]:
    """Each test runs over both buses (JetStream: a stream of the test's own)."""
    if request.param == "in-process":
        yield InProcessBus()
        return
    jetstream = new_bus()
    try:
        await jetstream.jetstream()
    except Exception as exc:
        unavailable(f"NATS JetStream not reachable at {NATS_URL}: {exc!r}")
    yield jetstream
    await jetstream.delete_stream()
    await jetstream.close()


async def publish_all(relay: Any) -> list[int]:
    """Run the relay's rounds until nothing is left; return the rows of each round."""
    rounds = []
    while (n := await relay.run_once()) > 0:
        rounds.append(n)
    return rounds


async def batches_of(toy: ToyService, column: str, where: Any = None) -> list[int]:
    """How many rows share each value of `column` (published_us of the outbox, handled_us
    of the inbox), in the order of that value: the sizes of the batches that wrote them."""
    table = toy.tables.outbox if column == "published_us" else toy.tables.inbox
    query = (
        select(func.count())
        .select_from(table)
        .where(table.c[column].is_not(None))
        .group_by(table.c[column])
        .order_by(table.c[column])
    )
    if where is not None:
        query = query.where(where)
    return [row[0] for row in await toy.rows(query)]


# -- the relay ------------------------------------------------------------------------------


async def test_relay_marks_each_batch_in_one_transaction_that_reads_the_next(
    toy: ToyService, bus: EventBus, running: Running
) -> None:
    consumer = running.consumer(toy, bus, "audit", batch_size=100)
    await consumer.start()
    events = await confirm_interleaved(toy, orders=5, per_order=6)

    def counting() -> UnitOfWork:
        return CountingUnitOfWork(toy.database)

    relay = running.relay(toy, bus, batch_size=10)
    relay.begin = counting
    assert await relay.run_once() == 10
    # The next batch was read in the transaction that marked the first: each further
    # batch costs one transaction (publishing needs none).
    before = CountingUnitOfWork.commits
    assert await relay.run_once() == 10
    assert await relay.run_once() == 10
    assert CountingUnitOfWork.commits - before == 2
    assert await relay.run_once() == 0
    assert await batches_of(toy, "published_us") == [10, 10, 10]
    await wait_for(lambda: _effect_count(toy, "audit", 30))
    effects = await toy.effects_of("audit")
    assert per_aggregate([(e.order_id, e.event_id) for e in effects]) == per_aggregate(
        [(e.subject, e.id) for e in events]
    )
    if isinstance(bus, JetStreamBus):
        # In the stream in outbox order, each with its event id as Nats-Msg-Id.
        messages = await stream_messages(bus)
        assert [m.headers["Nats-Msg-Id"] for m in messages] == [e.id for e in events]


async def test_a_commit_while_a_batch_is_out_goes_next_without_waiting_for_the_poll(
    toy: ToyService, running: Running
) -> None:
    inner = InProcessBus()
    consumer = running.consumer(toy, inner, "audit")
    await consumer.start()
    out = asyncio.Event()
    release = asyncio.Event()

    class HeldBus:
        """The first publish is held until the test lets it go."""

        subject_prefix = inner.subject_prefix

        async def publish(self, messages: Sequence[WireMessage], wait: float) -> int:
            if not release.is_set():
                out.set()
                await release.wait()
            return await inner.publish(messages, wait)

        async def subscribe(self, consumer: str, types: Any) -> Any:
            return await inner.subscribe(consumer, types)

        async def close(self) -> None:
            await inner.close()

    # An idle relay would look again only after a minute: only a wake-up can be quick.
    relay = running.relay(toy, HeldBus(), poll_seconds=60, publish_timeout=5)
    relay.start()
    await toy.confirm("o-1", 100)
    relay.wake()
    await asyncio.wait_for(out.wait(), 5)
    await toy.confirm("o-2", 200)
    relay.wake()  # as a service's unit of work does after its commit
    release.set()
    await wait_for(lambda: _effect_count(toy, "audit", 2), timeout=5)
    assert [e.order_id for e in await toy.effects_of("audit")] == ["o-1", "o-2"]


async def test_events_trickling_in_are_gathered_into_one_batch_by_the_relay_s_linger(
    toy: ToyService, running: Running
) -> None:
    bus = InProcessBus()
    consumer = running.consumer(toy, bus, "audit")
    await consumer.start()
    relay = running.relay(toy, bus, linger_seconds=1.0, poll_seconds=60)
    relay.start()
    await toy.confirm("o-1", 100)
    relay.wake()
    await wait_for(lambda: _pending_is(toy, 0))  # the first at once: nothing came before
    for i in range(2, 5):  # then one commit at a time, each waking the relay
        await toy.confirm(f"o-{i}", 100)
        relay.wake()
        await asyncio.sleep(0.02)
    await wait_for(lambda: _pending_is(toy, 0))
    assert await batches_of(toy, "published_us") == [1, 3]
    await wait_for(lambda: _effect_count(toy, "audit", 4))


async def test_events_trickling_in_are_gathered_into_one_transaction_by_the_consumer_s_linger(
    toy: ToyService, running: Running
) -> None:
    bus = await _jetstream()
    try:
        consumer = running.consumer(toy, bus, "audit", linger_seconds=1.0)
        await consumer.start()
        relay = running.relay(toy, bus)
        relay.start()
        await toy.confirm("o-1", 100)
        relay.wake()
        await wait_for(lambda: _effect_count(toy, "audit", 1))
        for i in range(2, 5):  # published one by one while the consumer lingers
            await toy.confirm(f"o-{i}", 100)
            relay.wake()
            await wait_for(lambda: _pending_is(toy, 0))
        await wait_for(lambda: _effect_count(toy, "audit", 4))
        assert await batches_of(toy, "handled_us") == [1, 3]
        assert await batches_of(toy, "published_us") == [1, 1, 1, 1]
    finally:
        await running.stop()
        await bus.delete_stream()
        await bus.close()


async def test_relay_killed_between_publish_and_mark_republishes_the_batch_under_the_same_ids(
    toy: ToyService, running: Running
) -> None:
    # A duplicate window of 1 s: the broker keeps the second copies, so the consumer's
    # inbox is what removes them.
    bus = new_bus()
    bus.duplicate_window = 1.0
    bus.ack_wait = 30.0  # no redelivery for want of an ack on a slow machine
    try:
        await bus.jetstream()
    except Exception as exc:
        unavailable(f"NATS JetStream not reachable at {NATS_URL}: {exc!r}")
    try:
        registry = CollectorRegistry()
        consumer = running.consumer(toy, bus, "inventory", metrics=EventMetrics(registry))
        await consumer.start()
        events = await confirm_interleaved(toy, orders=8, per_order=5)
        url = toy.database.engine.url.render_as_string(hide_password=False)
        child = await asyncio.to_thread(run_child, "relay", url, bus)
        assert child.returncode == -signal.SIGKILL, child.stderr
        # The dead relay's batch is in the stream and handled, not marked published.
        await wait_for(lambda: _effect_count(toy, "inventory", 40))
        assert await toy.pending() == 40
        await asyncio.sleep(1.2)  # past the lease and the duplicate window
        running.relay(toy, bus, lease_seconds=1.0, publish_timeout=0.5).start()
        await wait_for(lambda: _pending_is(toy, 0))
        await wait_for(lambda: _consumed(registry, "inventory", "duplicate", 40))
        messages = await stream_messages(bus)
        ids = [e.id for e in events]
        assert [m.headers["ce-id"] for m in messages] == ids + ids
        assert all(m.headers["Nats-Msg-Id"] == m.headers["ce-id"] for m in messages)
        effects = await toy.effects_of("inventory")
        assert sorted(e.event_id for e in effects) == sorted(ids)
        assert _value(registry, "inventory", "handled") == 40
    finally:
        await running.stop()
        await bus.delete_stream()
        await bus.close()


# -- consumers ------------------------------------------------------------------------------


async def test_a_fetched_batch_is_handled_in_one_transaction_with_its_inbox_rows(
    toy: ToyService, bus: EventBus, running: Running
) -> None:
    def counting() -> UnitOfWork:
        return CountingUnitOfWork(toy.database)

    consumer = running.consumer(
        toy, bus, "audit", batch_size=50, redrive_every=3600, upkeep_every=3600
    )
    consumer.begin = counting
    assert await consumer.run_once() == 0  # its upkeep done: from now on only events
    events = await confirm_interleaved(toy, orders=4, per_order=5)
    relay = running.relay(toy, bus)
    publishing = asyncio.create_task(relay.run_once())  # in-process: done once acked
    if isinstance(bus, JetStreamBus):
        assert await publishing == 20
    before = CountingUnitOfWork.commits
    fetched = 0
    while not fetched:
        fetched = await consumer.run_once()
    assert fetched == 20
    assert CountingUnitOfWork.commits - before == 1
    assert await publishing == 20
    assert await batches_of(toy, "handled_us") == [20]
    effects = await toy.effects_of("audit")
    assert [e.event_id for e in effects] == [e.id for e in events]


async def test_a_poison_event_in_a_batch_is_parked_after_its_retries_and_the_rest_commit(
    toy: ToyService, bus: EventBus, running: Running
) -> None:
    registry = CollectorRegistry()
    recorder = toy.recorder("audit")
    calls: list[str] = []

    async def handler(uow: UnitOfWork, event: Event) -> None:
        assert isinstance(event.data, events_pb2.OrderConfirmed)
        calls.append(event.data.order_id)
        await recorder(uow, event)
        if event.data.order_id == "o-poison":
            raise ValueError("no such sku")

    consumer = running.consumer(
        toy, bus, "audit", handler=handler, metrics=EventMetrics(registry), max_attempts=3
    )
    await consumer.subscribe()
    orders = [f"o-{i}" for i in range(4)] + ["o-poison"] + [f"o-{i}" for i in range(4, 9)]
    events = {order: await toy.confirm(order, 100) for order in orders}
    relay = running.relay(toy, bus, publish_timeout=0.5)
    if isinstance(bus, JetStreamBus):
        assert await relay.run_once() == 10  # all in the stream before the first fetch
    relay.start()  # (the in-process bus queues a whole batch at once)
    await consumer.start()
    await wait_for(lambda: _parked_count(toy, 1), timeout=15)
    [parked] = await list_parked(toy.begin, toy.tables, consumer="audit")
    assert (parked.event_id, parked.attempts) == (events["o-poison"].id, 3)
    assert "no such sku" in parked.last_error
    effects = await toy.effects_of("audit")
    assert sorted(e.order_id for e in effects) == sorted(o for o in orders if o != "o-poison")
    assert _value(registry, "audit", "handled") == 9
    assert _value(registry, "audit", "parked") == 1
    # The batch failed once; then each event alone, and the poison alone on each of its
    # retries: it never took a batch down with it again.
    assert calls.count("o-poison") == 4
    assert all(calls.count(o) <= 2 for o in orders if o != "o-poison")
    await wait_for(lambda: _pending_is(toy, 0))


async def test_inbox_removes_copies_across_and_within_a_batch(
    toy: ToyService, running: Running
) -> None:
    bus = await _jetstream()
    try:
        registry = CollectorRegistry()
        consumer = running.consumer(toy, bus, "audit", metrics=EventMetrics(registry))
        await consumer.subscribe()
        first = [await toy.confirm(f"o-{i}", 100 + i) for i in range(3)]
        later = [await toy.confirm(f"o-{i}", 200 + i) for i in range(3, 5)]

        def copy(event: Event) -> WireMessage:
            """The event published again past the broker's duplicate window."""
            wire = event.wire()
            return WireMessage(
                wire.type, {**wire.headers, "Nats-Msg-Id": f"{event.id}/2"}, wire.body
            )

        async def deliver(messages: list[WireMessage]) -> None:
            assert await bus.publish(messages, 5.0) == len(messages)
            fetched = 0
            while fetched < len(messages):
                fetched += await consumer.run_once()

        await deliver([e.wire() for e in first])
        # One batch: two events handled before, a new one twice, another new one.
        await deliver(
            [copy(first[0]), later[0].wire(), copy(first[2]), later[1].wire(), copy(later[0])]
        )
        effects = await toy.effects_of("audit")
        assert [e.event_id for e in effects] == [e.id for e in first + later]
        assert (_value(registry, "audit", "handled"), _value(registry, "audit", "duplicate")) == (
            5,
            3,
        )
        assert await batches_of(toy, "handled_us") == [3, 2]
    finally:
        await running.stop()
        await bus.delete_stream()
        await bus.close()


# -- JetStream: what a consumer of several types is sent ------------------------------------


async def test_a_consumer_of_two_types_is_sent_only_those_types(
    toy: ToyService, running: Running
) -> None:
    bus = await _jetstream()
    js = await bus.jetstream()
    try:
        prefix = bus.subject_prefix
        # A durable made by an earlier version, filtering on everything: narrowed.
        await js.add_consumer(
            bus.stream,
            ConsumerConfig(
                durable_name="orders", ack_policy=AckPolicy.EXPLICIT, filter_subject=f"{prefix}.>"
            ),
        )
        seen: list[str] = []

        async def record(uow: UnitOfWork, event: Event) -> None:
            seen.append(event.type.name)

        runner = ConsumerRunner(
            "orders",
            bus,
            toy.begin,
            toy.tables,
            {"stock.committed": record, "loyalty.committed": record},
            fetch_timeout=0.05,
        )
        running.consumers.append(runner)
        await runner.subscribe()
        info = await js.consumer_info(bus.stream, "orders")
        assert info.config.filter_subject == f"{prefix}.*.committed"
        messages = [
            events_pb2.OrderConfirmed(order_id="o-1", customer_id="c-1"),
            events_pb2.StockCommitted(order_id="o-1"),
            events_pb2.PointsChanged(customer_id="c-1", delta=5, balance=5),
            events_pb2.LoyaltyCommitted(order_id="o-1", customer_id="c-1"),
            events_pb2.OrderSettled(order_id="o-1", customer_id="c-1", status="CONFIRMED"),
        ]
        assert await bus.publish([Event.new(m).wire() for m in messages], 5.0) == 5
        info = await js.consumer_info(bus.stream, "orders")
        assert info.num_pending == 2
        await runner.start()
        await wait_for(lambda: _true(len(seen) == 2))
        assert sorted(seen) == ["loyalty.committed", "stock.committed"]
    finally:
        await running.stop()
        await bus.delete_stream()
        await bus.close()


# -- helpers ---------------------------------------------------------------------------------


async def _jetstream() -> JetStreamBus:
    bus = new_bus()
    try:
        await bus.jetstream()
    except Exception as exc:
        unavailable(f"NATS JetStream not reachable at {NATS_URL}: {exc!r}")
    return bus


async def _true(value: bool) -> bool:
    return value


async def _effect_count(toy: ToyService, consumer: str, n: int) -> bool:
    return len(await toy.effects_of(consumer)) == n


async def _pending_is(toy: ToyService, n: int) -> bool:
    return await toy.pending() == n


async def _parked_count(toy: ToyService, n: int) -> bool:
    return len(await list_parked(toy.begin, toy.tables)) == n


def _value(registry: CollectorRegistry, consumer: str, outcome: str) -> float | None:
    return registry.get_sample_value(
        "orderflow_events_consumed_total", {"consumer": consumer, "outcome": outcome}
    )


async def _consumed(registry: CollectorRegistry, consumer: str, outcome: str, n: int) -> bool:
    return _value(registry, consumer, outcome) == n
