"""The order saga: place an order across the three services, undo what was done when a step fails.

Placing: create_order (PENDING, leased to this driver) -> reserve -> apply_discount ->
confirm_order, and the reply. The follow-ups are not the saga's: order.confirmed makes
inventory commit the stock and loyalty earn the points, and orders settles the order when
both have reported (their events; ADR 18). A business failure at a step
undoes the steps before it, in reverse (release, void_discount); a step that failed
without a clear answer
(unreachable, out of time) may have acted, so it is undone too. The order is REJECTED
first — the durable decision — and the undo steps follow; any that cannot run now are
left to the recovery worker (the order stays unsettled until they have run).

Cancelling a CONFIRMED order: request_cancel marks it, refund_discount, return_stock,
then cancel_order makes it CANCELLED.

A word used here means one thing: bare "commit" is only ever a database commit (inside
a service); the saga's follow-ups are commit_stock and commit_discount.

Every step is idempotent on the order id, so `resume()` can drive any order found
unsettled from wherever it stopped; a CONFIRMED order only once its events were lost
(orders hands it out after ORDERFLOW_ORDERS_EVENTS_GRACE_SECONDS), by the calls
commit_stock, commit_discount and settle_order.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import structlog

from orderflow.errors import (
    DependencyError,
    InvalidStateError,
    LeaseHeldError,
    NotCancellableError,
    OrderflowError,
)
from orderflow.gateway.ports import (
    CANCELLED,
    CONFIRMED,
    PENDING,
    REJECTED,
    Failure,
    InventoryPort,
    Line,
    LoyaltyPort,
    NewOrder,
    Order,
    OrdersPort,
)

log = structlog.get_logger("orderflow.saga")

T = TypeVar("T")

# Outcomes reported to metrics and logs.
OUTCOME_CONFIRMED = "confirmed"
OUTCOME_REJECTED = "rejected"
OUTCOME_UNFINISHED = "unfinished"
# Recovery action for a CONFIRMED order its events did not settle in time (never expected).
RECOVERY_EVENTS_LOST = "events_lost"


class SagaObserver:
    """Receives saga events (metrics hook); the default does nothing."""

    def outcome(self, outcome: str, reason: str) -> None:
        """An order reached an outcome (confirmed, rejected with a reason, unfinished)."""

    def step(self, step: str, seconds: float, ok: bool) -> None:
        """A saga step ran."""

    def recovery(self, action: str) -> None:
        """The recovery worker acted on an order."""


@dataclass(frozen=True)
class Placed:
    """The result of placing: the order as it stands and whether this call created it."""

    order: Order
    created: bool


def new_owner(prefix: str) -> str:
    return f"{prefix}:{uuid.uuid4().hex[:12]}"


class OrderSaga:
    def __init__(
        self,
        orders: OrdersPort,
        inventory: InventoryPort,
        loyalty: LoyaltyPort,
        *,
        lease_seconds: float,
        owner_prefix: str = "gateway",
        observer: SagaObserver | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.orders = orders
        self.inventory = inventory
        self.loyalty = loyalty
        self.lease_seconds = lease_seconds
        self.owner_prefix = owner_prefix
        self.observer = observer or SagaObserver()
        self._clock = clock or time.perf_counter

    async def _step(self, name: str, call: Callable[[], Awaitable[T]]) -> T:
        start = self._clock()
        ok = False
        try:
            result = await call()
            ok = True
            return result
        finally:
            self.observer.step(name, self._clock() - start, ok)

    # -- placing -----------------------------------------------------------------------

    def new_order(
        self,
        customer_id: str,
        lines: Sequence[Line],
        redeem_points: int,
        *,
        idempotency_key: str | None,
        request: str,
    ) -> NewOrder:
        """The order to create for one placing request, leased to a new driver of this saga.

        request: the request as canonical text; its hash goes with the key, so the same key
        with another request is refused (IDEMPOTENCY_KEY_REUSED) instead of answered.
        """
        return NewOrder(
            customer_id=customer_id,
            lines=tuple(lines),
            redeem_points=redeem_points,
            # Without a client key the gateway still sends one of its own, so that its retry
            # of CreateOrder after a lost answer cannot create a second order.
            idempotency_key=idempotency_key or f"gw-{uuid.uuid4().hex}",
            fingerprint=hashlib.sha256(request.encode()).hexdigest(),
            lease_owner=new_owner(self.owner_prefix),
            lease_seconds=self.lease_seconds,
        )

    async def place(self, new: NewOrder) -> Placed:
        """Create the order and drive it; an existing order for the same key is returned as is."""
        order, created = await self._step("create", lambda: self.orders.create_order(new))
        if not created:
            return Placed(order, created=False)
        structlog.contextvars.bind_contextvars(order_id=order.id)
        return Placed(await self.drive(order, new.lease_owner), created=True)

    async def drive(self, order: Order, owner: str) -> Order:
        """Run a PENDING order forward to CONFIRMED (its events finish it); on failure reject
        it and undo what was done."""
        done: list[str] = []  # undoable steps that went through, in order
        step = "reserve"
        try:
            reservation = await self._step(
                "reserve", lambda: self.inventory.reserve(order.id, order.lines)
            )
            done.append(step)
            subtotal = sum(line.quantity * line.unit_price for line in reservation.lines)
            step = "apply_discount"
            discount = await self._step(
                "apply_discount",
                lambda: self.loyalty.apply_discount(
                    order.id, order.customer_id, subtotal, order.redeem_points
                ),
            )
            done.append(step)
            step = "confirm"
            confirmed = await self._step(
                "confirm",
                lambda: self.orders.confirm_order(order.id, owner, reservation, subtotal, discount),
            )
        except OrderflowError as exc:
            if step == "confirm" and isinstance(exc, (LeaseHeldError, InvalidStateError)):
                # Another driver (the recovery worker) owns the order now: leave it to them.
                self.observer.outcome(OUTCOME_UNFINISHED, "lease_lost")
                return await self.orders.get_order(order.id)
            if isinstance(exc, DependencyError) and step != "confirm":
                # No clear answer: the step may have acted, so it is undone too.
                done.append(step)
            return await self._reject(order, owner, done, Failure(exc.code, exc.message))
        self.observer.outcome(OUTCOME_CONFIRMED, "")
        return confirmed

    async def _reject(self, order: Order, owner: str, done: list[str], failure: Failure) -> Order:
        try:
            rejected = await self._step(
                "reject", lambda: self.orders.reject_order(order.id, owner, failure)
            )
        except DependencyError:
            # The orders service itself is out of reach: the order stays PENDING and the
            # recovery worker finishes it once its lease runs out.
            self.observer.outcome(OUTCOME_UNFINISHED, failure.code)
            log.warning("saga_unfinished", order_id=order.id, reason=failure.code)
            return order
        except (LeaseHeldError, InvalidStateError):
            self.observer.outcome(OUTCOME_UNFINISHED, "lease_lost")
            return await self.orders.get_order(order.id)
        if rejected.status != REJECTED:  # confirmed by another driver meanwhile
            return rejected
        self.observer.outcome(OUTCOME_REJECTED, rejected.failure.code if rejected.failure else "")
        return await self.compensate(rejected, owner, done)

    async def compensate(self, order: Order, owner: str, done: list[str]) -> Order:
        """Undo `done` in reverse, then settle the order if every undo went through."""
        undo: dict[str, tuple[str, Callable[[], Awaitable[None]]]] = {
            "apply_discount": ("void_discount", lambda: self.loyalty.void_discount(order.id)),
            "reserve": ("release", lambda: self.inventory.release(order.id)),
        }
        complete = True
        for step in reversed(done):
            try:
                await self._step(*undo[step])
            except DependencyError as exc:
                complete = False
                log.warning("undo_deferred", order_id=order.id, step=step, error=exc.message)
        if not complete:
            return order
        return await self._settle(order, owner)

    async def finish_confirmed(self, order: Order, owner: str) -> Order:
        """Run the follow-ups of a CONFIRMED order (commit_stock, commit_discount) by calls,
        then settle: only for an order whose events were lost (recovery)."""
        try:
            await self._step("commit_stock", lambda: self.inventory.commit_stock(order.id))
            await self._step("commit_discount", lambda: self.loyalty.commit_discount(order.id))
        except DependencyError as exc:
            log.warning("follow_up_deferred", order_id=order.id, error=exc.message)
            return order
        return await self._settle(order, owner)

    async def _settle(self, order: Order, owner: str) -> Order:
        try:
            return await self._step("settle", lambda: self.orders.settle_order(order.id, owner))
        except (DependencyError, LeaseHeldError) as exc:
            log.warning("settle_deferred", order_id=order.id, error=exc.message)
            return order

    # -- cancelling --------------------------------------------------------------------

    async def cancel_order(self, order_id: str) -> Order:
        """Cancel a CONFIRMED order (NotCancellableError otherwise); a CANCELLED one is returned."""
        owner = new_owner(self.owner_prefix)
        # Whether or not order.confirmed was consumed yet: a late one finds the stock
        # returned and the discount refunded, and has no effect (ADR 18).
        order = await self._step(
            "request_cancel",
            lambda: self.orders.request_cancel(order_id, owner, self.lease_seconds),
        )
        if order.status == CANCELLED:
            return order
        return await self.continue_cancel(order, owner)

    async def continue_cancel(self, order: Order, owner: str) -> Order:
        try:
            await self._step("refund_discount", lambda: self.loyalty.refund_discount(order.id))
        except NotCancellableError:
            # Nothing was undone yet: the order stays CONFIRMED, as it was (settled again
            # by withdraw_cancel once its follow-ups have reported).
            await self.orders.withdraw_cancel(order.id, owner)
            raise
        await self._step("return_stock", lambda: self.inventory.return_stock(order.id))
        return await self._step("cancel_order", lambda: self.orders.cancel_order(order.id, owner))

    # -- recovery ----------------------------------------------------------------------

    async def resume(self, order: Order, owner: str) -> Order:
        """Drive an unsettled order (claimed by the recovery worker) to a settled state."""
        structlog.contextvars.bind_contextvars(order_id=order.id)
        if order.status == PENDING:
            self.observer.recovery("drive_pending")
            return await self.drive(order, owner)
        if order.status == CONFIRMED and order.cancel_requested:
            self.observer.recovery("finish_cancel")
            try:
                return await self.continue_cancel(order, owner)
            except NotCancellableError:
                return await self.orders.get_order(order.id)
        if order.status == CONFIRMED:
            # orders hands out a CONFIRMED order only when its events did not settle it in
            # time: they were lost (a parked event, a broker gone for good). Never expected.
            self.observer.recovery(RECOVERY_EVENTS_LOST)
            log.warning("recovery_events_lost", order_id=order.id)
            return await self.finish_confirmed(order, owner)
        if order.status == REJECTED:
            self.observer.recovery("compensate_rejected")
            # Which steps ran is not recorded: every undo is idempotent and tombstones, so run all.
            return await self.compensate(order, owner, ["reserve", "apply_discount"])
        self.observer.recovery("settle")
        return await self._settle(order, owner)


__all__ = ["OrderSaga", "OrderflowError", "Placed", "SagaObserver", "new_owner"]
