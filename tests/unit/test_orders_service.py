"""OrdersService's use cases on a fake repository: the stored order after each call."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from orderflow.errors import (
    ConcurrentChangeError,
    IdempotencyKeyReusedError,
    InvalidArgumentError,
    InvalidStateError,
    LeaseHeldError,
    NotCancellableError,
    NotFoundError,
)
from orderflow.orders.domain import Failure, Order, OrderLine, OrderStatus, Totals
from orderflow.orders.service import OrdersService
from tests.unit.fake_uow import FakeOrdersStore

SECOND = 1_000_000
OWNER = "gw-a"
OTHER = "gw-b"
TOTALS = Totals(
    lines=(OrderLine("MUG-1", 2, 1250),),
    currency="EUR",
    subtotal=2500,
    discount=250,
    points_redeemed=0,
    total=2250,
    points_earned=22,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000 * SECOND

    def __call__(self) -> int:
        return self.now


def make() -> tuple[OrdersService, FakeOrdersStore, Clock]:
    store, clock, ids = FakeOrdersStore(), Clock(), itertools.count(1)
    service = OrdersService(store, clock=clock, new_id=lambda: f"o-{next(ids)}")
    return service, store, clock


async def create(service: OrdersService, key: str = "k-1", fingerprint: str = "f-1") -> Order:
    order, _ = await service.create_order("c-1", [("MUG-1", 2)], 0, key, fingerprint, OWNER, 10)
    return order


async def confirmed() -> tuple[OrdersService, FakeOrdersStore, Clock, Order]:
    service, store, clock = make()
    order = await create(service)
    return service, store, clock, await service.confirm_order(order.id, OWNER, TOTALS)


# -- create / get / list ---------------------------------------------------------------


async def test_create_order_is_pending_and_leased() -> None:
    service, store, clock = make()
    order, created = await service.create_order("c-1", [("MUG-1", 2)], 0, "k-1", "f-1", OWNER, 10)
    assert created
    assert (order.id, order.status, order.version) == ("o-1", OrderStatus.PENDING, 1)
    assert (order.lease_owner, order.lease_expires_us) == (OWNER, clock.now + 10 * SECOND)
    assert store.orders.rows["o-1"] == order
    assert await service.get_order("o-1") == order


async def test_create_order_repeated_with_its_key_returns_the_first() -> None:
    service, store, _ = make()
    first = await create(service)
    # another request with the key: the order, not its to drive
    again, created = await service.create_order(
        "c-1", [("MUG-1", 2)], 0, "k-1", "f-1", "gateway:other", 10
    )
    assert (again, created) == (first, False)
    # the same request repeated (its reply was lost): still its own to drive
    again, created = await service.create_order("c-1", [("MUG-1", 2)], 0, "k-1", "f-1", OWNER, 10)
    assert (again, created) == (first, True)
    with pytest.raises(IdempotencyKeyReusedError):
        await create(service, fingerprint="f-other")
    assert list(store.orders.rows) == ["o-1"]


async def test_get_order_unknown_and_bad_input() -> None:
    service, _, _ = make()
    with pytest.raises(NotFoundError):
        await service.get_order("o-9")
    with pytest.raises(InvalidArgumentError):
        await service.create_order("c-1", [], 0, "k", "f", OWNER, 10)


async def test_list_orders_newest_first_by_customer_and_status_with_cursor() -> None:
    service, _, clock = make()
    for n in range(3):
        clock.now += SECOND
        await create(service, key=f"k-{n}")
    await service.reject_order("o-2", OWNER, Failure("OUT_OF_STOCK", "none left"))

    page, cursor = await service.list_orders("c-1", "", 2, "")
    assert [o.id for o in page] == ["o-3", "o-2"] and cursor
    rest, end = await service.list_orders("c-1", "", 2, cursor)
    assert [o.id for o in rest] == ["o-1"] and end == ""
    rejected, _ = await service.list_orders("", "REJECTED", 10, "")
    assert [o.id for o in rejected] == ["o-2"]
    with pytest.raises(InvalidArgumentError):
        await service.list_orders("", "LOST", 10, "")


# -- confirm / reject ------------------------------------------------------------------


async def test_confirm_order_prices_it_once() -> None:
    service, store, _, order = await confirmed()
    assert (order.status, order.total, order.version) == (OrderStatus.CONFIRMED, 2250, 2)
    assert await service.confirm_order(order.id, OWNER, TOTALS) == order  # a repeat
    assert store.orders.rows[order.id] == order


async def test_confirm_order_by_another_driver_is_refused_while_leased() -> None:
    service, store, clock = make()
    order = await create(service)
    with pytest.raises(LeaseHeldError):
        await service.confirm_order(order.id, OTHER, TOTALS)
    assert store.orders.rows[order.id] == order
    clock.now += 11 * SECOND  # the lease ran out: anyone may finish the saga
    assert (await service.confirm_order(order.id, OTHER, TOTALS)).status == OrderStatus.CONFIRMED


async def test_reject_order_records_the_failure_and_refuses_a_confirm() -> None:
    service, store, _ = make()
    order = await create(service)
    rejected = await service.reject_order(order.id, OWNER, Failure("OUT_OF_STOCK", "none"))
    assert (rejected.status, rejected.failure) == (
        OrderStatus.REJECTED,
        Failure("OUT_OF_STOCK", "none"),
    )
    with pytest.raises(InvalidStateError):
        await service.confirm_order(order.id, OWNER, TOTALS)
    assert store.orders.rows[order.id] == rejected


async def test_a_change_racing_another_writer_is_a_concurrent_change() -> None:
    service, store, _ = make()
    order = await create(service)
    real_get = store.orders.get

    async def get_then_race(order_id: str, *, lock: bool = False) -> Order | None:
        read = await real_get(order_id, lock=lock)
        assert read is not None
        store.orders.rows[order_id] = replace(read, version=read.version + 1)  # another writer
        return read

    store.orders.get = get_then_race  # type: ignore[method-assign]
    with pytest.raises(ConcurrentChangeError):
        await service.confirm_order(order.id, OWNER, TOTALS)
    assert store.orders.rows[order.id].status == OrderStatus.PENDING
    assert store.rollbacks == 1


# -- cancel ----------------------------------------------------------------------------


async def test_cancel_order_after_a_request_and_not_before() -> None:
    service, store, _, order = await confirmed()
    with pytest.raises(InvalidStateError):
        await service.cancel_order(order.id, OWNER)

    requested = await service.request_cancel(order.id, OWNER, 10)
    assert requested.cancel_requested and not requested.settled
    cancelled = await service.cancel_order(order.id, OWNER)
    assert (cancelled.status, cancelled.settled, cancelled.lease_owner) == (
        OrderStatus.CANCELLED,
        True,
        "",
    )
    assert await service.cancel_order(order.id, OWNER) == cancelled
    assert store.orders.rows[order.id] == cancelled


async def test_request_cancel_of_a_pending_order_is_refused() -> None:
    service, _, _ = make()
    order = await create(service)
    with pytest.raises(NotCancellableError):
        await service.request_cancel(order.id, OWNER, 10)


async def test_withdraw_cancel_drops_the_request() -> None:
    service, store, _, order = await confirmed()
    await service.request_cancel(order.id, OWNER, 10)
    withdrawn = await service.withdraw_cancel(order.id, OWNER)
    assert not withdrawn.cancel_requested
    assert store.orders.rows[order.id].status == OrderStatus.CONFIRMED


# -- settle ----------------------------------------------------------------------------


async def test_settle_order_releases_the_lease_once() -> None:
    service, store, _, order = await confirmed()
    settled = await service.settle_order(order.id, OWNER)
    assert (settled.settled, settled.lease_owner, settled.version) == (True, "", 3)
    assert await service.settle_order(order.id, OWNER) == settled  # a repeat
    assert store.orders.rows[order.id] == settled


async def test_settle_order_refused_while_pending_or_leased_by_another() -> None:
    service, store, _ = make()
    order = await create(service)
    with pytest.raises(InvalidStateError):
        await service.settle_order(order.id, OWNER)
    await service.confirm_order(order.id, OWNER, TOTALS)
    await service.acquire_lease(order.id, OWNER, 10)  # e.g. a cancel driving it
    with pytest.raises(LeaseHeldError):
        await service.settle_order(order.id, OTHER)
    assert not store.orders.rows[order.id].settled


# -- acquire_lease / claim_stale -------------------------------------------------------


async def test_acquire_lease_only_when_free() -> None:
    service, _, clock = make()
    order = await create(service)
    with pytest.raises(LeaseHeldError):
        await service.acquire_lease(order.id, OTHER, 10)
    clock.now += 11 * SECOND
    leased = await service.acquire_lease(order.id, OTHER, 10)
    assert (leased.lease_owner, leased.lease_expires_us) == (OTHER, clock.now + 10 * SECOND)


async def test_claim_stale_takes_unsettled_orders_whose_lease_ran_out() -> None:
    service, store, clock = make()
    old = await create(service, key="k-1")
    clock.now += 5 * SECOND
    young = await create(service, key="k-2")
    done = await create(service, key="k-3")
    await service.reject_order(done.id, OWNER, Failure("X", "x"))
    await service.settle_order(done.id, OWNER)

    clock.now += 6 * SECOND  # old's lease ran out, young's did not
    assert await service.claim_stale(OTHER, 30, 10) == [store.orders.rows[old.id]]
    claimed = store.orders.rows[old.id]
    assert (claimed.lease_owner, claimed.version) == (OTHER, 2)
    assert store.orders.rows[young.id].lease_owner == OWNER

    clock.now += 10 * SECOND  # young's ran out too; old is leased to OTHER for 30 s
    assert [o.id for o in await service.claim_stale(OTHER, 30, 10)] == [young.id]
    assert await service.claim_stale(OTHER, 30, 10) == []


async def test_count_stuck_follows_an_order_past_its_lease_until_it_is_settled() -> None:
    """orderflow_orders_stuck's count: an order is stuck from when its driver's lease runs
    out, stays stuck while a recovery worker holds it, and is not once it is settled."""
    service, _, clock = make()
    none = {status: 0 for status in OrderStatus}
    order = await create(service)  # leased to its request for 10 s
    assert await service.count_stuck() == none

    clock.now += 11 * SECOND  # the request's lease ran out with the order PENDING
    assert await service.count_stuck() == {**none, OrderStatus.PENDING: 1}

    recovery = "recovery:a1"
    (claimed,) = await service.claim_stale(recovery, 30, 10)
    assert claimed.lease_owner == recovery
    assert await service.count_stuck() == {**none, OrderStatus.PENDING: 1}

    await service.reject_order(order.id, recovery, Failure("SERVICE_UNAVAILABLE", "down"))
    assert await service.count_stuck() == {**none, OrderStatus.REJECTED: 1}
    await service.settle_order(order.id, recovery)
    assert await service.count_stuck() == none


async def test_count_stuck_gives_a_confirmed_order_its_events_grace() -> None:
    service, _, clock, order = await confirmed()  # the lease is dropped at confirmation
    none = {status: 0 for status in OrderStatus}
    clock.now += 59 * SECOND  # its events have 60 s to settle it
    assert await service.count_stuck() == none
    clock.now += 1 * SECOND
    assert (order.status, order.lease_owner) == (OrderStatus.CONFIRMED, "")
    assert await service.count_stuck() == {**none, OrderStatus.CONFIRMED: 1}
