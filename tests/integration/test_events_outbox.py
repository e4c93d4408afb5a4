"""The outbox, relay and consumers on real databases (SQLite and PostgreSQL), over the
in-process bus: a toy service's state table stands in for a real service's.

The helpers here are shared with test_events_jetstream.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.operations import Operations
from prometheus_client import CollectorRegistry
from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.engine import Connection

from orderflow.events import (
    ConsumerRunner,
    Event,
    EventBus,
    EventMetrics,
    EventTables,
    InProcessBus,
    OutboxRelay,
    append,
    create_event_tables,
    event_tables,
    list_parked,
    request_redrive,
)
from orderflow.events.v1 import events_pb2
from orderflow.platform.db import Database, Rollback, UnitOfWork, create_database


class ToyService:
    """A service's database with one state table (toy orders) and the event tables, and a
    consumer's effect table (one row per handled event: a second row is a double effect)."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.metadata = MetaData()
        self.orders = Table(
            "toy_orders",
            self.metadata,
            Column("id", String(64), primary_key=True),
            Column("status", String(16), nullable=False),
        )
        self.effects = Table(
            "toy_effects",
            self.metadata,
            Column("n", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
            Column("consumer", String(64), nullable=False),
            Column("event_id", String(64), nullable=False),
            Column("order_id", String(64), nullable=False),
            Column("total", BigInteger, nullable=False),
        )
        self.tables: EventTables = event_tables(self.metadata)

    def begin(self) -> UnitOfWork:
        return UnitOfWork(self.database)

    async def create(self) -> None:
        async with self.database.engine.begin() as conn:
            await conn.run_sync(self.metadata.create_all)

    async def confirm(self, order_id: str, total: int, *, fail: bool = False) -> Event:
        """The state change and its event, in one transaction (rolled back when fail)."""
        async with self.begin() as uow:
            await uow.connection.execute(
                insert(self.orders), {"id": order_id, "status": "CONFIRMED"}
            )
            [event] = await append(uow.connection, self.tables, confirmed(order_id, total))
            if fail:
                raise Rollback
            await uow.commit()
        return event

    async def scalar(self, query: Any) -> Any:
        async with self.database.reading() as conn:
            return (await conn.execute(query)).scalar()

    async def rows(self, query: Any) -> list[Any]:
        async with self.database.reading() as conn:
            return list((await conn.execute(query)).all())

    async def pending(self) -> int:
        outbox = self.tables.outbox
        return int(
            await self.scalar(
                select(func.count()).select_from(outbox).where(outbox.c.published_us.is_(None))
            )
        )

    async def effects_of(self, consumer: str) -> list[Any]:
        e = self.effects
        return await self.rows(
            select(e.c.event_id, e.c.order_id, e.c.total)
            .where(e.c.consumer == consumer)
            .order_by(e.c.n)
        )

    def recorder(self, consumer: str) -> Callable[[UnitOfWork, Event], Awaitable[None]]:
        """A handler whose effect is a row in toy_effects, in the consumer's transaction."""

        async def handle(uow: UnitOfWork, event: Event) -> None:
            assert isinstance(event.data, events_pb2.OrderConfirmed)
            await uow.connection.execute(
                insert(self.effects),
                {
                    "consumer": consumer,
                    "event_id": event.id,
                    "order_id": event.data.order_id,
                    "total": event.data.total,
                },
            )

        return handle


def confirmed(order_id: str, total: int) -> events_pb2.OrderConfirmed:
    return events_pb2.OrderConfirmed(
        order_id=order_id,
        customer_id="c-1",
        lines=[events_pb2.OrderLine(sku="MUG-1", quantity=1, unit_price=total)],
        currency="USD",
        subtotal=total,
        total=total,
        points_earned=total // 100,
    )


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


@pytest.fixture
async def toy(make_db_url: Callable[[str], Awaitable[str]]) -> AsyncIterator[ToyService]:
    database = create_database(await make_db_url("events"))
    service = ToyService(database)
    await service.create()
    yield service
    await database.dispose()


@dataclass
class Running:
    """Relays and consumers started by a test, stopped after it."""

    relays: list[OutboxRelay[Any]] = field(default_factory=list)
    consumers: list[ConsumerRunner[Any]] = field(default_factory=list)

    def relay(self, toy: ToyService, bus: EventBus, **options: Any) -> OutboxRelay[Any]:
        options = {"poll_seconds": 0.02, "max_backoff": 0.2, **options}
        relay = OutboxRelay("toy", bus, toy.begin, toy.tables, **options)
        self.relays.append(relay)
        return relay

    def consumer(
        self, toy: ToyService, bus: EventBus, name: str, handler: Any = None, **options: Any
    ) -> ConsumerRunner[Any]:
        options = {"fetch_timeout": 0.05, "retry_delay": 0.01, "redrive_every": 0.05, **options}
        runner = ConsumerRunner(
            name,
            bus,
            toy.begin,
            toy.tables,
            {"order.confirmed": handler or toy.recorder(name)},
            **options,
        )
        self.consumers.append(runner)
        return runner

    async def stop(self) -> None:
        for relay in self.relays:
            await relay.stop()
        for consumer in self.consumers:
            await consumer.stop()


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    started = Running()
    yield started
    await started.stop()


# -- the outbox ---------------------------------------------------------------------------


async def test_event_commits_with_the_change_and_a_rollback_leaves_none(
    toy: ToyService,
) -> None:
    event = await toy.confirm("o-1", 1250)
    with pytest.raises(Rollback):
        await toy.confirm("o-2", 999, fail=True)
    rows = await toy.rows(select(toy.tables.outbox))
    assert [(r.id, r.aggregate_type, r.aggregate_id, r.event_type, r.source) for r in rows] == [
        (event.id, "order", "o-1", "order.confirmed", "orders")
    ]
    assert rows[0].published_us is None
    assert await toy.scalar(select(func.count()).select_from(toy.orders)) == 1


async def test_migration_ops_create_exactly_the_tables_of_the_metadata(
    make_db_url: Callable[[str], Awaitable[str]],
) -> None:
    database = create_database(await make_db_url("migrated"))
    metadata = MetaData()
    event_tables(metadata)

    def migrate_and_compare(conn: Connection) -> list[Any]:
        create_event_tables(Operations(MigrationContext.configure(conn)))
        return compare_metadata(MigrationContext.configure(conn), metadata)

    try:
        async with database.engine.begin() as conn:
            diff = await conn.run_sync(migrate_and_compare)
    finally:
        await database.dispose()
    assert diff == []


# -- the relay ------------------------------------------------------------------------------


async def test_relay_publishes_in_outbox_order_and_marks_only_what_was_taken(
    toy: ToyService, running: Running
) -> None:
    bus = InProcessBus()
    consumer = running.consumer(toy, bus, "audit")
    await consumer.subscribe()
    events = [await toy.confirm(f"o-{i}", 100 + i) for i in range(25)]
    relay = running.relay(toy, bus, batch_size=10)
    # The consumer is not running: the bus has not taken the first batch when the relay
    # gives up on it, so nothing is marked.
    relay.publish_timeout = 0.1
    with pytest.raises(Exception, match="did not take"):
        await relay.run_once()
    assert await toy.pending() == 25
    await consumer.start()
    relay.start()
    await wait_for(lambda: _pending_is(toy, 0))
    await wait_for(lambda: _effect_count(toy, "audit", 25))
    effects = await toy.effects_of("audit")
    # Outbox order, and every event once although the first batch was delivered twice.
    assert [e.event_id for e in effects] == [e.id for e in events]


async def _pending_is(toy: ToyService, n: int) -> bool:
    return await toy.pending() == n


async def _effect_count(toy: ToyService, consumer: str, n: int) -> bool:
    return len(await toy.effects_of(consumer)) == n


async def test_two_relays_one_active_and_the_other_takes_over_after_the_lease(
    toy: ToyService, running: Running
) -> None:
    bus = InProcessBus()
    consumer = running.consumer(toy, bus, "audit")
    await consumer.start()
    first = running.relay(toy, bus, lease_seconds=0.6, publish_timeout=0.3)
    second = running.relay(toy, bus, lease_seconds=0.6, publish_timeout=0.3)
    await toy.confirm("o-1", 100)
    assert await first.run_once() == 1
    assert await second.run_once() == 0
    assert (first.active, second.active) == (True, False)
    # The active relay dies without giving the lease up (no stop()): the standby keeps
    # standing by until the lease has expired, then takes over.
    await toy.confirm("o-2", 200)
    assert await second.run_once() == 0
    await asyncio.sleep(0.7)
    assert await second.run_once() == 1
    assert second.active
    # The old holder, back, cannot publish or mark: its lease is gone.
    await toy.confirm("o-3", 300)
    first._lease_until = 0.0
    assert await first.run_once() == 0
    assert not first.active
    assert await second.run_once() == 1
    await wait_for(lambda: _effect_count(toy, "audit", 3))
    assert [e.order_id for e in await toy.effects_of("audit")] == ["o-1", "o-2", "o-3"]


async def test_a_standby_relay_woken_by_commits_tries_for_the_lease_once_per_wake(
    toy: ToyService, running: Running
) -> None:
    # A standby relay is woken by its process's commits like the active one; each wake
    # may cost it one try for the lease, never a loop of them (it once spun: a standby
    # never read the outbox, so its wake stayed set, and every worker of `orderflow run`
    # that came back next to a live relay stalled its own requests).
    bus = InProcessBus()
    holder = running.relay(toy, bus, lease_seconds=30)
    await holder.run_once()
    standby = running.relay(toy, bus, lease_seconds=30)
    tries = 0
    hold = standby._hold

    async def counted() -> None:
        nonlocal tries
        tries += 1
        await hold()

    standby._hold = counted  # type: ignore[method-assign]
    standby.start()
    for n in range(5):
        await toy.confirm(f"o-{n}", 100)
        standby.wake()
        await asyncio.sleep(0.05)
    assert not standby.active and holder.active
    assert 1 <= tries <= 7, f"{tries} tries for the lease after 5 wakes"


async def test_a_stopped_relay_hands_the_lease_over_at_once(
    toy: ToyService, running: Running
) -> None:
    bus = InProcessBus()
    first = running.relay(toy, bus, lease_seconds=30)
    second = running.relay(toy, bus, lease_seconds=30)
    await first.run_once()
    assert first.active
    await first.stop()
    await second.run_once()
    assert second.active


async def test_published_rows_are_deleted_after_the_retention_in_batches(
    toy: ToyService, running: Running
) -> None:
    bus = InProcessBus()
    relay = running.relay(toy, bus, retention_seconds=0.3, retention_batch=4)
    for i in range(10):
        await toy.confirm(f"o-{i}", 100)
    assert await relay.run_once() == 10
    outbox = toy.tables.outbox
    count = select(func.count()).select_from(outbox)
    assert await relay.delete_published() == 0  # too young
    await toy.confirm("o-late", 100)  # unpublished: never deleted
    await asyncio.sleep(0.35)
    assert await relay.delete_published() == 10
    assert await toy.scalar(count) == 1
    assert await toy.pending() == 1


async def test_outbox_metrics_show_the_backlog_and_its_age(
    toy: ToyService, running: Running
) -> None:
    registry = CollectorRegistry()
    metrics = EventMetrics(registry)
    relay = running.relay(toy, InProcessBus(), metrics=metrics)
    for i in range(3):
        await toy.confirm(f"o-{i}", 100)
    await relay.refresh_metrics()
    assert registry.get_sample_value("orderflow_outbox_pending", {"service": "toy"}) == 3
    first = registry.get_sample_value("orderflow_outbox_oldest_age_seconds", {"service": "toy"})
    await asyncio.sleep(0.1)
    later = registry.get_sample_value("orderflow_outbox_oldest_age_seconds", {"service": "toy"})
    assert first is not None and later is not None and later >= first + 0.09
    assert await relay.run_once() == 3
    await relay.refresh_metrics()
    assert registry.get_sample_value("orderflow_outbox_pending", {"service": "toy"}) == 0
    assert registry.get_sample_value("orderflow_outbox_oldest_age_seconds", {"service": "toy"}) == 0
    assert (
        registry.get_sample_value(
            "orderflow_events_published_total", {"service": "toy", "type": "order.confirmed"}
        )
        == 3
    )


# -- consumers ------------------------------------------------------------------------------


async def test_a_redelivered_event_has_no_second_effect(toy: ToyService, running: Running) -> None:
    registry = CollectorRegistry()
    bus = InProcessBus(duplicate_window=0)  # a bus that lets the copy through
    consumer = running.consumer(toy, bus, "audit", metrics=EventMetrics(registry))
    await consumer.subscribe()
    event = await toy.confirm("o-1", 100)
    wire = [event.wire()]

    async def deliver() -> None:
        publishing = asyncio.create_task(bus.publish(wire, 2.0))
        while not publishing.done():
            await consumer.run_once()
        await publishing

    await deliver()
    await deliver()
    assert [e.event_id for e in await toy.effects_of("audit")] == [event.id]
    consumed = {
        outcome: registry.get_sample_value(
            "orderflow_events_consumed_total", {"consumer": "audit", "outcome": outcome}
        )
        for outcome in ("handled", "duplicate")
    }
    assert consumed == {"handled": 1, "duplicate": 1}


async def test_a_failing_event_in_a_batch_holds_back_no_other(
    toy: ToyService, running: Running
) -> None:
    bus = InProcessBus()
    recorder = toy.recorder("audit")

    async def picky(uow: UnitOfWork, event: Event) -> None:
        await recorder(uow, event)
        assert isinstance(event.data, events_pb2.OrderConfirmed)
        if event.data.order_id == "o-bad":
            raise RuntimeError("cannot handle o-bad")

    consumer = running.consumer(toy, bus, "audit", handler=picky, max_attempts=100)
    await consumer.start()
    for order in ["o-1", "o-bad", "o-2"]:
        await toy.confirm(order, 100)
    relay = running.relay(toy, bus, publish_timeout=0.5)
    relay.start()
    await wait_for(lambda: _effect_count(toy, "audit", 2))
    assert sorted(e.order_id for e in await toy.effects_of("audit")) == ["o-1", "o-2"]


async def test_poison_is_parked_after_n_attempts_and_redrive_delivers_it_once_handled(
    toy: ToyService, running: Running
) -> None:
    registry = CollectorRegistry()
    metrics = EventMetrics(registry)
    bus = InProcessBus()
    broken = {"o-poison"}
    attempts: list[str] = []
    recorder = toy.recorder("audit")

    async def handler(uow: UnitOfWork, event: Event) -> None:
        assert isinstance(event.data, events_pb2.OrderConfirmed)
        attempts.append(event.data.order_id)
        if event.data.order_id in broken:
            raise ValueError(f"no such sku for {event.data.order_id}")
        await recorder(uow, event)

    consumer = running.consumer(toy, bus, "audit", handler=handler, metrics=metrics, max_attempts=3)
    await consumer.start()
    poison = await toy.confirm("o-poison", 100)
    fine = await toy.confirm("o-fine", 200)
    relay = running.relay(toy, bus, metrics=metrics)
    relay.start()
    # Parked after the third failure: the relay's publish is then taken.
    await wait_for(lambda: _pending_is(toy, 0))
    # (A batch that fails is handled again one event per transaction, so the handler
    # may see an attempt twice; parking counts deliveries.)
    assert attempts.count("o-poison") >= 3
    [parked] = await list_parked(toy.begin, toy.tables)
    assert (parked.consumer, parked.event_id, parked.event_type, parked.attempts) == (
        "audit",
        poison.id,
        "order.confirmed",
        3,
    )
    assert "no such sku for o-poison" in parked.last_error
    assert [e.event_id for e in await toy.effects_of("audit")] == [fine.id]
    assert registry.get_sample_value("orderflow_events_parked", {"consumer": "audit"}) == 1
    assert (
        registry.get_sample_value(
            "orderflow_events_consumed_total", {"consumer": "audit", "outcome": "parked"}
        )
        == 1
    )
    # Redriven while still broken: it stays parked, one attempt more.
    assert await request_redrive(toy.begin, toy.tables, poison.id) == 1
    await wait_for(lambda: _parked_attempts(toy, 4))
    # Once it can be handled, a redrive delivers it, once.
    broken.clear()
    assert await request_redrive(toy.begin, toy.tables, poison.id, consumer="audit") == 1
    await wait_for(lambda: _effect_count(toy, "audit", 2))
    assert await list_parked(toy.begin, toy.tables) == []
    assert registry.get_sample_value("orderflow_events_parked", {"consumer": "audit"}) == 0
    assert [e.event_id for e in await toy.effects_of("audit")] == [fine.id, poison.id]
    assert await request_redrive(toy.begin, toy.tables, poison.id) == 0


async def _parked_attempts(toy: ToyService, n: int) -> bool:
    parked = await list_parked(toy.begin, toy.tables)
    return len(parked) == 1 and parked[0].attempts == n and not parked[0].redrive_requested


async def test_a_message_that_is_no_event_is_parked_at_once(
    toy: ToyService, running: Running
) -> None:
    bus = InProcessBus()
    consumer = running.consumer(toy, bus, "audit")
    await consumer.subscribe()
    event = await toy.confirm("o-1", 100)
    wire = event.wire()
    bad = type(wire)(wire.type, {**wire.headers, "ce-specversion": "0.3"}, wire.body)
    publishing = asyncio.create_task(bus.publish([bad], 2.0))
    while not publishing.done():
        await consumer.run_once()
    [parked] = await list_parked(toy.begin, toy.tables, consumer="audit")
    assert parked.event_id == event.id
    assert parked.attempts == 1
    assert await toy.effects_of("audit") == []
    # It stays parked when redriven: it still is no event.
    await request_redrive(toy.begin, toy.tables, event.id)
    await consumer.run_once()
    await wait_for(lambda: _parked_attempts(toy, 2))


async def test_a_parked_event_of_a_type_the_consumer_does_not_handle_is_let_go_on_redrive(
    toy: ToyService, running: Running
) -> None:
    """An earlier version parked an event of a type it did not know yet (a type added since,
    ADR 28); redriven by this one, which knows it and has no handler for it, it is let go,
    with no effect, as a delivery of it is."""
    bus = InProcessBus()
    consumer = running.consumer(toy, bus, "audit")
    await consumer.subscribe()
    event = Event.new(events_pb2.OrderCancelRequested(order_id="o-1", customer_id="c-1"))
    wire = event.wire()
    async with toy.begin() as uow:
        await uow.connection.execute(
            insert(toy.tables.parked),
            {
                "consumer": "audit",
                "event_id": event.id,
                "event_type": wire.headers["ce-type"],
                "subject": wire.type.subject(),
                "headers": json.dumps(dict(wire.headers), sort_keys=True),
                "body": wire.body.decode(),
                "attempts": 1,
                "last_error": "InvalidEventError('not an orderflow event: unknown event type')",
                "parked_us": 1,
                "redrive_us": None,
            },
        )
        await uow.commit()
    assert [p.event_id for p in await list_parked(toy.begin, toy.tables)] == [event.id]
    assert await request_redrive(toy.begin, toy.tables, event.id) == 1
    assert await consumer.redrive_requested() == 1
    assert await list_parked(toy.begin, toy.tables) == []
    assert await toy.effects_of("audit") == []


async def test_inbox_rows_older_than_the_retention_are_forgotten(
    toy: ToyService, running: Running
) -> None:
    bus = InProcessBus()
    consumer = running.consumer(toy, bus, "audit", inbox_retention_seconds=0.2)
    await consumer.start()
    relay = running.relay(toy, bus)
    relay.start()
    await toy.confirm("o-1", 100)
    await wait_for(lambda: _effect_count(toy, "audit", 1))
    inbox = toy.tables.inbox
    assert await toy.scalar(select(func.count()).select_from(inbox)) == 1
    await asyncio.sleep(0.25)
    assert await consumer.delete_old_inbox_rows() == 1
    assert await toy.scalar(select(func.count()).select_from(inbox)) == 0


async def test_deliveries_come_back_when_the_database_fails_under_the_consumer(
    toy: ToyService, running: Running
) -> None:
    bus = InProcessBus()
    failing = {"on": True}

    def begin() -> UnitOfWork:
        if failing["on"]:
            raise ConnectionError("database unreachable")
        return toy.begin()

    consumer = ConsumerRunner(
        "audit",
        bus,
        begin,
        toy.tables,
        {"order.confirmed": toy.recorder("audit")},
        fetch_timeout=0.05,
        retry_delay=0.01,
        max_retry_delay=0.05,
        max_attempts=1_000,
        redrive_every=3600,
        upkeep_every=3600,
    )
    running.consumers.append(consumer)
    await consumer.start()
    event = await toy.confirm("o-1", 100)
    relay = running.relay(toy, bus, publish_timeout=0.3)
    relay.start()
    await asyncio.sleep(0.3)
    assert await toy.effects_of("audit") == []
    assert await toy.pending() == 1
    failing["on"] = False
    await wait_for(lambda: _pending_is(toy, 0))
    assert [e.event_id for e in await toy.effects_of("audit")] == [event.id]


async def test_the_active_relay_runs_the_service_s_housekeeping_on_its_retention_round(
    toy: ToyService, running: Running
) -> None:
    active = running.relay(toy, InProcessBus(), lease_seconds=30, retention_every=3600)
    standby = running.relay(toy, InProcessBus(), lease_seconds=30, retention_every=3600)
    rounds: list[str] = []

    async def forget_old_keys() -> int:
        rounds.append("active")
        return 0

    async def failing() -> int:
        raise RuntimeError("housekeeping failed")

    async def never() -> int:
        rounds.append("standby")
        return 0

    active.housekeeping.extend([failing, forget_old_keys])  # a failure stops neither
    standby.housekeeping.append(never)
    await toy.confirm("o-1", 100)
    assert await active.run_once() == 1  # published despite the failing upkeep
    await standby.run_once()
    await active.run_once()  # not again before retention_every
    assert rounds == ["active"]
