"""Orders domain: order creation checks and the saga's status transitions, without I/O."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from orderflow.errors import (
    InvalidArgumentError,
    InvalidStateError,
    LeaseHeldError,
    NotCancellableError,
)
from orderflow.orders import domain
from orderflow.orders.domain import (
    MAX_FAILURE_MESSAGE,
    Failure,
    NewOrder,
    Order,
    OrderLine,
    OrderStatus,
    Totals,
)

NOW = 1_000_000_000  # microseconds
LEASE = 30_000_000
OWNER = "driver-a"
OTHER = "driver-b"

# -- helpers ------------------------------------------------------------------------------


def make_order(**changes: Any) -> Order:
    """A PENDING order of two lines, leased to OWNER until NOW + LEASE, at version 1."""
    order = Order(
        id="o-1",
        customer_id="c-1",
        status=OrderStatus.PENDING,
        lines=(OrderLine("a", 2), OrderLine("b", 1)),
        currency="",
        subtotal=0,
        discount=0,
        redeem_points=100,
        points_redeemed=0,
        total=0,
        points_earned=0,
        failure=None,
        idempotency_key="k-1",
        request_fingerprint="fp",
        settled=False,
        cancel_requested=False,
        lease_owner=OWNER,
        lease_expires_us=NOW + LEASE,
        created_us=NOW - 10,
        updated_us=NOW - 10,
        version=1,
    )
    return replace(order, **changes)


def make_totals(**changes: Any) -> Totals:
    """Totals that add up for make_order(): 2 x 500 + 1 x 250 = 1250, - 50 - 100 = 1100."""
    totals = Totals(
        lines=(OrderLine("b", 1, 250), OrderLine("a", 2, 500)),
        currency="USD",
        subtotal=1250,
        discount=50,
        points_redeemed=100,
        total=1100,
        points_earned=11,
    )
    return replace(totals, **changes)


def confirmed(**changes: Any) -> Order:
    return replace(domain.confirm(make_order(), OWNER, make_totals(), NOW), **changes)


def cancel_requested() -> Order:
    return domain.request_cancel(confirmed(), OWNER, LEASE, NOW + 1)


def new(**changes: Any) -> NewOrder:
    args: dict[str, Any] = {
        "customer_id": "c-1",
        "lines": [("a", 2), ("b", 1)],
        "redeem_points": 0,
        "idempotency_key": "k-1",
        "request_fingerprint": "fp",
        "lease_owner": OWNER,
        "lease_seconds": 30.0,
    }
    args.update(changes)
    return domain.new_order(**args)


def field_of(info: pytest.ExceptionInfo[InvalidArgumentError]) -> str:
    return str(info.value.details.get("field", ""))


# -- new_order ----------------------------------------------------------------------------


def test_new_order_accepts_good_input() -> None:
    assert new() == NewOrder(
        customer_id="c-1",
        lines=(OrderLine("a", 2), OrderLine("b", 1)),
        redeem_points=0,
        idempotency_key="k-1",
        request_fingerprint="fp",
        lease_owner=OWNER,
        lease_us=30_000_000,
    )


def test_new_order_accepts_the_limits() -> None:
    order = new(
        customer_id="c" * 64,
        lines=[("a", 1), ("b", 10_000)],
        idempotency_key="k" * 255,
        request_fingerprint="f" * 128,
        lease_owner="o" * 128,
        lease_seconds=0.1,
    )
    assert order.lease_us == 100_000
    assert new(lease_seconds=3600).lease_us == 3_600_000_000
    assert new(idempotency_key="").idempotency_key == ""


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"lines": []}, "lines"),
        ({"lines": [("a", 1), ("a", 2)]}, "lines"),
        ({"lines": [("a", 0)]}, "lines[0].quantity"),
        ({"lines": [("a", 1), ("b", 10_001)]}, "lines[1].quantity"),
        ({"lines": [("a", -1)]}, "lines[0].quantity"),
        ({"lines": [("bad sku", 1)]}, "lines[0].sku"),
        ({"customer_id": ""}, "customer_id"),
        ({"customer_id": "c" * 65}, "customer_id"),
        ({"idempotency_key": "k" * 256}, "idempotency_key"),
        ({"request_fingerprint": "f" * 129}, "request_fingerprint"),
        ({"lease_seconds": 0.05}, "lease_seconds"),
        ({"lease_seconds": 0}, "lease_seconds"),
        ({"lease_seconds": 3601}, "lease_seconds"),
        ({"lease_owner": ""}, "lease_owner"),
        ({"lease_owner": "o" * 129}, "lease_owner"),
        ({"redeem_points": -1}, "redeem_points"),
    ],
)
def test_new_order_refuses_bad_input(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        new(**changes)
    assert field_of(info) == field


# -- leases -------------------------------------------------------------------------------


def test_acquire_lease_by_the_owner_renews_it() -> None:
    order = make_order()
    renewed = domain.acquire_lease(order, OWNER, LEASE, NOW + 5)
    assert renewed.lease_owner == OWNER
    assert renewed.lease_expires_us == NOW + 5 + LEASE
    assert renewed.version == order.version + 1
    assert renewed.updated_us == NOW + 5


def test_acquire_lease_held_by_another_live_owner_is_refused() -> None:
    with pytest.raises(LeaseHeldError):
        domain.acquire_lease(make_order(), OTHER, LEASE, NOW)


def test_acquire_an_expired_lease_of_another_owner() -> None:
    later = NOW + LEASE  # the lease ends exactly now
    taken = domain.acquire_lease(make_order(), OTHER, LEASE, later)
    assert (taken.lease_owner, taken.lease_expires_us) == (OTHER, later + LEASE)


# -- confirm ------------------------------------------------------------------------------


def test_confirm_a_pending_order_stores_prices_and_totals() -> None:
    order = make_order()
    done = domain.confirm(order, OWNER, make_totals(), NOW)
    assert done.status == OrderStatus.CONFIRMED
    # Lines keep the order's own order, now priced.
    assert done.lines == (OrderLine("a", 2, 500), OrderLine("b", 1, 250))
    assert (done.currency, done.subtotal, done.discount) == ("USD", 1250, 50)
    assert (done.points_redeemed, done.total, done.points_earned) == (100, 1100, 11)
    assert done.version == order.version + 1
    assert done.updated_us == NOW
    assert done.settled is False
    # The driver lets go: the order's events finish it, and it can be cancelled at once.
    assert (done.lease_owner, done.lease_expires_us) == ("", 0)


def test_confirm_again_is_a_no_op_returning_the_same_object() -> None:
    done = confirmed()
    assert domain.confirm(done, OWNER, make_totals(), NOW + 9) is done
    # Even another driver or other totals do not change a confirmed order.
    assert domain.confirm(done, OTHER, make_totals(total=1), NOW + 9) is done


def test_confirm_of_a_rejected_order_is_an_invalid_state() -> None:
    rejected = domain.reject(make_order(), OWNER, Failure("OUT_OF_STOCK", "none"), NOW)
    with pytest.raises(InvalidStateError):
        domain.confirm(rejected, OWNER, make_totals(), NOW)


def test_confirm_while_another_driver_holds_the_lease_is_refused() -> None:
    with pytest.raises(LeaseHeldError) as info:
        domain.confirm(make_order(), OTHER, make_totals(), NOW)
    assert info.value.details["lease_owner"] == OWNER


def test_confirm_after_another_drivers_lease_expired_is_allowed() -> None:
    done = domain.confirm(make_order(), OTHER, make_totals(), NOW + LEASE + 1)
    assert done.status == OrderStatus.CONFIRMED


def test_confirm_of_an_unleased_order_by_anyone() -> None:
    order = make_order(lease_owner="", lease_expires_us=0)
    assert domain.confirm(order, OTHER, make_totals(), NOW).status == OrderStatus.CONFIRMED


@pytest.mark.parametrize(
    ("totals", "field"),
    [
        (make_totals(lines=(OrderLine("a", 2, 500),)), "lines"),
        (make_totals(lines=(OrderLine("a", 3, 500), OrderLine("b", 1, 250))), "lines"),
        (
            make_totals(
                lines=(OrderLine("a", 2, 500), OrderLine("b", 1, 250), OrderLine("c", 1, 1))
            ),
            "lines",
        ),
        (make_totals(lines=(OrderLine("a", 2, 500), OrderLine("x", 1, 250))), "lines"),
        (make_totals(subtotal=1251, total=1101), "subtotal"),
        (make_totals(total=1099), "total"),
        (make_totals(total=1250), "total"),
        (make_totals(points_redeemed=101, total=1099), "points_redeemed"),
        (make_totals(currency="US"), "currency"),
        (make_totals(currency="US1"), "currency"),
        (make_totals(currency="EURO"), "currency"),
        (make_totals(currency=""), "currency"),
        (make_totals(discount=-1, total=1151), "discount"),
        (make_totals(points_earned=-1), "points_earned"),
    ],
)
def test_check_totals_refuses_totals_that_do_not_add_up(totals: Totals, field: str) -> None:
    order = make_order()
    with pytest.raises(InvalidArgumentError) as info:
        domain.check_totals(order, totals)
    assert field_of(info) == field
    with pytest.raises(InvalidArgumentError):
        domain.confirm(order, OWNER, totals, NOW)


def test_check_totals_refuses_a_negative_unit_price() -> None:
    totals = make_totals(lines=(OrderLine("a", 2, -1), OrderLine("b", 1, 250)))
    with pytest.raises(InvalidArgumentError):
        domain.check_totals(make_order(), totals)


def test_check_totals_accepts_consistent_totals() -> None:
    totals = make_totals()
    assert domain.check_totals(make_order(), totals) is totals


# -- reject -------------------------------------------------------------------------------


def test_reject_a_pending_order_records_the_failure() -> None:
    order = make_order()
    done = domain.reject(order, OWNER, Failure("OUT_OF_STOCK", " sku a is sold out "), NOW)
    assert done.status == OrderStatus.REJECTED
    assert done.failure == Failure("OUT_OF_STOCK", "sku a is sold out")
    assert done.version == order.version + 1
    assert done.settled is False


def test_reject_truncates_the_message_and_defaults_it_to_the_code() -> None:
    long = domain.reject(make_order(), OWNER, Failure("X", "m" * 800), NOW)
    assert long.failure is not None
    assert long.failure.message == "m" * MAX_FAILURE_MESSAGE
    empty = domain.reject(make_order(), OWNER, Failure("X", "  "), NOW)
    assert empty.failure == Failure("X", "X")


def test_reject_needs_a_failure_code() -> None:
    with pytest.raises(InvalidArgumentError):
        domain.reject(make_order(), OWNER, Failure("", "why"), NOW)


def test_reject_again_is_a_no_op() -> None:
    done = domain.reject(make_order(), OWNER, Failure("A", "a"), NOW)
    assert domain.reject(done, OWNER, Failure("B", "b"), NOW + 1) is done


def test_reject_of_a_confirmed_order_is_an_invalid_state() -> None:
    with pytest.raises(InvalidStateError):
        domain.reject(confirmed(), OWNER, Failure("A", "a"), NOW)


def test_reject_while_another_driver_holds_the_lease_is_refused() -> None:
    with pytest.raises(LeaseHeldError):
        domain.reject(make_order(), OTHER, Failure("A", "a"), NOW)


# -- cancellation -------------------------------------------------------------------------


def test_request_cancel_of_a_confirmed_order_leases_it_to_the_caller() -> None:
    done = confirmed(settled=True, lease_owner="", lease_expires_us=0)
    requested = domain.request_cancel(done, OTHER, LEASE, NOW + 7)
    assert requested.status == OrderStatus.CONFIRMED
    assert requested.cancel_requested is True
    assert requested.settled is False
    assert (requested.lease_owner, requested.lease_expires_us) == (OTHER, NOW + 7 + LEASE)
    assert requested.version == done.version + 1


@pytest.mark.parametrize(
    "order",
    [make_order(), domain.reject(make_order(), OWNER, Failure("A", "a"), NOW)],
    ids=["pending", "rejected"],
)
def test_request_cancel_of_an_unconfirmed_order_is_not_cancellable(order: Order) -> None:
    with pytest.raises(NotCancellableError) as info:
        domain.request_cancel(order, OWNER, LEASE, NOW)
    assert info.value.details["status"] == order.status.value


def test_request_cancel_of_a_cancelled_order_returns_it_as_is() -> None:
    done = domain.cancel(cancel_requested(), OWNER, NOW + 2)
    assert domain.request_cancel(done, OTHER, LEASE, NOW + 3) is done


def test_request_cancel_while_another_driver_holds_the_lease_is_refused() -> None:
    leased = domain.acquire_lease(confirmed(), OWNER, LEASE, NOW)
    with pytest.raises(LeaseHeldError):
        domain.request_cancel(leased, OTHER, LEASE, NOW)


def test_withdraw_cancel_clears_the_request() -> None:
    requested = cancel_requested()
    withdrawn = domain.withdraw_cancel(requested, OWNER, NOW + 2)
    assert withdrawn.status == OrderStatus.CONFIRMED
    assert withdrawn.cancel_requested is False
    assert withdrawn.version == requested.version + 1
    assert domain.withdraw_cancel(withdrawn, OWNER, NOW + 3) is withdrawn


def test_withdraw_cancel_without_a_request_is_a_no_op() -> None:
    for order in (make_order(), confirmed()):
        assert domain.withdraw_cancel(order, OTHER, NOW) is order


def test_withdraw_cancel_while_another_driver_holds_the_lease_is_refused() -> None:
    with pytest.raises(LeaseHeldError):
        domain.withdraw_cancel(cancel_requested(), OTHER, NOW + 2)


def test_cancel_a_requested_cancellation() -> None:
    requested = cancel_requested()
    done = domain.cancel(requested, OWNER, NOW + 2)
    assert done.status == OrderStatus.CANCELLED
    assert done.settled is True
    assert (done.lease_owner, done.lease_expires_us) == ("", 0)
    assert done.version == requested.version + 1
    assert domain.cancel(done, OWNER, NOW + 3) is done
    assert domain.cancel(done, OTHER, NOW + 3) is done


@pytest.mark.parametrize(
    "order",
    [make_order(), confirmed(), domain.reject(make_order(), OWNER, Failure("A", "a"), NOW)],
    ids=["pending", "confirmed", "rejected"],
)
def test_cancel_without_a_request_is_an_invalid_state(order: Order) -> None:
    with pytest.raises(InvalidStateError):
        domain.cancel(order, OWNER, NOW)


def test_cancel_while_another_driver_holds_the_lease_is_refused() -> None:
    with pytest.raises(LeaseHeldError):
        domain.cancel(cancel_requested(), OTHER, NOW + 2)


# -- settle -------------------------------------------------------------------------------


def test_settle_of_a_pending_order_is_an_invalid_state() -> None:
    with pytest.raises(InvalidStateError):
        domain.settle(make_order(), OWNER, NOW)


@pytest.mark.parametrize(
    "order",
    [confirmed(), domain.reject(make_order(), OWNER, Failure("A", "a"), NOW)],
    ids=["confirmed", "rejected"],
)
def test_settle_clears_the_lease_and_repeats_as_a_no_op(order: Order) -> None:
    done = domain.settle(order, OWNER, NOW + 1)
    assert done.settled is True
    assert (done.lease_owner, done.lease_expires_us) == ("", 0)
    assert done.status == order.status
    assert done.version == order.version + 1
    assert domain.settle(done, OWNER, NOW + 2) is done
    assert domain.settle(done, OTHER, NOW + 2) is done


def test_settle_while_another_driver_holds_the_lease_is_refused() -> None:
    leased = domain.acquire_lease(confirmed(), OWNER, LEASE, NOW)
    with pytest.raises(LeaseHeldError):
        domain.settle(leased, OTHER, NOW)


# -- staleness ----------------------------------------------------------------------------


def test_is_stale() -> None:
    order = make_order()
    assert not domain.is_stale(order, NOW)
    assert not domain.is_stale(order, NOW + LEASE - 1)
    assert domain.is_stale(order, NOW + LEASE)
    assert domain.is_stale(make_order(lease_owner="", lease_expires_us=NOW + LEASE), NOW)
    settled = domain.settle(confirmed(), OWNER, NOW)
    assert not domain.is_stale(settled, NOW + 10 * LEASE)


# -- versions -----------------------------------------------------------------------------


def test_every_change_increments_the_version_by_one() -> None:
    steps = [
        lambda o, t: domain.acquire_lease(o, OWNER, LEASE, t),
        lambda o, t: domain.confirm(o, OWNER, make_totals(), t),
        lambda o, t: domain.settle(o, OWNER, t),
        lambda o, t: domain.request_cancel(o, OWNER, LEASE, t),
        lambda o, t: domain.withdraw_cancel(o, OWNER, t),
        lambda o, t: domain.request_cancel(o, OWNER, LEASE, t),
        lambda o, t: domain.cancel(o, OWNER, t),
    ]
    order = make_order()
    for n, step in enumerate(steps, start=1):
        changed = step(order, NOW + n)
        assert changed.version == order.version + 1, n
        assert changed.updated_us == NOW + n
        assert changed.created_us == order.created_us
        order = changed
    assert order.status == OrderStatus.CANCELLED
    assert order.version == 1 + len(steps)
