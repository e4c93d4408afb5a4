"""The saga with fakes: a failure runs exactly the undo steps of the steps before it, reversed."""

from __future__ import annotations

import pytest

from orderflow.errors import (
    IdempotencyKeyReusedError,
    InsufficientPointsError,
    InvalidArgumentError,
    NotCancellableError,
    OrderflowError,
    OutOfStockError,
    ServiceUnavailableError,
)
from orderflow.gateway.ports import CANCELLED, CONFIRMED, PENDING, REJECTED, Line, NewOrder
from orderflow.gateway.saga import OrderSaga
from tests.fakes import Calls, FakeInventory, FakeLoyalty, FakeOrders, consume_order_confirmed

FORWARD = ["orders.create", "inventory.reserve", "loyalty.apply_discount", "orders.confirm"]
# What recovery calls for a CONFIRMED order whose events were lost.
FINISH = ["inventory.commit_stock", "loyalty.commit_discount", "orders.settle"]


def make(points: int = 500) -> tuple[OrderSaga, Calls, FakeOrders, FakeInventory, FakeLoyalty]:
    calls = Calls()
    orders = FakeOrders(calls)
    inventory = FakeInventory(calls, {"MUG-1": (1250, 10), "TEE-1": (2000, 5)})
    loyalty = FakeLoyalty(calls, {"c-1": points}, percent=10)
    saga = OrderSaga(orders, inventory, loyalty, lease_seconds=10)
    return saga, calls, orders, inventory, loyalty


def new_order(key: str = "k-1", redeem: int = 100, quantity: int = 2) -> NewOrder:
    return NewOrder(
        customer_id="c-1",
        lines=(Line("MUG-1", quantity), Line("TEE-1", 1)),
        redeem_points=redeem,
        idempotency_key=key,
        fingerprint="f",
        lease_owner="gw:1",
        lease_seconds=10,
    )


async def test_happy_path_confirms_with_exact_totals_and_leaves_the_rest_to_events() -> None:
    saga, calls, orders, inventory, loyalty = make()
    placed = await saga.place(new_order())
    order = placed.order
    assert placed.created
    # CONFIRMED and answered; the follow-ups are its events' (ADR 18), not the saga's.
    assert order.status == CONFIRMED and not order.settled and order.lease_owner == ""
    # subtotal 2*1250 + 2000 = 4500; 10% = 450; 100 points; total 3950; earns 39
    assert (order.subtotal, order.discount, order.points_redeemed, order.total) == (
        4500,
        450,
        100,
        3950,
    )
    assert order.points_earned == 39
    assert calls.log == FORWARD
    assert inventory.items["MUG-1"] == {"price": 1250, "available": 8, "reserved": 2, "sold": 0}
    assert loyalty.points["c-1"] == 500 - 100
    finished = await consume_order_confirmed(orders, inventory, loyalty, order.id)
    assert finished.settled
    assert inventory.items["MUG-1"] == {"price": 1250, "available": 8, "reserved": 0, "sold": 2}
    assert loyalty.points["c-1"] == 500 - 100 + 39


UNDO_CASES = [
    # (failing call, error, expected undo calls after orders.reject)
    ("inventory.reserve", OutOfStockError("out"), []),
    ("loyalty.apply_discount", InsufficientPointsError("no points"), ["inventory.release"]),
    (
        "orders.confirm",
        InvalidArgumentError("bad totals"),
        ["loyalty.void_discount", "inventory.release"],
    ),
    # No clear answer: the failed step may have acted, so it is undone as well.
    ("inventory.reserve", ServiceUnavailableError("down"), ["inventory.release"]),
    (
        "loyalty.apply_discount",
        ServiceUnavailableError("down"),
        ["loyalty.void_discount", "inventory.release"],
    ),
]


@pytest.mark.parametrize(("failing", "error", "undo"), UNDO_CASES)
async def test_failure_at_each_step_undoes_exactly_the_steps_before_it_in_reverse(
    failing: str, error: OrderflowError, undo: list[str]
) -> None:
    saga, calls, _orders, inventory, loyalty = make()
    calls.fail(failing, error)
    order = (await saga.place(new_order())).order
    upto = FORWARD.index(failing) + 1
    assert calls.log == [*FORWARD[:upto], "orders.reject", *undo, "orders.settle"]
    assert order.status == REJECTED and order.settled
    assert order.failure is not None and order.failure.code == error.code
    # Nothing is left held: stock all available, points as they were.
    assert inventory.items["MUG-1"]["available"] == 10
    assert inventory.items["MUG-1"]["reserved"] == 0
    assert loyalty.points["c-1"] == 500


async def test_recovery_rejecting_an_order_undoes_what_the_driver_before_it_did() -> None:
    """A gateway died after apply_discount (its confirm and reject never reached orders);
    recovery drives the order again and reserve fails this time: the first driver's
    discount is voided and its points come back (found by the chaos soak on PostgreSQL)."""
    saga, calls, orders, inventory, loyalty = make()
    calls.fail("orders.confirm", ServiceUnavailableError("gateway died"))
    calls.fail("orders.reject", ServiceUnavailableError("gateway died"))
    order = (await saga.place(new_order())).order
    assert order.status == PENDING
    assert loyalty.points["c-1"] == 400  # redeemed by the first driver
    calls.heal()
    calls.fail("inventory.reserve", ServiceUnavailableError("inventory slow"))
    (claimed,) = await orders.claim_stale("recovery", 10, 10)
    resumed = await saga.resume(claimed, "recovery")
    assert resumed.status == REJECTED and resumed.settled
    assert inventory.items["MUG-1"]["reserved"] == 0
    assert inventory.items["MUG-1"]["available"] == 10
    assert loyalty.applications[order.id][0] == "CANCELLED", loyalty.applications[order.id]
    assert loyalty.points["c-1"] == 500


async def test_orders_unreachable_at_confirm_leaves_the_order_to_recovery() -> None:
    saga, calls, orders, inventory, loyalty = make()
    calls.fail("orders.confirm", ServiceUnavailableError("down"))
    calls.fail("orders.reject", ServiceUnavailableError("down"))
    order = (await saga.place(new_order())).order
    assert order.status == PENDING and not order.settled
    # Once orders answers again, recovery drives the order forward (every step idempotent).
    calls.heal()
    (claimed,) = await orders.claim_stale("recovery", 10, 10)
    resumed = await saga.resume(claimed, "recovery")
    assert resumed.status == CONFIRMED and not resumed.settled  # its events finish it
    await consume_order_confirmed(orders, inventory, loyalty, order.id)
    assert inventory.items["MUG-1"]["sold"] == 2
    assert loyalty.points["c-1"] == 500 - 100 + 39
    assert (await orders.get_order(order.id)).settled


async def test_undo_that_cannot_run_now_is_finished_by_recovery() -> None:
    saga, calls, orders, inventory, loyalty = make()
    calls.fail("loyalty.apply_discount", ServiceUnavailableError("loyalty down"))
    calls.fail("loyalty.void_discount", ServiceUnavailableError("loyalty down"))
    order = (await saga.place(new_order())).order
    # REJECTED at once (the durable decision), stock released, the loyalty undo still owed.
    assert order.status == REJECTED and not order.settled
    assert inventory.items["MUG-1"]["reserved"] == 0
    calls.heal()
    calls.log.clear()
    (claimed,) = await orders.claim_stale("recovery", 10, 10)
    resumed = await saga.resume(claimed, "recovery")
    assert calls.log[1:] == ["loyalty.void_discount", "inventory.release", "orders.settle"]
    assert resumed.status == REJECTED and resumed.settled
    # The void left a tombstone: a late ApplyDiscount for this order is refused.
    assert loyalty.applications[order.id][0] == "CANCELLED"


async def test_confirmed_order_whose_events_were_lost_is_finished_by_recovery() -> None:
    saga, calls, orders, inventory, loyalty = make()
    order = (await saga.place(new_order())).order
    assert order.status == CONFIRMED and not order.settled
    # Within the events' grace recovery leaves it alone; after it, it finishes by calls.
    assert await orders.claim_stale("recovery", 10, 10) == []
    orders.events_grace_over = True
    (claimed,) = await orders.claim_stale("recovery", 10, 10)
    calls.log.clear()
    resumed = await saga.resume(claimed, "recovery")
    assert calls.log == FINISH
    assert resumed.settled
    assert inventory.items["MUG-1"]["sold"] == 2
    assert loyalty.points["c-1"] == 500 - 100 + 39


async def test_same_key_returns_the_existing_order_without_running_again() -> None:
    saga, calls, _orders, inventory, _loyalty = make()
    first = await saga.place(new_order())
    calls.log.clear()
    again = await saga.place(new_order())
    assert not again.created and again.order.id == first.order.id
    assert calls.log == ["orders.create"]
    assert inventory.items["MUG-1"]["reserved"] == 2  # one reservation


@pytest.mark.parametrize("consumed", [True, False], ids=["after-events", "before-events"])
async def test_cancel_refunds_returns_stock_then_cancels(consumed: bool) -> None:
    """Whether or not order.confirmed was consumed before the cancel: a late one has no
    effect, the stock and the points end as they were before the order."""
    saga, calls, orders, inventory, loyalty = make()
    order = (await saga.place(new_order())).order
    if consumed:
        await consume_order_confirmed(orders, inventory, loyalty, order.id)
    calls.log.clear()
    cancelled = await saga.cancel_order(order.id)
    assert calls.log == [
        "orders.request_cancel",
        "loyalty.refund_discount",
        "inventory.return",
        "orders.cancel",
    ]
    assert cancelled.status == CANCELLED and cancelled.settled
    if not consumed:  # the event comes late
        assert (await consume_order_confirmed(orders, inventory, loyalty, order.id)).settled
    assert inventory.items["MUG-1"] == {"price": 1250, "available": 10, "reserved": 0, "sold": 0}
    assert loyalty.points["c-1"] == 500
    # Cancelling again returns the same, with no further effect.
    calls.log.clear()
    assert (await saga.cancel_order(order.id)).status == CANCELLED
    assert calls.log == ["orders.request_cancel"]


async def test_cancel_refused_when_earned_points_were_spent_keeps_the_order() -> None:
    saga, calls, _orders, inventory, loyalty = make(points=0)
    order = (await saga.place(new_order(redeem=0))).order
    await consume_order_confirmed(_orders, inventory, loyalty, order.id)
    loyalty.points["c-1"] = 0  # the customer spent the points the order earned
    with pytest.raises(NotCancellableError):
        await saga.cancel_order(order.id)
    current = await _orders.get_order(order.id)
    assert current.status == CONFIRMED and not current.cancel_requested and current.settled
    assert inventory.items["MUG-1"]["sold"] == 2
    assert "inventory.return" not in calls.log


async def test_cancel_of_a_rejected_order_is_refused() -> None:
    saga, calls, _orders, _inventory, _loyalty = make()
    calls.fail("inventory.reserve", OutOfStockError("out"))
    order = (await saga.place(new_order())).order
    with pytest.raises(NotCancellableError):
        await saga.cancel_order(order.id)


def test_new_order_is_leased_to_a_new_driver_and_keyed_by_the_request() -> None:
    saga, *_ = make()
    lines = [Line("MUG-1", 2)]
    first = saga.new_order("c-1", lines, 0, idempotency_key="k-9", request='{"a":1}')
    second = saga.new_order("c-1", lines, 0, idempotency_key="k-9", request='{"a":1}')
    other = saga.new_order("c-1", lines, 0, idempotency_key="k-9", request='{"a":2}')
    assert first.fingerprint == second.fingerprint != other.fingerprint
    assert first.lease_owner != second.lease_owner
    assert first.lease_owner.startswith("gateway:") and first.lease_seconds == 10
    assert (first.customer_id, first.lines, first.idempotency_key) == ("c-1", (lines[0],), "k-9")
    # Without a client key each request gets a key of its own: a retry of CreateOrder
    # by the gateway reuses it, a new request does not.
    keyless = [saga.new_order("c-1", lines, 0, idempotency_key=None, request="r") for _ in "ab"]
    assert keyless[0].idempotency_key.startswith("gw-")
    assert keyless[0].idempotency_key != keyless[1].idempotency_key


async def test_same_key_with_another_request_is_refused() -> None:
    saga, _calls, _orders, inventory, _loyalty = make()
    lines = [Line("MUG-1", 1)]
    await saga.place(saga.new_order("c-1", lines, 0, idempotency_key="k", request="one"))
    with pytest.raises(IdempotencyKeyReusedError):
        await saga.place(saga.new_order("c-1", lines, 0, idempotency_key="k", request="two"))
    assert inventory.items["MUG-1"]["reserved"] == 1


def test_the_recovery_worker_leases_as_the_orders_service_counts_recovery() -> None:
    """orderflow_orders_stuck counts an order leased to a recovery worker by its owner's
    prefix (orders.domain.RECOVERY_OWNER_PREFIX, ADR 1): the gateway's worker must use it."""
    from orderflow.gateway.recovery import RecoveryWorker
    from orderflow.orders.domain import RECOVERY_OWNER_PREFIX

    saga, _, orders, _, _ = make()
    worker = RecoveryWorker(saga, orders, interval=1, batch=1, lease_seconds=10, step_seconds=1)
    assert worker.owner.startswith(RECOVERY_OWNER_PREFIX)
