"""The orders gRPC service through its real stub, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orderflow.errors import OrderflowError
from orderflow.orders import domain, storage
from orderflow.orders.storage import SqlOrdersUnitOfWork
from orderflow.orders.v1 import orders_pb2 as pb
from orderflow.orders.v1 import orders_pb2_grpc as pb_grpc
from orderflow.platform.component import open_database
from orderflow.platform.db import now_us
from orderflow.validation import encode_cursor
from tests.integration.conftest import Serve
from tests.integration.grpc_checks import (
    STANDARD_SERVICES,
    T,
    assert_serving,
    error_code,
    error_details,
    fails,
    reflected_services,
    schema_diff,
)

SERVICE = "orderflow.orders.v1.OrderService"
OWNER = "driver-a"
OTHER = "driver-b"
SHORT = 0.2  # seconds: a lease that runs out during the test
EXPIRE = 0.35  # seconds to wait for a SHORT lease to run out
LINES = (("a", 2), ("b", 1))

# -- helpers ------------------------------------------------------------------------------


def saga_step(
    step_id: str,
    name: str,
    outcome: int = pb.STEP_OUTCOME_OK,
    started_us: int | None = None,
    duration_us: int = 1500,
    driver: int = pb.STEP_DRIVER_REQUEST,
    error: pb.Failure | None = None,
) -> pb.SagaStep:
    """A step as a driver reports it (started now unless told)."""
    msg = pb.SagaStep(step_id=step_id, name=name, outcome=outcome, driver=driver)  # type: ignore[arg-type]
    msg.started_at.FromMicroseconds(now_us() if started_us is None else started_us)
    msg.duration.FromMicroseconds(duration_us)
    if error is not None:
        msg.error.CopyFrom(error)
    return msg


def lines_pb(lines: tuple[tuple[str, int], ...], price: int = 0) -> list[pb.OrderLine]:
    return [pb.OrderLine(sku=s, quantity=q, unit_price=price) for s, q in lines]


def create_request(
    customer: str = "c-1",
    key: str = "",
    fingerprint: str = "fp",
    lines: tuple[tuple[str, int], ...] = LINES,
    owner: str = OWNER,
    lease: float = 30.0,
    redeem: int = 0,
) -> pb.CreateOrderRequest:
    return pb.CreateOrderRequest(
        customer_id=customer,
        lines=lines_pb(lines),
        redeem_points=redeem,
        idempotency_key=key,
        request_fingerprint=fingerprint,
        lease_owner=owner,
        lease_seconds=lease,
    )


def confirm_request(
    order: pb.Order, owner: str = OWNER, price: int = 100, discount: int = 0, points: int = 0
) -> pb.ConfirmOrderRequest:
    """Totals that add up: every unit at price, minus discount and points."""
    subtotal = sum(x.quantity * price for x in order.lines)
    return pb.ConfirmOrderRequest(
        order_id=order.id,
        lease_owner=owner,
        lines=[pb.OrderLine(sku=x.sku, quantity=x.quantity, unit_price=price) for x in order.lines],
        currency="USD",
        subtotal=subtotal,
        discount=discount,
        points_redeemed=points,
        total=subtotal - discount - points,
        points_earned=subtotal // 100,
    )


@dataclass
class Orders:
    stub: pb_grpc.OrderServiceStub
    channel: grpc.aio.Channel
    url: str

    async def create(self, **kwargs: Any) -> pb.Order:
        return (await self.stub.CreateOrder(create_request(**kwargs), timeout=T)).order

    async def get(self, order_id: str) -> pb.Order:
        return (await self.stub.GetOrder(pb.GetOrderRequest(order_id=order_id), timeout=T)).order

    async def confirm(self, order: pb.Order, owner: str = OWNER, **kwargs: Any) -> pb.Order:
        request = confirm_request(order, owner, **kwargs)
        return (await self.stub.ConfirmOrder(request, timeout=T)).order

    async def reject(
        self, order_id: str, owner: str = OWNER, code: str = "OUT_OF_STOCK", message: str = "no"
    ) -> pb.Order:
        request = pb.RejectOrderRequest(
            order_id=order_id, lease_owner=owner, failure=pb.Failure(code=code, message=message)
        )
        return (await self.stub.RejectOrder(request, timeout=T)).order

    async def acquire(self, order_id: str, owner: str = OWNER, lease: float = 30.0) -> pb.Order:
        request = pb.AcquireOrderLeaseRequest(
            order_id=order_id, lease_owner=owner, lease_seconds=lease
        )
        return (await self.stub.AcquireOrderLease(request, timeout=T)).order

    async def request_cancel(
        self, order_id: str, owner: str = OWNER, lease: float = 30.0
    ) -> pb.Order:
        request = pb.RequestOrderCancelRequest(
            order_id=order_id, lease_owner=owner, lease_seconds=lease
        )
        return (await self.stub.RequestOrderCancel(request, timeout=T)).order

    async def withdraw(self, order_id: str, owner: str = OWNER) -> pb.Order:
        request = pb.WithdrawOrderCancelRequest(order_id=order_id, lease_owner=owner)
        return (await self.stub.WithdrawOrderCancel(request, timeout=T)).order

    async def cancel(self, order_id: str, owner: str = OWNER) -> pb.Order:
        request = pb.CancelOrderRequest(order_id=order_id, lease_owner=owner)
        return (await self.stub.CancelOrder(request, timeout=T)).order

    async def settle(self, order_id: str, owner: str = OWNER) -> pb.Order:
        request = pb.SettleOrderRequest(order_id=order_id, lease_owner=owner)
        return (await self.stub.SettleOrder(request, timeout=T)).order

    async def claim(self, owner: str, limit: int, lease: float = 30.0) -> list[pb.Order]:
        request = pb.ClaimStaleOrdersRequest(lease_owner=owner, lease_seconds=lease, limit=limit)
        return list((await self.stub.ClaimStaleOrders(request, timeout=T)).orders)

    async def list_orders(self, **kwargs: Any) -> pb.ListOrdersResponse:
        return await self.stub.ListOrders(pb.ListOrdersRequest(**kwargs), timeout=T)

    async def snapshot(self) -> list[pb.Order]:
        """Every order (to show that a refused call changed nothing)."""
        return list((await self.list_orders(limit=100)).orders)


@pytest.fixture
async def orders(serve: Serve, make_db_url: Callable[[str], Awaitable[str]]) -> Orders:
    url = await make_db_url("orders")
    channel = await serve("orders", url)
    return Orders(pb_grpc.OrderServiceStub(channel), channel, url)


# -- create, get --------------------------------------------------------------------------


async def test_create_returns_a_pending_leased_order(orders: Orders) -> None:
    response = await orders.stub.CreateOrder(
        create_request(customer="c-1", key="k-1", redeem=50), timeout=T
    )
    assert response.created is True
    order = response.order
    assert order.id
    assert order.customer_id == "c-1"
    assert order.status == pb.ORDER_STATUS_PENDING
    assert [(x.sku, x.quantity, x.unit_price) for x in order.lines] == [("a", 2, 0), ("b", 1, 0)]
    assert order.redeem_points == 50
    assert (order.subtotal, order.total, order.points_redeemed) == (0, 0, 0)
    assert order.idempotency_key == "k-1"
    assert order.lease_owner == OWNER
    assert order.HasField("lease_expires_at")
    assert order.HasField("created_at") and order.HasField("updated_at")
    assert order.created_at == order.updated_at
    lease_us = order.lease_expires_at.ToMicroseconds() - order.created_at.ToMicroseconds()
    assert lease_us == 30_000_000
    assert not order.HasField("failure")
    assert (order.settled, order.cancel_requested) == (False, False)
    assert await orders.get(order.id) == order


async def test_create_without_a_key_makes_a_new_order_each_time(orders: Orders) -> None:
    first = await orders.create()
    second = await orders.create()
    assert first.id != second.id
    assert first.idempotency_key == second.idempotency_key == ""


async def test_create_with_the_same_key_three_times_makes_one_order(orders: Orders) -> None:
    responses = [
        await orders.stub.CreateOrder(
            create_request(customer="c-1", key="k-1", fingerprint="fp-1", owner=owner), timeout=T
        )
        for owner in (OWNER, "gateway:second", "gateway:third")
    ]
    assert [r.created for r in responses] == [True, False, False]
    assert responses[0].order == responses[1].order == responses[2].order
    # the first request again (a retry after its reply was lost): still its own to drive
    request = create_request(customer="c-1", key="k-1", fingerprint="fp-1", owner=OWNER)
    again = await orders.stub.CreateOrder(request, timeout=T)
    assert (again.created, again.order) == (True, responses[0].order)
    listed = (await orders.list_orders(customer_id="c-1")).orders
    assert [o.id for o in listed] == [responses[0].order.id]


async def test_same_key_with_another_fingerprint_is_refused(orders: Orders) -> None:
    first = await orders.create(customer="c-1", key="k-1", fingerprint="fp-1")
    error = await fails(
        orders.stub.CreateOrder(
            create_request(customer="c-1", key="k-1", fingerprint="fp-2"), timeout=T
        ),
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
    )
    assert error_details(error).get("order_id") == first.id
    assert [o.id for o in await orders.snapshot()] == [first.id]


async def test_same_key_for_another_customer_is_another_order(orders: Orders) -> None:
    first = await orders.create(customer="c-1", key="k-1")
    response = await orders.stub.CreateOrder(create_request(customer="c-2", key="k-1"), timeout=T)
    assert response.created is True
    assert response.order.id != first.id
    assert response.order.customer_id == "c-2"
    assert len(await orders.snapshot()) == 2


async def test_concurrent_creates_with_the_same_key_make_one_order(orders: Orders) -> None:
    # twenty requests (twenty lease owners) with one key
    responses = await asyncio.gather(
        *(
            orders.stub.CreateOrder(
                create_request(customer="c-1", key="k-storm", fingerprint="fp", owner=f"gw:{i}"),
                timeout=T,
            )
            for i in range(20)
        )
    )
    assert len({r.order.id for r in responses}) == 1
    assert sum(r.created for r in responses) == 1
    assert len(await orders.snapshot()) == 1


async def test_get_unknown_is_not_found(orders: Orders) -> None:
    error = await fails(
        orders.stub.GetOrder(pb.GetOrderRequest(order_id="no-such"), timeout=T),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
    )
    assert error_details(error).get("order_id") == "no-such"


# -- list ---------------------------------------------------------------------------------


async def test_list_newest_first_with_filters(orders: Orders) -> None:
    a1 = await orders.create(customer="c-a")
    b1 = await orders.create(customer="c-b")
    a2 = await orders.create(customer="c-a")
    await orders.confirm(a1)
    assert [o.id for o in (await orders.list_orders()).orders] == [a2.id, b1.id, a1.id]
    assert [o.id for o in (await orders.list_orders(customer_id="c-a")).orders] == [a2.id, a1.id]
    pending = await orders.list_orders(status=pb.ORDER_STATUS_PENDING)
    assert [o.id for o in pending.orders] == [a2.id, b1.id]
    confirmed = await orders.list_orders(status=pb.ORDER_STATUS_CONFIRMED)
    assert [o.id for o in confirmed.orders] == [a1.id]
    both = await orders.list_orders(customer_id="c-a", status=pb.ORDER_STATUS_PENDING)
    assert [o.id for o in both.orders] == [a2.id]
    assert not (await orders.list_orders(status=pb.ORDER_STATUS_CANCELLED)).orders
    assert not (await orders.list_orders(customer_id="nobody")).orders


async def test_list_pages_by_cursor(orders: Orders) -> None:
    created = [(await orders.create(customer=f"c-{n % 2}")).id for n in range(7)]
    pages: list[list[str]] = []
    cursor = ""
    while True:
        page = await orders.list_orders(limit=3, cursor=cursor)
        pages.append([o.id for o in page.orders])
        cursor = page.next_cursor
        if not cursor:
            break
        assert len(pages) < 10, "paging does not end"
    assert [len(p) for p in pages] == [3, 3, 1]
    flat = [i for p in pages for i in p]
    assert flat == created[::-1]
    assert len(set(flat)) == 7
    # An exact page has no further page; the default page holds all 7.
    assert (await orders.list_orders(limit=7)).next_cursor == ""
    assert len((await orders.list_orders()).orders) == 7
    # Paging within a customer.
    evens = [i for n, i in enumerate(created) if n % 2 == 0][::-1]
    first = await orders.list_orders(customer_id="c-0", limit=2)
    rest = await orders.list_orders(customer_id="c-0", limit=2, cursor=first.next_cursor)
    assert [o.id for o in first.orders] + [o.id for o in rest.orders] == evens
    assert rest.next_cursor == ""


@pytest.mark.parametrize(
    "request_",
    [
        pb.ListOrdersRequest(cursor="!!not-a-cursor!!"),
        pb.ListOrdersRequest(cursor="bm9jb2xvbg"),  # "nocolon"
        pb.ListOrdersRequest(cursor="x" * 600),
        pb.ListOrdersRequest(limit=101),
        pb.ListOrdersRequest(limit=-1),
        pb.ListOrdersRequest(status=99),  # type: ignore[arg-type]
        pb.ListOrdersRequest(customer_id="c" * 65),
    ],
    ids=[
        "garbage-cursor",
        "cursor-without-position",
        "long-cursor",
        "limit-101",
        "limit-neg",
        "status-99",
        "long-customer",
    ],
)
async def test_list_refuses_bad_input(orders: Orders, request_: pb.ListOrdersRequest) -> None:
    await orders.create()
    await fails(
        orders.stub.ListOrders(request_, timeout=T),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )


@pytest.mark.parametrize(
    "position", ["\u00b2:x", "9" * 30 + ":x"], ids=["superscript-two", "beyond-int64"]
)
async def test_list_refuses_a_forged_cursor(orders: Orders, position: str) -> None:
    await orders.create()
    await fails(
        orders.stub.ListOrders(pb.ListOrdersRequest(cursor=encode_cursor(position)), timeout=T),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )


# -- leases and compare-and-set -----------------------------------------------------------


async def test_confirm_by_the_owner_stores_prices_and_totals(orders: Orders) -> None:
    order = await orders.create(redeem=100)
    done = await orders.confirm(order, price=500, discount=50, points=100)
    assert done.status == pb.ORDER_STATUS_CONFIRMED
    assert [(x.sku, x.quantity, x.unit_price) for x in done.lines] == [
        ("a", 2, 500),
        ("b", 1, 500),
    ]
    assert (done.currency, done.subtotal, done.discount) == ("USD", 1500, 50)
    assert (done.points_redeemed, done.total, done.points_earned) == (100, 1350, 15)
    assert done.settled is False
    assert done.lease_owner == ""  # let go: its events finish it (ADR 18)
    assert done.updated_at.ToMicroseconds() >= order.updated_at.ToMicroseconds()
    assert await orders.get(order.id) == done
    again = await orders.confirm(order, price=500, discount=50, points=100)
    assert again == done


async def test_another_owner_is_refused_while_the_lease_is_live(orders: Orders) -> None:
    order = await orders.create()
    error = await fails(
        orders.stub.ConfirmOrder(confirm_request(order, OTHER), timeout=T),
        grpc.StatusCode.ABORTED,
        "LEASE_HELD",
    )
    assert error_details(error).get("lease_owner") == OWNER
    await fails(
        orders.stub.AcquireOrderLease(
            pb.AcquireOrderLeaseRequest(order_id=order.id, lease_owner=OTHER, lease_seconds=5),
            timeout=T,
        ),
        grpc.StatusCode.ABORTED,
        "LEASE_HELD",
    )
    await fails(
        orders.stub.RejectOrder(
            pb.RejectOrderRequest(
                order_id=order.id, lease_owner=OTHER, failure=pb.Failure(code="X")
            ),
            timeout=T,
        ),
        grpc.StatusCode.ABORTED,
        "LEASE_HELD",
    )
    assert await orders.get(order.id) == order


async def test_owner_renews_its_lease(orders: Orders) -> None:
    order = await orders.create(lease=SHORT)
    renewed = await orders.acquire(order.id, OWNER, lease=60)
    assert renewed.lease_owner == OWNER
    assert renewed.lease_expires_at.ToMicroseconds() > order.lease_expires_at.ToMicroseconds()
    await asyncio.sleep(EXPIRE)
    await fails(
        orders.stub.AcquireOrderLease(
            pb.AcquireOrderLeaseRequest(order_id=order.id, lease_owner=OTHER, lease_seconds=5),
            timeout=T,
        ),
        grpc.StatusCode.ABORTED,
        "LEASE_HELD",
    )


async def test_an_expired_lease_can_be_taken_by_another_owner(orders: Orders) -> None:
    order = await orders.create(lease=SHORT)
    await asyncio.sleep(EXPIRE)
    taken = await orders.acquire(order.id, OTHER, lease=30)
    assert taken.lease_owner == OTHER
    assert taken.status == pb.ORDER_STATUS_PENDING
    # Now the first owner is the one locked out.
    await fails(
        orders.stub.ConfirmOrder(confirm_request(order, OWNER), timeout=T),
        grpc.StatusCode.ABORTED,
        "LEASE_HELD",
    )
    done = await orders.confirm(order, OTHER)
    assert done.status == pb.ORDER_STATUS_CONFIRMED


async def test_confirm_with_totals_that_do_not_add_up_changes_nothing(orders: Orders) -> None:
    order = await orders.create(redeem=10)
    good = confirm_request(order)
    bad_requests = []
    for change in (
        {"subtotal": good.subtotal + 1, "total": good.total + 1},
        {"total": good.total - 1},
        {"points_redeemed": 11, "total": good.subtotal - 11},
        {"currency": "US"},
        {"lines": [pb.OrderLine(sku="a", quantity=2, unit_price=100)]},
        {"lines": [*good.lines, pb.OrderLine(sku="z", quantity=1, unit_price=0)]},
    ):
        request = pb.ConfirmOrderRequest()
        request.CopyFrom(good)
        for name, value in change.items():
            if name == "lines":
                del request.lines[:]
                request.lines.extend(value)  # type: ignore[arg-type]
            else:
                setattr(request, name, value)
        bad_requests.append(request)
    for request in bad_requests:
        await fails(
            orders.stub.ConfirmOrder(request, timeout=T),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        )
        assert await orders.get(order.id) == order


async def test_reject_then_confirm_is_an_invalid_state(orders: Orders) -> None:
    order = await orders.create()
    rejected = await orders.reject(order.id, code="OUT_OF_STOCK", message="sku a is sold out")
    assert rejected.status == pb.ORDER_STATUS_REJECTED
    assert rejected.failure == pb.Failure(code="OUT_OF_STOCK", message="sku a is sold out")
    assert rejected.settled is False
    assert await orders.get(order.id) == rejected
    await fails(
        orders.stub.ConfirmOrder(confirm_request(order), timeout=T),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE",
    )
    assert await orders.get(order.id) == rejected


async def test_reject_of_a_confirmed_order_is_an_invalid_state(orders: Orders) -> None:
    order = await orders.create()
    done = await orders.confirm(order)
    await fails(
        orders.stub.RejectOrder(
            pb.RejectOrderRequest(
                order_id=order.id, lease_owner=OWNER, failure=pb.Failure(code="X")
            ),
            timeout=T,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE",
    )
    assert await orders.get(order.id) == done


async def test_rejection_message_is_truncated(orders: Orders) -> None:
    order = await orders.create()
    rejected = await orders.reject(order.id, code="UPSTREAM_ERROR", message="m" * 700)
    assert rejected.failure.message == "m" * 500
    assert (await orders.get(order.id)).failure.message == "m" * 500


@pytest.mark.parametrize("method", ["ConfirmOrder", "SettleOrder", "CancelOrder"])
async def test_mutations_of_an_unknown_order_are_not_found(orders: Orders, method: str) -> None:
    requests = {
        "ConfirmOrder": pb.ConfirmOrderRequest(
            order_id="no-such", lease_owner=OWNER, currency="USD"
        ),
        "SettleOrder": pb.SettleOrderRequest(order_id="no-such", lease_owner=OWNER),
        "CancelOrder": pb.CancelOrderRequest(order_id="no-such", lease_owner=OWNER),
    }
    await fails(
        getattr(orders.stub, method)(requests[method], timeout=T),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
    )


# -- cancellation -------------------------------------------------------------------------


async def test_cancel_flow(orders: Orders) -> None:
    order = await orders.create()
    await fails(
        orders.stub.RequestOrderCancel(
            pb.RequestOrderCancelRequest(order_id=order.id, lease_owner=OWNER, lease_seconds=30),
            timeout=T,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "NOT_CANCELLABLE",
    )
    assert await orders.get(order.id) == order

    done = await orders.confirm(order)
    settled = await orders.settle(order.id)
    assert settled.lease_owner == ""
    requested = await orders.request_cancel(order.id, OTHER)
    assert requested.status == pb.ORDER_STATUS_CONFIRMED
    assert (requested.cancel_requested, requested.settled) == (True, False)
    assert requested.lease_owner == OTHER
    assert requested.total == done.total

    cancelled = await orders.cancel(order.id, OTHER)
    assert cancelled.status == pb.ORDER_STATUS_CANCELLED
    assert cancelled.settled is True
    assert cancelled.lease_owner == ""
    assert not cancelled.HasField("lease_expires_at")
    assert await orders.get(order.id) == cancelled

    # Once CANCELLED, repeating either call returns the order unchanged.
    assert await orders.request_cancel(order.id, OWNER) == cancelled
    assert await orders.cancel(order.id, OWNER) == cancelled
    assert await orders.get(order.id) == cancelled


async def test_request_cancel_of_a_rejected_order_is_not_cancellable(orders: Orders) -> None:
    order = await orders.create()
    rejected = await orders.reject(order.id)
    await fails(
        orders.stub.RequestOrderCancel(
            pb.RequestOrderCancelRequest(order_id=order.id, lease_owner=OWNER, lease_seconds=30),
            timeout=T,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "NOT_CANCELLABLE",
    )
    assert await orders.get(order.id) == rejected


async def test_withdraw_cancel_clears_the_request(orders: Orders) -> None:
    order = await orders.create()
    await orders.confirm(order)
    await orders.request_cancel(order.id)
    withdrawn = await orders.withdraw(order.id)
    assert withdrawn.status == pb.ORDER_STATUS_CONFIRMED
    assert withdrawn.cancel_requested is False
    assert await orders.get(order.id) == withdrawn
    # Without a request, cancelling is refused.
    await fails(
        orders.stub.CancelOrder(
            pb.CancelOrderRequest(order_id=order.id, lease_owner=OWNER), timeout=T
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE",
    )
    assert await orders.get(order.id) == withdrawn


@pytest.mark.parametrize("confirm", [False, True], ids=["pending", "confirmed"])
async def test_cancel_without_a_request_is_an_invalid_state(orders: Orders, confirm: bool) -> None:
    order = await orders.create()
    if confirm:
        order = await orders.confirm(order)
    await fails(
        orders.stub.CancelOrder(
            pb.CancelOrderRequest(order_id=order.id, lease_owner=OWNER), timeout=T
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE",
    )
    assert await orders.get(order.id) == order


# -- settle -------------------------------------------------------------------------------


async def test_settle(orders: Orders) -> None:
    order = await orders.create()
    await fails(
        orders.stub.SettleOrder(
            pb.SettleOrderRequest(order_id=order.id, lease_owner=OWNER), timeout=T
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE",
    )
    assert await orders.get(order.id) == order
    done = await orders.confirm(order)
    settled = await orders.settle(order.id)
    assert settled.settled is True
    assert settled.lease_owner == ""
    assert not settled.HasField("lease_expires_at")
    assert settled.status == pb.ORDER_STATUS_CONFIRMED
    assert settled.total == done.total
    assert await orders.settle(order.id) == settled
    assert await orders.settle(order.id, OTHER) == settled
    assert await orders.get(order.id) == settled


async def test_settle_of_a_rejected_order(orders: Orders) -> None:
    order = await orders.create()
    await orders.reject(order.id)
    settled = await orders.settle(order.id)
    assert (settled.status, settled.settled) == (pb.ORDER_STATUS_REJECTED, True)


# -- claiming stale orders ----------------------------------------------------------------


async def test_claim_stale_orders(orders: Orders) -> None:
    stale = [(await orders.create(lease=SHORT)).id for _ in range(5)]
    live = await orders.create(lease=60)
    finished = await orders.create(lease=SHORT)
    await orders.confirm(finished)
    await orders.settle(finished.id)
    await asyncio.sleep(EXPIRE)

    first = await orders.claim("worker-1", limit=2)
    assert [o.id for o in first] == stale[:2], "oldest first"
    for o in first:
        assert o.lease_owner == "worker-1"
        assert o.HasField("lease_expires_at")
        assert await orders.get(o.id) == o
    second = await orders.claim("worker-2", limit=100)
    assert sorted(o.id for o in second) == sorted(stale[2:])
    assert all(o.lease_owner == "worker-2" for o in second)
    assert await orders.claim("worker-3", limit=100) == []
    assert (await orders.get(live.id)).lease_owner == OWNER
    assert (await orders.get(finished.id)).settled is True
    assert (await orders.get(finished.id)).lease_owner == ""


async def test_claimed_orders_become_stale_again_when_the_claim_expires(orders: Orders) -> None:
    order = await orders.create(lease=SHORT)
    await asyncio.sleep(EXPIRE)
    assert [o.id for o in await orders.claim("worker-1", limit=10, lease=SHORT)] == [order.id]
    assert await orders.claim("worker-2", limit=10) == []
    await asyncio.sleep(EXPIRE)
    again = await orders.claim("worker-2", limit=10)
    assert [(o.id, o.lease_owner) for o in again] == [(order.id, "worker-2")]


async def test_concurrent_claimers_never_share_an_order(orders: Orders) -> None:
    ids = {(await orders.create(lease=SHORT)).id for _ in range(30)}
    await asyncio.sleep(EXPIRE)
    claimed_a, claimed_b = await asyncio.gather(
        orders.claim("worker-a", limit=100), orders.claim("worker-b", limit=100)
    )
    a = [o.id for o in claimed_a]
    b = [o.id for o in claimed_b]
    assert len(a) == len(set(a)) and len(b) == len(set(b))
    assert not set(a) & set(b)
    assert set(a) | set(b) == ids
    for order in await orders.snapshot():
        expected = "worker-a" if order.id in a else "worker-b"
        assert order.lease_owner == expected


# -- idempotency --------------------------------------------------------------------------


async def _pending(orders: Orders) -> pb.Order:
    return await orders.create()


async def _confirmed(orders: Orders) -> pb.Order:
    return await orders.confirm(await orders.create())


async def _cancel_requested(orders: Orders) -> pb.Order:
    order = await _confirmed(orders)
    return await orders.request_cancel(order.id)


IDEMPOTENT: list[tuple[str, Callable[[Orders], Awaitable[pb.Order]], Any]] = [
    ("confirm", _pending, lambda s, o: s.confirm(o)),
    ("reject", _pending, lambda s, o: s.reject(o.id)),
    ("request-cancel", _confirmed, lambda s, o: s.request_cancel(o.id)),
    ("cancel", _cancel_requested, lambda s, o: s.cancel(o.id)),
    ("settle", _confirmed, lambda s, o: s.settle(o.id)),
    ("withdraw", _cancel_requested, lambda s, o: s.withdraw(o.id)),
]


def _without_lease_renewal(order: pb.Order) -> pb.Order:
    copy = pb.Order()
    copy.CopyFrom(order)
    copy.ClearField("updated_at")
    copy.ClearField("lease_expires_at")
    return copy


@pytest.mark.parametrize(("name", "prepare", "call"), IDEMPOTENT, ids=[x[0] for x in IDEMPOTENT])
async def test_every_mutation_three_times_has_the_effect_of_once(
    orders: Orders,
    name: str,
    prepare: Callable[[Orders], Awaitable[pb.Order]],
    call: Callable[[Orders, pb.Order], Awaitable[pb.Order]],
) -> None:
    order = await prepare(orders)
    first = await call(orders, order)
    assert first != order, "the first call changes the order"
    second = await call(orders, order)
    third = await call(orders, order)
    stored = await orders.get(order.id)
    assert len(await orders.snapshot()) == 1
    if name == "request-cancel":
        # A repeated cancellation request by the lease holder renews its lease (like
        # AcquireOrderLease); everything else stays as the first call left it.
        for later in (second, third, stored):
            assert _without_lease_renewal(later) == _without_lease_renewal(first)
        assert third.lease_expires_at.ToMicroseconds() >= first.lease_expires_at.ToMicroseconds()
        assert stored == third
        return
    assert second == first
    assert third == first
    assert stored == first


# -- bad input ----------------------------------------------------------------------------

LONG = "x" * 65
ID = "{id}"  # replaced by the id of an existing order


def _bad_calls() -> list[tuple[str, str, Any]]:
    def owner_calls(
        method: str, make: Callable[..., Any], **extra: Any
    ) -> list[tuple[str, str, Any]]:
        return [
            (f"{method} empty id", method, make(order_id="", lease_owner=OWNER, **extra)),
            (f"{method} long id", method, make(order_id=LONG, lease_owner=OWNER, **extra)),
            (f"{method} padded id", method, make(order_id=" p ", lease_owner=OWNER, **extra)),
            (f"{method} empty owner", method, make(order_id=ID, lease_owner="", **extra)),
            (f"{method} long owner", method, make(order_id=ID, lease_owner="o" * 129, **extra)),
        ]

    lease = {"lease_seconds": 30.0}
    calls: list[tuple[str, str, Any]] = [
        ("create empty customer", "CreateOrder", create_request(customer="")),
        ("create long customer", "CreateOrder", create_request(customer=LONG)),
        ("create no lines", "CreateOrder", create_request(lines=())),
        ("create quantity 0", "CreateOrder", create_request(lines=(("a", 0),))),
        ("create quantity 10001", "CreateOrder", create_request(lines=(("a", 10_001),))),
        ("create dup skus", "CreateOrder", create_request(lines=(("a", 1), ("a", 2)))),
        ("create bad sku", "CreateOrder", create_request(lines=(("a b", 1),))),
        ("create lease 0", "CreateOrder", create_request(lease=0)),
        ("create lease 3601", "CreateOrder", create_request(lease=3601)),
        ("create empty owner", "CreateOrder", create_request(owner="")),
        ("create long key", "CreateOrder", create_request(key="k" * 256)),
        ("create long fingerprint", "CreateOrder", create_request(fingerprint="f" * 129)),
        ("create negative points", "CreateOrder", create_request(redeem=-1)),
        ("get empty id", "GetOrder", pb.GetOrderRequest(order_id="")),
        ("get long id", "GetOrder", pb.GetOrderRequest(order_id=LONG)),
        ("list status 99", "ListOrders", pb.ListOrdersRequest(status=99)),  # type: ignore[arg-type]
        ("list limit 101", "ListOrders", pb.ListOrdersRequest(limit=101)),
        ("list bad cursor", "ListOrders", pb.ListOrdersRequest(cursor="%%%")),
        ("list long customer", "ListOrders", pb.ListOrdersRequest(customer_id=LONG)),
        *owner_calls("AcquireOrderLease", pb.AcquireOrderLeaseRequest, **lease),
        (
            "acquire lease 0",
            "AcquireOrderLease",
            pb.AcquireOrderLeaseRequest(order_id=ID, lease_owner=OWNER, lease_seconds=0),
        ),
        *owner_calls("ConfirmOrder", pb.ConfirmOrderRequest, currency="USD"),
        (
            "confirm without lines",
            "ConfirmOrder",
            pb.ConfirmOrderRequest(order_id=ID, lease_owner=OWNER, currency="USD"),
        ),
        *owner_calls("RejectOrder", pb.RejectOrderRequest, failure=pb.Failure(code="X")),
        (
            "reject without a code",
            "RejectOrder",
            pb.RejectOrderRequest(
                order_id=ID, lease_owner=OWNER, failure=pb.Failure(message="why")
            ),
        ),
        *owner_calls("RequestOrderCancel", pb.RequestOrderCancelRequest, **lease),
        (
            "request cancel lease 0",
            "RequestOrderCancel",
            pb.RequestOrderCancelRequest(order_id=ID, lease_owner=OWNER, lease_seconds=0),
        ),
        *owner_calls("WithdrawOrderCancel", pb.WithdrawOrderCancelRequest),
        *owner_calls("CancelOrder", pb.CancelOrderRequest),
        *owner_calls("SettleOrder", pb.SettleOrderRequest),
        (
            "claim limit 0",
            "ClaimStaleOrders",
            pb.ClaimStaleOrdersRequest(lease_owner="w", lease_seconds=30, limit=0),
        ),
        (
            "claim limit 101",
            "ClaimStaleOrders",
            pb.ClaimStaleOrdersRequest(lease_owner="w", lease_seconds=30, limit=101),
        ),
        (
            "claim lease 0",
            "ClaimStaleOrders",
            pb.ClaimStaleOrdersRequest(lease_owner="w", lease_seconds=0, limit=10),
        ),
        (
            "claim empty owner",
            "ClaimStaleOrders",
            pb.ClaimStaleOrdersRequest(lease_owner="", lease_seconds=30, limit=10),
        ),
        ("history empty id", "GetOrderHistory", pb.GetOrderHistoryRequest(order_id="")),
        ("unsettled limit", "ListUnsettledOrders", pb.ListUnsettledOrdersRequest(limit=101)),
        ("unsettled negative", "ListUnsettledOrders", pb.ListUnsettledOrdersRequest(limit=-1)),
        ("backlog limit", "GetEventsBacklog", pb.GetEventsBacklogRequest(limit=101)),
        ("backlog negative", "GetEventsBacklog", pb.GetEventsBacklogRequest(limit=-1)),
        ("history long id", "GetOrderHistory", pb.GetOrderHistoryRequest(order_id=LONG)),
        ("record empty id", "RecordOrderSteps", pb.RecordOrderStepsRequest(order_id="")),
        (
            "record a step without an id",
            "RecordOrderSteps",
            pb.RecordOrderStepsRequest(order_id=ID, steps=[saga_step("", "reserve")]),
        ),
        (
            "record a failed step without its error",
            "RecordOrderSteps",
            pb.RecordOrderStepsRequest(
                order_id=ID, steps=[saga_step("s.1", "reserve", pb.STEP_OUTCOME_FAILED)]
            ),
        ),
        (
            "record a step without a time",
            "RecordOrderSteps",
            pb.RecordOrderStepsRequest(
                order_id=ID, steps=[pb.SagaStep(step_id="s.1", name="reserve")]
            ),
        ),
        (
            "settle with a nameless step",
            "SettleOrder",
            pb.SettleOrderRequest(order_id=ID, lease_owner=OWNER, steps=[saga_step("s.1", "")]),
        ),
    ]
    return calls


async def test_bad_input_on_every_rpc_is_refused_and_changes_nothing(orders: Orders) -> None:
    pending = await orders.create(customer="c-1", key="k-1", lease=SHORT)
    other = await orders.create(customer="c-2", lease=SHORT)
    await orders.confirm(other)
    await orders.request_cancel(other.id, lease=SHORT)
    await asyncio.sleep(EXPIRE)  # both are stale: a refused claim would have taken them
    before = await orders.snapshot()
    methods = set()
    for label, method, template in _bad_calls():
        request = type(template)()
        request.CopyFrom(template)
        if getattr(request, "order_id", None) == ID:
            request.order_id = pending.id if method != "WithdrawOrderCancel" else other.id
        methods.add(method)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await getattr(orders.stub, method)(request, timeout=T)
        error = info.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (label, error.details())
        assert error_code(error) == "INVALID_ARGUMENT", label
        assert error.details(), label
        assert error_details(error).get("field"), label
    assert methods == set(pb.DESCRIPTOR.services_by_name["OrderService"].methods_by_name)
    assert await orders.snapshot() == before


# -- health, reflection, migrations -------------------------------------------------------


async def test_health_reports_serving(orders: Orders) -> None:
    await assert_serving(orders.channel, SERVICE)
    health = health_pb2_grpc.HealthStub(orders.channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await health.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=T)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_the_services(orders: Orders) -> None:
    assert {SERVICE, *STANDARD_SERVICES} <= await reflected_services(orders.channel)


async def test_migrations_match_the_models(orders: Orders) -> None:
    # The service is running, so its migrations have been applied.
    await orders.create()
    assert await schema_diff(orders.url, storage.metadata) == []


# -- SQL that restates a domain rule agrees with it in every case -------------------------

NOW_US = 2_000_000_000
# (lease_owner, lease_expires_us) around NOW_US, seen by OWNER: held by OWNER, held by
# OTHER, ran out exactly now, long gone, none, none with a leftover expiry, held by a
# recovery worker, one whose lease ran out.
RECOVERY = f"{domain.RECOVERY_OWNER_PREFIX}r1"
LEASES = [
    (OWNER, NOW_US + 1),
    (OTHER, NOW_US + 1),
    (OTHER, NOW_US),
    (OTHER, 1),
    ("", 0),
    ("", NOW_US + 1),
    (RECOVERY, NOW_US + 1),
    (RECOVERY, 1),
]


# A CONFIRMED order is stale only once its events had GRACE_US to settle it: last changed
# long ago, exactly GRACE_US ago, or just inside it.
GRACE_US = 1_000
UPDATED = [1, NOW_US - GRACE_US, NOW_US - GRACE_US + 1]


def every_order() -> list[domain.Order]:
    """One order per status x settled x lease (LEASES) x cancel requested x last change."""
    made = []
    for n, (status, settled, (owner, expires), cancel, updated) in enumerate(
        itertools.product(domain.OrderStatus, (False, True), LEASES, (False, True), UPDATED)
    ):
        made.append(
            domain.Order(
                id=f"o-{n}",
                customer_id="c-1",
                status=status,
                lines=(domain.OrderLine("a", 1, 100),),
                currency="EUR",
                subtotal=100,
                discount=0,
                redeem_points=0,
                points_redeemed=0,
                total=100,
                points_earned=1,
                failure=None,
                idempotency_key="",
                request_fingerprint="fp",
                settled=settled,
                cancel_requested=cancel,
                lease_owner=owner,
                lease_expires_us=expires,
                created_us=n,
                updated_us=updated,
                version=1,
            )
        )
    return made


@pytest.fixture
async def seeded(
    make_db_url: Callable[[str], Awaitable[str]],
) -> AsyncIterator[tuple[Callable[..., SqlOrdersUnitOfWork], list[domain.Order]]]:
    database = await open_database(await make_db_url("orders"), 2, "orders", migrate=True)
    uow = functools.partial(SqlOrdersUnitOfWork, database)
    made = every_order()
    async with uow() as seeding:
        for order in made:
            assert await seeding.orders.add(order)
        await seeding.commit()
    yield uow, made
    await database.dispose()


def domain_settles(order: domain.Order) -> domain.Order | None:
    """What domain.settle makes of order for OWNER at NOW_US, if it changes it."""
    try:
        settled = domain.settle(order, OWNER, NOW_US)
    except OrderflowError:
        return None
    return None if settled is order else settled


async def test_the_settle_statement_agrees_with_domain_settle(
    seeded: tuple[Callable[..., SqlOrdersUnitOfWork], list[domain.Order]],
) -> None:
    """SqlOrderRepository.settle (the fast path) restates domain.settle: it must settle
    exactly the orders the domain would, into the same order."""
    uow, made = seeded
    assert any(map(domain_settles, made)) and not all(map(domain_settles, made))
    async with uow() as work:
        for order in made:
            assert await work.orders.settle(order.id, OWNER, NOW_US) == domain_settles(order), order


async def test_the_stale_query_agrees_with_domain_is_stale(
    seeded: tuple[Callable[..., SqlOrdersUnitOfWork], list[domain.Order]],
) -> None:
    """SqlOrderRepository.stale restates domain.is_stale: it must find exactly those."""
    uow, made = seeded
    async with uow() as work:
        found = await work.orders.stale(NOW_US, len(made), GRACE_US)
    stale = sorted(o.id for o in made if domain.is_stale(o, NOW_US, GRACE_US))
    assert sorted(o.id for o in found) == stale
    assert stale and len(stale) < len(made)
    # The grace decides for some CONFIRMED orders both ways.
    confirmed = [o for o in made if o.status == domain.OrderStatus.CONFIRMED]
    assert any(domain.is_stale(o, NOW_US, GRACE_US) for o in confirmed)
    assert any(
        domain.is_stale(o, NOW_US) and not domain.is_stale(o, NOW_US, GRACE_US) for o in confirmed
    )


async def test_the_stuck_count_agrees_with_domain_is_stuck(
    seeded: tuple[Callable[..., SqlOrdersUnitOfWork], list[domain.Order]],
) -> None:
    """SqlOrderRepository.count_stuck restates domain.is_stuck: it must count exactly those,
    by status."""
    uow, made = seeded
    async with uow(readonly=True) as work:
        counted = await work.orders.count_stuck(NOW_US, GRACE_US)
    expected = collections.Counter(o.status for o in made if domain.is_stuck(o, NOW_US, GRACE_US))
    assert counted == dict(expected)
    # Both ways for some orders: a live lease held by a recovery worker counts, by anyone
    # else it does not; and the grace decides for some CONFIRMED ones.
    held = [o for o in made if not o.settled and o.lease_expires_us > NOW_US]
    assert any(domain.is_stuck(o, NOW_US, GRACE_US) for o in held)
    assert not all(domain.is_stuck(o, NOW_US, GRACE_US) for o in held)
    assert any(
        domain.is_stuck(o, NOW_US) and not domain.is_stuck(o, NOW_US, GRACE_US)
        for o in made
        if o.lease_owner != RECOVERY
    )


# -- the saga's step log (ADR 26) ---------------------------------------------------------


def _names(response: pb.GetOrderHistoryResponse) -> list[tuple[str, str, str]]:
    return [
        (
            s.name,
            pb.StepOutcome.Name(s.outcome).removeprefix("STEP_OUTCOME_"),
            pb.StepDriver.Name(s.driver).removeprefix("STEP_DRIVER_"),
        )
        for s in response.steps
    ]


async def _history(orders: Orders, order_id: str) -> pb.GetOrderHistoryResponse:
    return await orders.stub.GetOrderHistory(
        pb.GetOrderHistoryRequest(order_id=order_id), timeout=T
    )


async def test_each_change_logs_its_step_with_the_steps_its_driver_reports(
    orders: Orders,
) -> None:
    order = await orders.create()
    created = order.created_at.ToMicroseconds()
    out = pb.Failure(code="OUT_OF_STOCK", message="a: 1 available")
    reported = [
        saga_step("r.1", "reserve", started_us=created + 10, duration_us=4000),
        saga_step("r.2", "apply_discount", started_us=created + 20, duration_us=3000),
    ]
    request = confirm_request(order)
    request.steps.extend(reported)
    await orders.stub.ConfirmOrder(request, timeout=T)
    await orders.stub.ConfirmOrder(request, timeout=T)  # a retry: recorded once
    history = await _history(orders, order.id)
    assert history.order.status == pb.ORDER_STATUS_CONFIRMED and not history.truncated
    assert _names(history) == [
        ("create", "OK", "REQUEST"),
        ("reserve", "OK", "REQUEST"),
        ("apply_discount", "OK", "REQUEST"),
        ("confirm", "OK", "REQUEST"),
    ]
    reserve = history.steps[1]
    assert reserve.started_at.ToMicroseconds() == created + 10
    assert reserve.duration.ToMicroseconds() == 4000
    assert not reserve.HasField("error")
    # The cancel saga, with a failed step reported on its own.
    await orders.request_cancel(order.id)
    await orders.stub.RecordOrderSteps(
        pb.RecordOrderStepsRequest(
            order_id=order.id,
            steps=[
                saga_step(
                    "c.1", "return_stock", pb.STEP_OUTCOME_UNKNOWN, started_us=now_us(), error=out
                )
            ],
        ),
        timeout=T,
    )
    cancel = pb.CancelOrderRequest(
        order_id=order.id,
        lease_owner=OWNER,
        driver=pb.STEP_DRIVER_RECOVERY,
        steps=[saga_step("c.2", "return_stock", started_us=now_us())],
    )
    await orders.stub.CancelOrder(cancel, timeout=T)
    history = await _history(orders, order.id)
    assert _names(history)[4:] == [
        ("request_cancel", "OK", "REQUEST"),
        ("return_stock", "UNKNOWN", "REQUEST"),
        ("return_stock", "OK", "REQUEST"),
        ("cancel", "OK", "RECOVERY"),
    ]
    assert history.steps[5].error == out
    times = [s.started_at.ToMicroseconds() for s in history.steps]
    assert times == sorted(times)


async def test_a_change_that_is_refused_logs_none_of_the_steps_it_carried(
    orders: Orders,
) -> None:
    order = await orders.create()
    before = _names(await _history(orders, order.id))
    reject = pb.RejectOrderRequest(
        order_id=order.id,
        lease_owner=OTHER,  # OWNER holds the lease
        failure=pb.Failure(code="OUT_OF_STOCK"),
        steps=[saga_step("r.1", "reserve")],
    )
    await fails(orders.stub.RejectOrder(reject, timeout=T), grpc.StatusCode.ABORTED, "LEASE_HELD")
    bad_totals = confirm_request(order, discount=10**6)
    bad_totals.steps.append(saga_step("r.2", "reserve"))
    await fails(
        orders.stub.ConfirmOrder(bad_totals, timeout=T),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert _names(await _history(orders, order.id)) == before == [("create", "OK", "REQUEST")]


async def test_history_of_an_unknown_order_is_not_found(orders: Orders) -> None:
    await fails(
        orders.stub.GetOrderHistory(pb.GetOrderHistoryRequest(order_id="no-such"), timeout=T),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
    )
    await fails(
        orders.stub.RecordOrderSteps(
            pb.RecordOrderStepsRequest(order_id="no-such", steps=[saga_step("s", "reserve")]),
            timeout=T,
        ),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
    )


async def test_claims_and_settles_are_logged(orders: Orders) -> None:
    order = await orders.create(lease=SHORT)
    await asyncio.sleep(EXPIRE)
    (claimed,) = await orders.claim("recovery:1", 10)
    await orders.reject(claimed.id, owner="recovery:1")
    settle = pb.SettleOrderRequest(
        order_id=order.id,
        lease_owner="recovery:1",
        driver=pb.STEP_DRIVER_RECOVERY,
        steps=[saga_step("u.1", "release", driver=pb.STEP_DRIVER_RECOVERY)],
    )
    await orders.stub.SettleOrder(settle, timeout=T)  # the one-statement settle
    assert _names(await _history(orders, order.id)) == [
        ("create", "OK", "REQUEST"),
        ("claim", "OK", "RECOVERY"),
        ("reject", "OK", "REQUEST"),
        ("release", "OK", "RECOVERY"),
        ("settle", "OK", "RECOVERY"),
    ]


async def test_a_step_is_kept_exactly_when_its_change_is(
    make_db_url: Callable[[str], Awaitable[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step and the change share one transaction: if writing the step fails after the
    order was written, the order's change is undone too; a rolled-back unit of work leaves
    neither."""
    from orderflow.orders.service import OrdersService

    database = await open_database(await make_db_url("orders"), 2, "orders", migrate=True)
    try:
        uow = functools.partial(SqlOrdersUnitOfWork, database)
        service = OrdersService(uow)
        order, _ = await service.create_order("c-1", [("a", 1)], 0, "", "fp", OWNER, 30)
        totals = domain.Totals((domain.OrderLine("a", 1, 100),), "USD", 100, 0, 0, 100, 1)

        # A rolled-back unit of work: the order's change and its step both vanish.
        async with uow() as work:
            read = await work.orders.get(order.id, lock=True)
            assert read is not None
            await work.orders.save(domain.confirm(read, OWNER, totals, read.updated_us), read)
            step = domain.own_step(read, "confirm", domain.Driver.REQUEST, 1, 2, None)
            await work.steps.add(order.id, [step])
        # The step is written, then the transaction fails: nothing is kept.
        real_add = storage.SqlStepRepository.add

        async def add_then_fail(self: storage.SqlStepRepository, *args: Any) -> None:
            await real_add(self, *args)
            raise RuntimeError("the database went away")

        monkeypatch.setattr(storage.SqlStepRepository, "add", add_then_fail)
        with pytest.raises(RuntimeError):
            await service.confirm_order(order.id, OWNER, totals)
        monkeypatch.undo()

        stored, steps, _ = await service.order_history(order.id)
        assert stored.status == domain.OrderStatus.PENDING and stored.version == 1
        assert [s.name for s in steps] == ["create"]
        await service.confirm_order(order.id, OWNER, totals)
        _, steps, _ = await service.order_history(order.id)
        assert [s.name for s in steps] == ["create", "confirm"]
    finally:
        await database.dispose()


# -- what an operator reads (the console) ---------------------------------------------------


async def test_list_unsettled_reads_oldest_first_and_claims_nothing(orders: Orders) -> None:
    made = [
        (await orders.stub.CreateOrder(create_request(key=f"u-{i}"), timeout=T)).order
        for i in range(3)
    ]
    rejected = await orders.reject(made[1].id)
    await orders.settle(rejected.id)  # settled: no longer listed
    request = pb.ListUnsettledOrdersRequest(limit=1)
    first = await orders.stub.ListUnsettledOrders(request, timeout=T)
    assert [o.id for o in first.orders] == [made[0].id] and first.truncated
    found = await orders.stub.ListUnsettledOrders(pb.ListUnsettledOrdersRequest(), timeout=T)
    assert [o.id for o in found.orders] == [made[0].id, made[2].id]
    assert not found.truncated
    # Read, not claimed: each is still its creator's, unchanged; none is stuck while its
    # creator's lease lasts.
    assert list(found.orders) == [await orders.get(made[0].id), await orders.get(made[2].id)]
    assert all(o.lease_owner == OWNER for o in found.orders)
    assert list(found.stuck_order_ids) == []
    short = (await orders.stub.CreateOrder(create_request(key="short", lease=0.1), timeout=T)).order
    await asyncio.sleep(0.2)  # its lease ran out, nobody settled it: stuck (is_stuck)
    found = await orders.stub.ListUnsettledOrders(pb.ListUnsettledOrdersRequest(), timeout=T)
    assert list(found.stuck_order_ids) == [short.id]
    assert (await orders.get(short.id)).lease_owner == OWNER  # still not claimed
