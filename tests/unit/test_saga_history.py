"""The saga's step log with fakes: what the gateway reports to orders, with which call, and
what an order's history then shows (ADR 26)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orderflow.errors import (
    InsufficientPointsError,
    LeaseHeldError,
    NotCancellableError,
    OutOfStockError,
    ServiceUnavailableError,
)
from orderflow.gateway.ports import FAILED, OK, RECOVERY, REQUEST, UNKNOWN
from orderflow.gateway.saga import MAX_REPORT, OrderSaga, Run
from tests.fakes import consume_order_confirmed
from tests.unit.test_saga import FORWARD, make, new_order

EVENT = "event"


async def test_a_confirmed_order_is_logged_step_by_step_with_no_extra_call() -> None:
    saga, calls, orders, inventory, loyalty = make()
    order = (await saga.place(new_order())).order
    # The steps ran on inventory and loyalty went with ConfirmOrder: no call of their own.
    assert calls.log == FORWARD
    await consume_order_confirmed(orders, inventory, loyalty, order.id)
    assert orders.history(order.id) == [
        ("create", OK, REQUEST),
        ("reserve", OK, REQUEST),
        ("apply_discount", OK, REQUEST),
        ("confirm", OK, REQUEST),
        ("commit_stock", OK, EVENT),
        ("commit_discount", OK, EVENT),
        ("settle", OK, EVENT),
    ]


async def test_reported_steps_carry_their_time_and_duration() -> None:
    ticks = iter(range(100))
    walls = iter(range(100))
    start = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    _saga, _calls, orders, inventory, loyalty = make()
    timed = OrderSaga(
        orders,
        inventory,
        loyalty,
        lease_seconds=10,
        # Each reading of the step clock is 0.25 s after the one before; of the wall clock,
        # a minute.
        clock=lambda: next(ticks) * 0.25,
        wall_clock=lambda: start + timedelta(minutes=next(walls)),
    )
    order = (await timed.place(new_order())).order
    reserve, apply = orders.steps[order.id][1:3]
    # create is read at 0 (both clocks), reserve at 1, apply_discount at 2.
    assert (reserve.name, reserve.duration_us) == ("reserve", 250_000)
    assert (apply.name, apply.duration_us) == ("apply_discount", 250_000)
    assert reserve.started_at == start + timedelta(minutes=1)
    assert apply.started_at == start + timedelta(minutes=2)
    assert reserve.step_id != apply.step_id


async def test_rejected_for_stock_shows_the_failed_reserve_and_the_reason() -> None:
    saga, calls, orders, _inventory, _loyalty = make()
    calls.fail("inventory.reserve", OutOfStockError("MUG-1: 10 available"))
    order = (await saga.place(new_order())).order
    assert orders.history(order.id) == [
        ("create", OK, REQUEST),
        ("reserve", FAILED, REQUEST),
        ("reject", OK, REQUEST),
        ("settle", OK, REQUEST),
    ]
    reserve, reject = orders.steps[order.id][1:3]
    assert reserve.error is not None and reserve.error.code == "OUT_OF_STOCK"
    assert reserve.error.message == "MUG-1: 10 available"
    assert reject.error is not None and reject.error.code == "OUT_OF_STOCK"
    assert "orders.record_steps" not in calls.log


async def test_rejected_for_points_shows_the_undo_of_the_reservation() -> None:
    saga, calls, orders, _inventory, _loyalty = make()
    calls.fail("loyalty.apply_discount", InsufficientPointsError("only 5 points"))
    order = (await saga.place(new_order())).order
    assert orders.history(order.id) == [
        ("create", OK, REQUEST),
        ("reserve", OK, REQUEST),
        ("apply_discount", FAILED, REQUEST),
        ("reject", OK, REQUEST),
        ("release", OK, REQUEST),  # went with SettleOrder
        ("settle", OK, REQUEST),
    ]
    assert "orders.record_steps" not in calls.log


async def test_an_undo_that_could_not_run_is_recorded_at_the_end_of_the_run() -> None:
    saga, calls, orders, _inventory, _loyalty = make()
    calls.fail("loyalty.apply_discount", ServiceUnavailableError("loyalty down"))
    calls.fail("loyalty.void_discount", ServiceUnavailableError("loyalty down"))
    order = (await saga.place(new_order())).order
    # No settle to carry them: one RecordOrderSteps call, at the end.
    assert calls.log[-1] == "orders.record_steps"
    assert orders.history(order.id)[-3:] == [
        ("reject", OK, REQUEST),
        ("void_discount", UNKNOWN, REQUEST),
        ("release", OK, REQUEST),
    ]
    # Recovery finishes it; its steps say so.
    calls.heal()
    (claimed,) = await orders.claim_stale("recovery:1", 10, 10)
    await saga.resume(claimed, "recovery:1")
    assert orders.history(order.id)[-4:] == [
        ("claim", OK, RECOVERY),
        ("void_discount", OK, RECOVERY),
        ("release", OK, RECOVERY),
        ("settle", OK, RECOVERY),
    ]


async def test_steps_of_a_failed_call_to_orders_go_with_the_next_one() -> None:
    saga, calls, orders, _inventory, _loyalty = make()
    calls.fail("orders.confirm", LeaseHeldError("someone else"))
    order = (await saga.place(new_order())).order
    # The lease is lost: nothing else to carry them, so they are recorded on their own,
    # the failed confirm with them.
    assert calls.log[-2:] == ["orders.confirm", "orders.record_steps"]
    assert orders.history(order.id) == [
        ("create", OK, REQUEST),
        ("reserve", OK, REQUEST),
        ("apply_discount", OK, REQUEST),
        ("confirm", FAILED, REQUEST),
    ]


async def test_a_pending_order_finished_by_recovery_is_logged_as_recovery() -> None:
    saga, calls, orders, _inventory, _loyalty = make()
    calls.fail("orders.confirm", ServiceUnavailableError("orders down"))
    calls.fail("orders.reject", ServiceUnavailableError("orders down"))
    calls.fail("orders.record_steps", ServiceUnavailableError("orders down"))
    order = (await saga.place(new_order())).order
    # orders out of reach: what the request did is lost with it (the order itself is not).
    assert orders.history(order.id) == [("create", OK, REQUEST)]
    calls.heal()
    (claimed,) = await orders.claim_stale("recovery:1", 10, 10)
    resumed = await saga.resume(claimed, "recovery:1")
    assert resumed.status == "CONFIRMED"
    assert orders.history(order.id) == [
        ("create", OK, REQUEST),
        ("claim", OK, RECOVERY),
        ("reserve", OK, RECOVERY),
        ("apply_discount", OK, RECOVERY),
        ("confirm", OK, RECOVERY),
    ]


async def test_the_cancel_saga_is_logged() -> None:
    saga, _calls, orders, inventory, loyalty = make()
    order = (await saga.place(new_order())).order
    await consume_order_confirmed(orders, inventory, loyalty, order.id)
    await saga.cancel_order(order.id)
    assert orders.history(order.id)[-4:] == [
        ("request_cancel", OK, REQUEST),
        ("refund_discount", OK, REQUEST),
        ("return_stock", OK, REQUEST),
        ("cancel", OK, REQUEST),
    ]


async def test_a_refused_cancel_is_logged_with_its_withdrawal() -> None:
    saga, _calls, orders, inventory, loyalty = make(points=0)
    order = (await saga.place(new_order(redeem=0))).order
    await consume_order_confirmed(orders, inventory, loyalty, order.id)
    loyalty.points["c-1"] = 0  # the points the order earned were spent
    with pytest.raises(NotCancellableError):
        await saga.cancel_order(order.id)
    assert orders.history(order.id)[-3:] == [
        ("request_cancel", OK, REQUEST),
        ("refund_discount", FAILED, REQUEST),
        ("withdraw_cancel", OK, REQUEST),
    ]


def test_a_run_hands_over_at_most_one_report_of_steps_at_a_time() -> None:
    run = Run("gateway:1", REQUEST)
    at = datetime(2026, 12, 1, tzinfo=UTC)
    for _ in range(MAX_REPORT + 3):
        run.record("release", at, 0.001, ServiceUnavailableError("down"))
    first = run.take()
    assert len(first) == MAX_REPORT and len(run.pending) == 3
    assert first[0].outcome == UNKNOWN and first[0].duration_us == 1000
    assert len({s.step_id for s in first} | {s.step_id for s in run.pending}) == MAX_REPORT + 3
    run.give_back(first)
    assert run.pending[0] == first[0] and len(run.pending) == MAX_REPORT + 3
