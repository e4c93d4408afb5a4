"""Every event type of DESIGN.md is written by the change that causes it, once, with its
envelope; a repeated idempotent call writes nothing; a rolled-back change writes nothing.
The services run on their real SQL units of work (SQLite and PostgreSQL) and the outbox is
read back as the relay would send it."""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from orderflow.errors import NotCancellableError
from orderflow.events import Event, EventTables, event_type
from orderflow.events.envelope import wire_headers
from orderflow.events.v1 import events_pb2
from orderflow.inventory.service import InventoryService
from orderflow.inventory.storage import SqlInventoryUnitOfWork
from orderflow.inventory.storage import outbox_tables as inventory_tables
from orderflow.loyalty.domain import Tiers
from orderflow.loyalty.service import LoyaltyService
from orderflow.loyalty.storage import SqlLoyaltyUnitOfWork
from orderflow.loyalty.storage import outbox_tables as loyalty_tables
from orderflow.orders.domain import Failure, FollowUp, OrderLine, Totals
from orderflow.orders.service import OrdersService
from orderflow.orders.storage import SqlOrdersUnitOfWork
from orderflow.orders.storage import outbox_tables as orders_tables
from orderflow.platform.component import open_database
from orderflow.platform.db import Database

OWNER = "gw:test"


class Outbox:
    """A service's outbox, read as the relay publishes it: drain() gives the events written
    since the last drain, decoded from the headers and body the relay would send."""

    def __init__(self, database: Database, tables: EventTables, source: str) -> None:
        self.database = database
        self.tables = tables
        self.source = source
        self.seen = 0

    async def drain(self) -> list[Event]:
        outbox = self.tables.outbox
        async with self.database.reading() as conn:
            rows = (
                await conn.execute(
                    select(outbox).where(outbox.c.seq > self.seen).order_by(outbox.c.seq)
                )
            ).all()
        events = []
        for row in rows:
            self.seen = row.seq
            headers = wire_headers(
                event_id=row.id,
                kind=event_type(row.event_type),
                source=row.source,
                subject=row.aggregate_id,
                time=row.time,
                traceparent=row.traceparent,
            )
            check_envelope(headers, self.source)
            events.append(Event.decode(headers, row.payload.encode()))
        return events


def check_envelope(headers: dict[str, str], source: str) -> None:
    """The CloudEvents binary-mode headers DESIGN.md (Events) names, with sane values."""
    assert headers["ce-specversion"] == "1.0"
    assert str(uuid.UUID(headers["ce-id"])) == headers["ce-id"]
    assert headers["Nats-Msg-Id"] == headers["ce-id"]
    assert headers["ce-source"] == f"orderflow/{source}"
    assert headers["ce-type"].startswith("orderflow.") and headers["ce-type"].endswith(".v1")
    assert headers["ce-subject"]
    sent = datetime.fromisoformat(headers["ce-time"])
    assert sent.tzinfo is not None and abs(datetime.now(UTC) - sent) < timedelta(minutes=5)
    assert headers["content-type"] == "application/json"


def data(event: Event) -> Any:
    """The event's body (a typed protobuf message; Any for the type checker)."""
    return event.data


def only(events: list[Event], name: str) -> Any:
    """The body of the one event, which must be of type name."""
    assert [e.type.name for e in events] == [name], [e.type.name for e in events]
    return data(events[0])


Opened = Callable[[str], Awaitable[Database]]


@pytest.fixture
async def opened(make_db_url: Callable[[str], Awaitable[str]]) -> AsyncIterator[Opened]:
    databases: list[Database] = []

    async def open_(service: str) -> Database:
        database = await open_database(await make_db_url(service), 2, service, migrate=True)
        databases.append(database)
        return database

    yield open_
    for database in databases:
        await database.dispose()


# -- orders -----------------------------------------------------------------------------------

TOTALS = Totals(
    lines=(OrderLine("a", 2, 500), OrderLine("b", 1, 250)),
    currency="USD",
    subtotal=1250,
    discount=50,
    points_redeemed=100,
    total=1100,
    points_earned=11,
)


async def test_orders_emits_confirmed_rejected_cancel_requested_cancelled_and_settled_once(
    opened: Opened,
) -> None:
    database = await opened("orders")
    uow = functools.partial(SqlOrdersUnitOfWork, database)
    service = OrdersService(uow)
    outbox = Outbox(database, orders_tables, "orders")

    async def create(key: str) -> str:
        order, _ = await service.create_order("c-1", [("a", 2), ("b", 1)], 100, key, "f", OWNER, 10)
        return order.id

    async def follow_up(order_id: str, which: FollowUp) -> None:
        async with uow() as work:
            await service.record_follow_up(work, order_id, which)
            await work.commit()

    placed = await create("k-1")
    assert await outbox.drain() == []  # a PENDING order tells nobody anything yet
    await service.confirm_order(placed, OWNER, TOTALS)
    [event] = await outbox.drain()
    body = only([event], "order.confirmed")
    assert event.subject == placed and event.source == "orders"
    assert event.type.ce_type == "orderflow.order.confirmed.v1"
    assert (body.order_id, body.customer_id, body.currency) == (placed, "c-1", "USD")
    assert [(x.sku, x.quantity, x.unit_price) for x in body.lines] == [("a", 2, 500), ("b", 1, 250)]
    assert (body.subtotal, body.discount, body.points_redeemed) == (1250, 50, 100)
    assert (body.total, body.points_earned) == (1100, 11)
    await service.confirm_order(placed, OWNER, TOTALS)  # a repeat
    assert await outbox.drain() == []

    # Settled once both follow-ups reported, whichever comes first; repeats add nothing.
    await follow_up(placed, FollowUp.LOYALTY)
    assert await outbox.drain() == []
    await follow_up(placed, FollowUp.STOCK)
    settled = only(await outbox.drain(), "order.settled")
    assert (settled.order_id, settled.customer_id, settled.status) == (placed, "c-1", "CONFIRMED")
    assert (await service.get_order(placed)).settled
    await follow_up(placed, FollowUp.STOCK)
    await service.settle_order(placed, OWNER)
    assert await outbox.drain() == []

    # A cancel asked for: told at once (ADR 28), once; a given-up one settles it again.
    await service.request_cancel(placed, OWNER, 10)
    [requested] = await outbox.drain()
    assert (requested.type.ce_type, requested.subject) == (
        "orderflow.order.cancel_requested.v1",
        placed,
    )
    assert (data(requested).order_id, data(requested).customer_id) == (placed, "c-1")
    await service.request_cancel(placed, OWNER, 10)  # a repeat
    assert await outbox.drain() == []
    await service.withdraw_cancel(placed, OWNER)
    withdrawn = only(await outbox.drain(), "order.settled")
    assert withdrawn.status == "CONFIRMED"
    await service.request_cancel(placed, OWNER, 10)  # asked for again: told again
    assert [e.type.name for e in await outbox.drain()] == ["order.cancel_requested"]

    # Cancelled (its follow-ups, refund and return, are done by then): cancelled, settled.
    await service.cancel_order(placed, OWNER)
    events = await outbox.drain()
    assert [e.type.name for e in events] == ["order.cancelled", "order.settled"]
    cancelled = data(events[0])
    assert (cancelled.order_id, cancelled.total, cancelled.points_earned) == (placed, 1100, 11)
    assert [(x.sku, x.quantity) for x in cancelled.lines] == [("a", 2), ("b", 1)]
    assert data(events[1]).status == "CANCELLED"
    await service.cancel_order(placed, OWNER)
    await follow_up(placed, FollowUp.LOYALTY)  # a late report changes nothing
    assert await outbox.drain() == []

    rejected_id = await create("k-2")
    await service.reject_order(rejected_id, OWNER, Failure("OUT_OF_STOCK", "a: 2 requested"))
    rejected = only(await outbox.drain(), "order.rejected")
    assert (rejected.order_id, rejected.failure_code) == (rejected_id, "OUT_OF_STOCK")
    assert rejected.failure_message == "a: 2 requested"
    await service.reject_order(rejected_id, OWNER, Failure("OUT_OF_STOCK", "again"))
    await service.settle_order(rejected_id, OWNER)  # a rejected order's settling: no event
    assert await outbox.drain() == []

    # Recovery settling a confirmed order by the call (its events were lost): settled once.
    lost = await create("k-3")
    await service.confirm_order(lost, OWNER, TOTALS)
    assert [e.type.name for e in await outbox.drain()] == ["order.confirmed"]
    await service.settle_order(lost, OWNER)
    assert only(await outbox.drain(), "order.settled").status == "CONFIRMED"
    await service.settle_order(lost, OWNER)
    assert await outbox.drain() == []

    # A transaction that rolls back takes its events with it.
    async with uow() as work:
        await work.events.add(events_pb2.OrderSettled(order_id=lost, status="CONFIRMED"))
    assert await outbox.drain() == []


# -- inventory --------------------------------------------------------------------------------


async def test_inventory_emits_item_stock_and_low_stock_events_once(opened: Opened) -> None:
    database = await opened("inventory")
    uow = functools.partial(SqlInventoryUnitOfWork, database)
    service = InventoryService(uow, currency="USD", low_stock_threshold=5)
    outbox = Outbox(database, inventory_tables, "inventory")

    await service.create_item("MUG", "Mug", 1250, 10)
    created = only(await outbox.drain(), "item.changed")
    assert (created.sku, created.name, created.price, created.currency) == (
        "MUG",
        "Mug",
        1250,
        "USD",
    )
    assert (created.available, created.reserved, created.sold, created.created) == (10, 0, 0, True)
    await service.update_item("MUG", None, 1300, None)
    repriced = only(await outbox.drain(), "item.changed")
    assert (repriced.price, repriced.available, repriced.created) == (1300, 10, False)

    await service.reserve("o-1", [("MUG", 4)])  # 6 left: above the threshold
    assert await outbox.drain() == []
    await service.reserve("o-2", [("MUG", 1)])  # 5 left: crosses it
    low = only(await outbox.drain(), "item.low_stock")
    assert (low.sku, low.available, low.threshold) == ("MUG", 5, 5)
    await service.reserve("o-3", [("MUG", 1)])  # 4 left: still the same crossing
    await service.reserve("o-2", [("MUG", 1)])  # a repeat
    assert await outbox.drain() == []

    await service.commit_stock("o-1")
    committed = only(await outbox.drain(), "stock.committed")
    assert committed.order_id == "o-1"
    assert [(x.sku, x.quantity) for x in committed.lines] == [("MUG", 4)]
    await service.commit_stock("o-1")
    await service.release("o-3")  # back to 5 available: not above the threshold
    assert await outbox.drain() == []

    await service.return_stock("o-1")  # sold goes back: 9 available, the mark is cleared
    returned = only(await outbox.drain(), "stock.returned")
    assert [(x.order_id, y.sku, y.quantity) for x in [returned] for y in x.lines] == [
        ("o-1", "MUG", 4)
    ]
    await service.return_stock("o-1")
    assert await outbox.drain() == []
    await service.reserve("o-4", [("MUG", 4)])  # 5 again: a new crossing
    assert only(await outbox.drain(), "item.low_stock").available == 5

    await service.update_item("MUG", None, None, 10)
    restocked = only(await outbox.drain(), "item.changed")
    assert (restocked.available, restocked.reserved, restocked.sold) == (15, 5, 0)

    # order.confirmed arriving after the order's stock was returned (it was cancelled
    # first) is late, not wrong: no effect, no event, no error.
    await service.return_stock("o-4")
    assert [e.type.name for e in await outbox.drain()] == ["stock.returned"]
    async with uow() as work:
        await service.commit_stock_for(work, "o-4")
        await work.commit()
    assert await outbox.drain() == []
    assert (await service.get_item("MUG")).available == 19

    async with uow() as work:  # rolled back: nothing
        await work.events.add(events_pb2.ItemLowStock(sku="MUG", available=1, threshold=5))
    assert await outbox.drain() == []


async def test_a_new_item_created_at_the_threshold_is_not_a_crossing(opened: Opened) -> None:
    database = await opened("inventory")
    service = InventoryService(
        functools.partial(SqlInventoryUnitOfWork, database), currency="USD", low_stock_threshold=5
    )
    outbox = Outbox(database, inventory_tables, "inventory")
    await service.create_item("CAP", "Cap", 100, 3)
    await service.reserve("o-1", [("CAP", 1)])
    assert [e.type.name for e in await outbox.drain()] == ["item.changed"]
    await service.update_item("CAP", None, None, 10)  # 12 available: above, re-armed
    await service.reserve("o-2", [("CAP", 7)])
    assert [e.type.name for e in await outbox.drain()] == ["item.changed", "item.low_stock"]


# -- loyalty ----------------------------------------------------------------------------------


async def test_loyalty_emits_points_tier_and_committed_events_once(opened: Opened) -> None:
    database = await opened("loyalty")
    uow = functools.partial(SqlLoyaltyUnitOfWork, database)
    tiers = Tiers({"standard": 0, "gold": 10}, "standard")
    service = LoyaltyService(uow, tiers=tiers, minor_units=100)
    outbox = Outbox(database, loyalty_tables, "loyalty")

    await service.set_tier("c-1", "gold")
    tier = only(await outbox.drain(), "tier.changed")
    assert (tier.customer_id, tier.tier, tier.previous_tier, tier.discount_percent) == (
        "c-1",
        "gold",
        "",
        10,
    )
    await service.set_tier("c-1", "gold")
    assert await outbox.drain() == []
    await service.set_tier("c-1", "standard")
    tier = only(await outbox.drain(), "tier.changed")
    assert (tier.tier, tier.previous_tier, tier.discount_percent) == ("standard", "gold", 0)

    await service.adjust_points("c-1", 500, "welcome", "adj-1")
    adjusted = only(await outbox.drain(), "points.changed")
    assert (adjusted.customer_id, adjusted.delta, adjusted.balance) == ("c-1", 500, 500)
    assert (adjusted.reason, adjusted.order_id) == ("adjusted", "")
    await service.adjust_points("c-1", 500, "welcome", "adj-1")  # the same key: a repeat
    assert await outbox.drain() == []

    await service.apply_discount("o-1", "c-1", 10_000, 100)
    redeemed = only(await outbox.drain(), "points.changed")
    assert (redeemed.delta, redeemed.balance, redeemed.reason, redeemed.order_id) == (
        -100,
        400,
        "redeemed",
        "o-1",
    )
    await service.apply_discount("o-1", "c-1", 10_000, 100)
    assert await outbox.drain() == []

    await service.commit_discount("o-1")  # total 9900: 99 points earned
    events = await outbox.drain()
    assert [e.type.name for e in events] == ["points.changed", "loyalty.committed"]
    earned, committed = data(events[0]), data(events[1])
    assert (earned.delta, earned.balance, earned.reason, earned.order_id) == (
        99,
        499,
        "earned",
        "o-1",
    )
    assert events[1].subject == "o-1"
    assert (committed.order_id, committed.customer_id, committed.balance) == ("o-1", "c-1", 499)
    assert (committed.points_earned, committed.points_redeemed) == (99, 100)
    await service.commit_discount("o-1")
    assert await outbox.drain() == []

    await service.refund_discount("o-1")
    events = await outbox.drain()
    assert [(data(e).reason, data(e).delta, data(e).balance) for e in events] == [
        ("refunded", 100, 599),
        ("revoked", -99, 500),
    ]
    # order.confirmed after the refund (cancelled first): no effect, no event.
    async with uow() as work:
        await service.commit_discount_for(work, "o-1")
        await work.commit()
    await service.refund_discount("o-1")
    assert await outbox.drain() == []

    await service.apply_discount("o-2", "c-1", 1000, 50)
    assert only(await outbox.drain(), "points.changed").reason == "redeemed"
    await service.void_discount("o-2")
    voided = only(await outbox.drain(), "points.changed")
    assert (voided.reason, voided.delta, voided.balance) == ("refunded", 50, 500)

    # A new customer's first order opens the account (at the default tier).
    await service.apply_discount("o-3", "c-2", 1000, 0)
    opened_tier = only(await outbox.drain(), "tier.changed")
    assert (opened_tier.customer_id, opened_tier.tier, opened_tier.previous_tier) == (
        "c-2",
        "standard",
        "",
    )


async def test_a_refund_that_fails_after_writing_an_event_writes_none(opened: Opened) -> None:
    """The refund books points.changed (refunded) and then fails to revoke points already
    spent: the whole transaction rolls back, its first event with it."""
    database = await opened("loyalty")
    tiers = Tiers({"standard": 0}, "standard")
    service = LoyaltyService(
        functools.partial(SqlLoyaltyUnitOfWork, database), tiers=tiers, minor_units=100
    )
    outbox = Outbox(database, loyalty_tables, "loyalty")
    await service.adjust_points("c-1", 10, "start")
    await service.apply_discount("o-1", "c-1", 10_000, 10)  # earns 99
    await service.commit_discount("o-1")
    await service.adjust_points("c-1", -99, "spent")
    await outbox.drain()
    with pytest.raises(NotCancellableError):
        await service.refund_discount("o-1")
    assert await outbox.drain() == []
    assert (await service.get_account("c-1")).points == 0
