"""Orders domain: an order, its lines, its status as the saga's durable state, and the lease
a driver holds on it while it acts (no I/O).

Every change is a pure function from an order to its next version; the storage layer
writes it as a compare-and-set on the version it was computed from. Statuses move
PENDING -> CONFIRMED | REJECTED and CONFIRMED -> CANCELLED, never back.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from orderflow.errors import (
    InvalidArgumentError,
    InvalidStateError,
    LeaseHeldError,
    NotCancellableError,
)
from orderflow.validation import (
    MAX_MONEY,
    check_id,
    check_lines,
    check_money,
    check_range,
)

MAX_IDEMPOTENCY_KEY = 255
MAX_OWNER = 128
MAX_FINGERPRINT = 128
MAX_FAILURE_MESSAGE = 500
MIN_LEASE_SECONDS = 0.1
MAX_LEASE_SECONDS = 3600.0


class OrderStatus(StrEnum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True)
class OrderLine:
    sku: str
    quantity: int
    unit_price: int = 0


@dataclass(frozen=True)
class Failure:
    code: str
    message: str


@dataclass(frozen=True)
class Order:
    id: str
    customer_id: str
    status: OrderStatus
    lines: tuple[OrderLine, ...]
    currency: str
    subtotal: int
    discount: int
    redeem_points: int
    points_redeemed: int
    total: int
    points_earned: int
    failure: Failure | None
    idempotency_key: str
    request_fingerprint: str
    settled: bool
    cancel_requested: bool
    lease_owner: str
    lease_expires_us: int
    created_us: int
    updated_us: int
    version: int
    # The follow-ups of a confirmed order that have reported back (their events, ADR 18).
    stock_committed: bool = False
    loyalty_committed: bool = False


class FollowUp(StrEnum):
    """A follow-up of a confirmed order, reported by its service's event."""

    STOCK = "stock_committed"  # inventory: stock.committed
    LOYALTY = "loyalty_committed"  # loyalty: loyalty.committed


@dataclass(frozen=True)
class NewOrder:
    customer_id: str
    lines: tuple[OrderLine, ...]
    redeem_points: int
    idempotency_key: str
    request_fingerprint: str
    lease_owner: str
    lease_us: int


@dataclass(frozen=True)
class Totals:
    """What the saga found out: priced lines and the loyalty figures."""

    lines: tuple[OrderLine, ...]
    currency: str
    subtotal: int
    discount: int
    points_redeemed: int
    total: int
    points_earned: int


def check_owner(owner: str) -> str:
    return check_id("lease_owner", owner, max_len=MAX_OWNER)


def lease_us(seconds: float) -> int:
    if not MIN_LEASE_SECONDS <= seconds <= MAX_LEASE_SECONDS:
        raise InvalidArgumentError(
            f"lease_seconds must be between {MIN_LEASE_SECONDS} and {MAX_LEASE_SECONDS}, "
            f"got {seconds}",
            field="lease_seconds",
        )
    return int(seconds * 1_000_000)


def new_order(
    customer_id: str,
    lines: list[tuple[str, int]],
    redeem_points: int,
    idempotency_key: str,
    request_fingerprint: str,
    lease_owner: str,
    lease_seconds: float,
) -> NewOrder:
    if idempotency_key:
        check_id("idempotency_key", idempotency_key, max_len=MAX_IDEMPOTENCY_KEY)
    if len(request_fingerprint) > MAX_FINGERPRINT:
        raise InvalidArgumentError(
            f"request_fingerprint is longer than {MAX_FINGERPRINT} characters",
            field="request_fingerprint",
        )
    return NewOrder(
        customer_id=check_id("customer_id", customer_id),
        lines=tuple(OrderLine(sku, quantity) for sku, quantity in check_lines(lines)),
        redeem_points=check_money("redeem_points", redeem_points),
        idempotency_key=idempotency_key,
        request_fingerprint=request_fingerprint,
        lease_owner=check_owner(lease_owner),
        lease_us=lease_us(lease_seconds),
    )


def lease_free(order: Order, now: int) -> bool:
    """Nobody holds a live lease on the order: no owner, or the lease ran out."""
    return not order.lease_owner or order.lease_expires_us <= now


def _may_act(order: Order, owner: str, now: int) -> None:
    """Raise LeaseHeldError unless owner holds the lease, or nobody holds a live one."""
    if order.lease_owner != owner and not lease_free(order, now):
        raise LeaseHeldError(
            f"order {order.id} is being handled by another driver",
            order_id=order.id,
            lease_owner=order.lease_owner,
        )


def _touch(order: Order, now: int, **changes: object) -> Order:
    return replace(order, updated_us=now, version=order.version + 1, **changes)  # type: ignore[arg-type]


def acquire_lease(order: Order, owner: str, lease: int, now: int) -> Order:
    _may_act(order, owner, now)
    return _touch(order, now, lease_owner=owner, lease_expires_us=now + lease)


def check_totals(order: Order, totals: Totals) -> Totals:
    """Totals that belong to this order and add up; InvalidArgumentError otherwise."""
    if sorted((x.sku, x.quantity) for x in totals.lines) != sorted(
        (x.sku, x.quantity) for x in order.lines
    ):
        raise InvalidArgumentError(
            "the confirmed lines must be the order's lines", field="lines", order_id=order.id
        )
    for line in totals.lines:
        check_money(f"unit_price of {line.sku}", line.unit_price)
    for name in ("subtotal", "discount", "points_redeemed", "total", "points_earned"):
        check_range(name, getattr(totals, name), 0, MAX_MONEY)
    if len(totals.currency) != 3 or not totals.currency.isalpha():
        raise InvalidArgumentError("currency must be a three-letter code", field="currency")
    subtotal = sum(x.quantity * x.unit_price for x in totals.lines)
    if totals.subtotal != subtotal:
        raise InvalidArgumentError(
            f"subtotal {totals.subtotal} is not the sum of the lines ({subtotal})",
            field="subtotal",
        )
    if totals.total != totals.subtotal - totals.discount - totals.points_redeemed:
        raise InvalidArgumentError(
            "total must be subtotal - discount - points_redeemed", field="total"
        )
    if totals.points_redeemed > order.redeem_points:
        raise InvalidArgumentError(
            f"points_redeemed {totals.points_redeemed} exceeds the {order.redeem_points} "
            "points the order asked to redeem",
            field="points_redeemed",
        )
    return totals


def confirm(order: Order, owner: str, totals: Totals, now: int) -> Order:
    if order.status == OrderStatus.CONFIRMED:
        return order
    _may_act(order, owner, now)
    _require(order, OrderStatus.PENDING, "confirmed")
    check_totals(order, totals)
    by_sku = {x.sku: x for x in totals.lines}
    # The driver is done: order.confirmed finishes the order from here (ADR 18), so the
    # lease is let go and the order can be cancelled at once.
    return _touch(
        order,
        now,
        status=OrderStatus.CONFIRMED,
        lease_owner="",
        lease_expires_us=0,
        lines=tuple(by_sku[x.sku] for x in order.lines),
        currency=totals.currency,
        subtotal=totals.subtotal,
        discount=totals.discount,
        points_redeemed=totals.points_redeemed,
        total=totals.total,
        points_earned=totals.points_earned,
    )


def reject(order: Order, owner: str, failure: Failure, now: int) -> Order:
    if order.status == OrderStatus.REJECTED:
        return order
    _may_act(order, owner, now)
    _require(order, OrderStatus.PENDING, "rejected")
    code = check_id("failure.code", failure.code)
    message = failure.message.strip()[:MAX_FAILURE_MESSAGE] or code
    return _touch(order, now, status=OrderStatus.REJECTED, failure=Failure(code, message))


def request_cancel(order: Order, owner: str, lease: int, now: int) -> Order:
    if order.status == OrderStatus.CANCELLED:
        return order
    if order.status != OrderStatus.CONFIRMED:
        raise NotCancellableError(
            f"order {order.id} is {order.status.value}; only a CONFIRMED order can be cancelled",
            order_id=order.id,
            status=order.status.value,
        )
    _may_act(order, owner, now)
    return _touch(
        order,
        now,
        cancel_requested=True,
        settled=False,
        lease_owner=owner,
        lease_expires_us=now + lease,
    )


def withdraw_cancel(order: Order, owner: str, now: int) -> Order:
    """The cancel is given up: the order stays CONFIRMED, settled again if its follow-ups
    have reported meanwhile (else their events settle it)."""
    if order.status != OrderStatus.CONFIRMED or not order.cancel_requested:
        return order
    _may_act(order, owner, now)
    if _followed_up(order):
        return _touch(
            order, now, cancel_requested=False, settled=True, lease_owner="", lease_expires_us=0
        )
    return _touch(order, now, cancel_requested=False)


def _followed_up(order: Order) -> bool:
    return order.stock_committed and order.loyalty_committed


def follow_up_done(order: Order, follow_up: FollowUp, now: int) -> Order:
    """A follow-up of the order reported (its event was consumed): record it; once both have,
    a CONFIRMED order is settled, whoever holds its lease (the follow-ups are the last
    step). An order being cancelled is left to its cancel, a cancelled one only records it."""
    if getattr(order, follow_up.value):
        return order
    changes: dict[str, object] = {follow_up.value: True}
    done = replace(order, **changes)  # type: ignore[arg-type]
    if (
        order.status == OrderStatus.CONFIRMED
        and not order.cancel_requested
        and not order.settled
        and _followed_up(done)
    ):
        changes.update(settled=True, lease_owner="", lease_expires_us=0)
    return _touch(order, now, **changes)


def cancel(order: Order, owner: str, now: int) -> Order:
    if order.status == OrderStatus.CANCELLED:
        return order
    _may_act(order, owner, now)
    if order.status != OrderStatus.CONFIRMED or not order.cancel_requested:
        raise InvalidStateError(
            f"order {order.id} is {order.status.value} without a cancellation request; "
            "request the cancellation first",
            order_id=order.id,
            status=order.status.value,
        )
    return _touch(
        order,
        now,
        status=OrderStatus.CANCELLED,
        settled=True,
        lease_owner="",
        lease_expires_us=0,
    )


def settle(order: Order, owner: str, now: int) -> Order:
    """The saga is over: mark the decided order settled and drop its lease.

    SqlOrderRepository.settle restates the usual case in one SQL statement (tests check
    that they agree in every case).
    """
    if order.settled:
        return order
    _may_act(order, owner, now)
    if order.status == OrderStatus.PENDING:
        raise InvalidStateError(
            f"order {order.id} is still PENDING; it cannot be settled",
            order_id=order.id,
            status=order.status.value,
        )
    return _touch(order, now, settled=True, lease_owner="", lease_expires_us=0)


def is_stale(order: Order, now: int, events_grace_us: int = 0) -> bool:
    """Unsettled, with no live lease: a recovery worker may take it. A CONFIRMED order is
    finished by its events: only when they have not settled it within events_grace_us of
    its last change is it taken (its events were lost).

    SqlOrderRepository.stale restates this rule in SQL (tests check that they agree).
    """
    if order.settled or not lease_free(order, now):
        return False
    if order.status == OrderStatus.CONFIRMED and not order.cancel_requested:
        return order.updated_us + events_grace_us <= now
    return True


# A recovery worker's lease owner starts with this (ADR 1: `recovery:<random>`).
RECOVERY_OWNER_PREFIX = "recovery:"


def is_stuck(order: Order, now: int, events_grace_us: int = 0) -> bool:
    """The saga outlived its driver: the order is stale (is_stale), or a recovery worker
    holds it because it was. Counted by orderflow_orders_stuck, an operator's signal.

    SqlOrderRepository.count_stuck restates this rule in SQL (tests check that they agree).
    """
    if order.settled:
        return False
    return order.lease_owner.startswith(RECOVERY_OWNER_PREFIX) or is_stale(
        order, now, events_grace_us
    )


def claim(order: Order, owner: str, lease: int, now: int, events_grace_us: int = 0) -> Order:
    """Lease a stale order to owner, a recovery worker that will finish its saga."""
    if not is_stale(order, now, events_grace_us):
        raise InvalidStateError(
            f"order {order.id} is settled or leased; it cannot be claimed",
            order_id=order.id,
            status=order.status.value,
        )
    return _touch(order, now, lease_owner=owner, lease_expires_us=now + lease)


def _require(order: Order, status: OrderStatus, becoming: str) -> None:
    if order.status != status:
        raise InvalidStateError(
            f"order {order.id} is {order.status.value}; it cannot be {becoming}",
            order_id=order.id,
            status=order.status.value,
        )


# -- the saga's step log (its history, ADR 26) ----------------------------------------------

MAX_STEP_ID = 64
MAX_STEP_NAME = 32
MAX_STEPS_PER_REPORT = 64
MAX_STEP_US = 24 * 3600 * 1_000_000


class StepOutcome(StrEnum):
    OK = "ok"
    FAILED = "failed"  # a clear refusal: the step did nothing
    UNKNOWN = "unknown"  # no answer (unreachable, out of time): the step may have acted


class Driver(StrEnum):
    """Who ran a step: a gateway answering the client, a gateway's recovery worker, or the
    orders service consuming an event (the follow-ups of a confirmed order)."""

    REQUEST = "request"
    RECOVERY = "recovery"
    EVENT = "event"


@dataclass(frozen=True)
class Step:
    """One step of an order's saga as it ran: what, when, how long, by whom, and how it went.

    step_id is unique within the order: a driver that reports the same step twice (a retried
    call) has it recorded once.
    """

    step_id: str
    name: str
    outcome: StepOutcome
    driver: Driver
    started_us: int
    duration_us: int = 0
    error: Failure | None = None


def own_step(
    changed: Order, name: str, driver: Driver, started_us: int, now: int, error: Failure | None
) -> Step:
    """The step the orders service itself made by writing `changed` (create, confirm, ...):
    its id is the version it wrote, so it is unique within the order and never recorded
    twice (a repeat that changes nothing writes no version and no step)."""
    return Step(
        step_id=f"{name}@{changed.version}",
        name=name,
        outcome=StepOutcome.OK,
        driver=driver,
        started_us=started_us,
        duration_us=max(0, now - started_us),
        error=error,
    )


def check_step(step: Step) -> Step:
    """A step reported by a driver, checked; InvalidArgumentError if it cannot be one."""
    check_id("step.step_id", step.step_id, max_len=MAX_STEP_ID)
    check_id("step.name", step.name, max_len=MAX_STEP_NAME)
    check_range("step.started_at", step.started_us, 1, 2**62)
    check_range("step.duration", step.duration_us, 0, MAX_STEP_US)
    error = step.error
    if error is None:
        if step.outcome != StepOutcome.OK:
            raise InvalidArgumentError(
                f"step {step.name} {step.outcome.value} needs its error", field="step.error"
            )
        return step
    code = check_id("step.error.code", error.code)
    message = error.message.strip()[:MAX_FAILURE_MESSAGE] or code
    return step if message == error.message else replace(step, error=Failure(code, message))


def check_steps(steps: list[Step] | tuple[Step, ...]) -> tuple[Step, ...]:
    if len(steps) > MAX_STEPS_PER_REPORT:
        raise InvalidArgumentError(
            f"at most {MAX_STEPS_PER_REPORT} steps in one report",
            field="steps",
            maximum=MAX_STEPS_PER_REPORT,
        )
    return tuple(check_step(step) for step in steps)
