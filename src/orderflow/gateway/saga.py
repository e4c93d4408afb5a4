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

Each pass of a driver over an order is a `Run`: its lease owner, whether it answers a
request or is the recovery worker, and the steps it ran that orders has not recorded yet.
Those go with its next call to orders (confirm, reject, settle, cancel, ...), which records
them in the transaction of its change, so the order path makes no extra call for its
history; what is left at the end of the run (an undo that could not run, a call that
failed) goes in one RecordOrderSteps call (ADR 26).

Every step is idempotent on the order id, so `resume()` can drive any order found
unsettled from wherever it stopped; a CONFIRMED order only once its events were lost
(orders hands it out after ORDERFLOW_ORDERS_EVENTS_GRACE_SECONDS), by the calls
commit_stock, commit_discount and settle_order.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
    FAILED,
    OK,
    PENDING,
    RECOVERY,
    REJECTED,
    REQUEST,
    UNKNOWN,
    Failure,
    InventoryPort,
    Line,
    LoyaltyPort,
    NewOrder,
    Order,
    OrdersPort,
    SagaStep,
)

log = structlog.get_logger("orderflow.saga")

T = TypeVar("T")

# Outcomes reported to metrics and logs.
OUTCOME_CONFIRMED = "confirmed"
OUTCOME_REJECTED = "rejected"
OUTCOME_UNFINISHED = "unfinished"
# Recovery action for a CONFIRMED order its events did not settle in time (never expected).
RECOVERY_EVENTS_LOST = "events_lost"
# A step's name in the order's history where it differs from its name in the metrics.
HISTORY_NAME = {"cancel_order": "cancel"}
# The forward steps that have an undo, in the order they run.
ALL_UNDOABLE = ("reserve", "apply_discount")

# The most steps orders takes in one report (SagaStep lists in orders.proto).
MAX_REPORT = 64


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


@dataclass
class Run:
    """One driver's pass over one order: the lease owner it acts as, its driver (REQUEST or
    RECOVERY), and the steps it ran that orders has not recorded yet (`pending`)."""

    owner: str
    driver: str
    pending: list[SagaStep] = field(default_factory=list)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    _count: int = 0

    def record(
        self, name: str, started_at: datetime, seconds: float, error: OrderflowError | None
    ) -> None:
        self._count += 1
        outcome = OK if error is None else UNKNOWN if isinstance(error, DependencyError) else FAILED
        self.pending.append(
            SagaStep(
                step_id=f"{self.id}.{self._count}",
                name=HISTORY_NAME.get(name, name),
                outcome=outcome,
                driver=self.driver,
                started_at=started_at,
                duration_us=max(0, round(seconds * 1_000_000)),
                error=None if error is None else Failure(error.code, error.message),
            )
        )

    def take(self) -> tuple[SagaStep, ...]:
        """The oldest pending steps (as many as one report takes), to go with a call to
        orders (given back if it fails)."""
        steps, self.pending = tuple(self.pending[:MAX_REPORT]), self.pending[MAX_REPORT:]
        return steps

    def give_back(self, steps: tuple[SagaStep, ...]) -> None:
        self.pending[:0] = steps


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
        wall_clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.orders = orders
        self.inventory = inventory
        self.loyalty = loyalty
        self.lease_seconds = lease_seconds
        self.owner_prefix = owner_prefix
        self.observer = observer or SagaObserver()
        self._clock = clock or time.perf_counter
        self._wall_clock = wall_clock or (lambda: datetime.now(UTC))

    async def _step(
        self,
        name: str,
        call: Callable[[], Awaitable[T]],
        run: Run | None = None,
        *,
        own: bool = False,
    ) -> T:
        """Run one step, timed for the metrics; with a run, logged in its pending steps —
        unless it is a change orders makes and logs itself (`own`) and it went through."""
        start, started_at = self._clock(), self._wall_clock()
        ok = False
        error: OrderflowError | None = None
        try:
            result = await call()
            ok = True
            return result
        except OrderflowError as exc:
            error = exc
            raise
        finally:
            seconds = self._clock() - start
            self.observer.step(name, seconds, ok)
            if run is not None and (error is not None or (ok and not own)):
                run.record(name, started_at, seconds, error)

    async def _tell(
        self, name: str, run: Run, call: Callable[[tuple[SagaStep, ...]], Awaitable[T]]
    ) -> T:
        """A change made by orders, carrying the run's pending steps: orders records them
        with the change; if the call fails they stay pending, the failed call after them."""
        steps = run.take()
        try:
            return await self._step(name, lambda: call(steps), run, own=True)
        except BaseException:
            run.give_back(steps)
            raise

    @contextlib.asynccontextmanager
    async def _run(self, order_id: str, owner: str, driver: str) -> AsyncIterator[Run]:
        """A run over the order; steps no call to orders carried are recorded at its end
        (only when something failed on the way: on the order path nothing is left)."""
        run = Run(owner, driver)
        try:
            yield run
        except OrderflowError:
            await self._flush(order_id, run)
            raise
        await self._flush(order_id, run)

    async def _flush(self, order_id: str, run: Run) -> None:
        while run.pending:
            steps = run.take()
            try:
                await self.orders.record_steps(order_id, steps)
            except OrderflowError as exc:
                # The order itself is safe; only these lines of its history are lost.
                log.warning(
                    "steps_not_recorded",
                    order_id=order_id,
                    steps=len(steps) + len(run.pending),
                    error=exc.message,
                )
                return

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
        async with self._run(order.id, new.lease_owner, REQUEST) as run:
            return Placed(await self.drive(order, run), created=True)

    async def drive(self, order: Order, run: Run, *, resumed: bool = False) -> Order:
        """Run a PENDING order forward to CONFIRMED (its events finish it); on failure reject
        it and undo what was done. A `resumed` order (recovery) may hold what an earlier
        driver did before it died, so a rejection then undoes every step: each undo is
        idempotent and leaves a tombstone."""
        done: list[str] = []  # undoable steps that went through, in order
        step = "reserve"
        try:
            reservation = await self._step(
                "reserve", lambda: self.inventory.reserve(order.id, order.lines), run
            )
            done.append(step)
            subtotal = sum(line.quantity * line.unit_price for line in reservation.lines)
            step = "apply_discount"
            discount = await self._step(
                "apply_discount",
                lambda: self.loyalty.apply_discount(
                    order.id, order.customer_id, subtotal, order.redeem_points
                ),
                run,
            )
            done.append(step)
            step = "confirm"
            confirmed = await self._tell(
                "confirm",
                run,
                lambda steps: self.orders.confirm_order(
                    order.id,
                    run.owner,
                    reservation,
                    subtotal,
                    discount,
                    driver=run.driver,
                    steps=steps,
                ),
            )
        except OrderflowError as exc:
            if step == "confirm" and isinstance(exc, (LeaseHeldError, InvalidStateError)):
                # Another driver (the recovery worker) owns the order now: leave it to them.
                self.observer.outcome(OUTCOME_UNFINISHED, "lease_lost")
                return await self.orders.get_order(order.id)
            if isinstance(exc, DependencyError) and step != "confirm":
                # No clear answer: the step may have acted, so it is undone too.
                done.append(step)
            if resumed:
                done = list(ALL_UNDOABLE)
            return await self._reject(order, run, done, Failure(exc.code, exc.message))
        self.observer.outcome(OUTCOME_CONFIRMED, "")
        return confirmed

    async def _reject(self, order: Order, run: Run, done: list[str], failure: Failure) -> Order:
        try:
            rejected = await self._tell(
                "reject",
                run,
                lambda steps: self.orders.reject_order(
                    order.id, run.owner, failure, driver=run.driver, steps=steps
                ),
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
        return await self.compensate(rejected, run, done)

    async def compensate(self, order: Order, run: Run, done: list[str]) -> Order:
        """Undo `done` in reverse, then settle the order if every undo went through."""
        undo: dict[str, tuple[str, Callable[[], Awaitable[None]]]] = {
            "apply_discount": ("void_discount", lambda: self.loyalty.void_discount(order.id)),
            "reserve": ("release", lambda: self.inventory.release(order.id)),
        }
        complete = True
        for step in reversed(done):
            try:
                await self._step(*undo[step], run)
            except DependencyError as exc:
                complete = False
                log.warning("undo_deferred", order_id=order.id, step=step, error=exc.message)
        if not complete:
            return order
        return await self._settle(order, run)

    async def finish_confirmed(self, order: Order, run: Run) -> Order:
        """Run the follow-ups of a CONFIRMED order (commit_stock, commit_discount) by calls,
        then settle: only for an order whose events were lost (recovery)."""
        try:
            await self._step("commit_stock", lambda: self.inventory.commit_stock(order.id), run)
            await self._step("commit_discount", lambda: self.loyalty.commit_discount(order.id), run)
        except DependencyError as exc:
            log.warning("follow_up_deferred", order_id=order.id, error=exc.message)
            return order
        return await self._settle(order, run)

    async def _settle(self, order: Order, run: Run) -> Order:
        try:
            return await self._tell(
                "settle",
                run,
                lambda steps: self.orders.settle_order(
                    order.id, run.owner, driver=run.driver, steps=steps
                ),
            )
        except (DependencyError, LeaseHeldError) as exc:
            log.warning("settle_deferred", order_id=order.id, error=exc.message)
            return order

    # -- cancelling --------------------------------------------------------------------

    async def cancel_order(self, order_id: str) -> Order:
        """Cancel a CONFIRMED order (NotCancellableError otherwise); a CANCELLED one is returned."""
        async with self._run(order_id, new_owner(self.owner_prefix), REQUEST) as run:
            # Whether or not order.confirmed was consumed yet: a late one finds the stock
            # returned and the discount refunded, and has no effect (ADR 18).
            order = await self._tell(
                "request_cancel",
                run,
                lambda steps: self.orders.request_cancel(
                    order_id, run.owner, self.lease_seconds, driver=run.driver, steps=steps
                ),
            )
            if order.status == CANCELLED:
                return order
            return await self.continue_cancel(order, run)

    async def continue_cancel(self, order: Order, run: Run) -> Order:
        try:
            await self._step("refund_discount", lambda: self.loyalty.refund_discount(order.id), run)
        except NotCancellableError:
            # Nothing was undone yet: the order stays CONFIRMED, as it was (settled again
            # by withdraw_cancel once its follow-ups have reported).
            await self._tell(
                "withdraw_cancel",
                run,
                lambda steps: self.orders.withdraw_cancel(
                    order.id, run.owner, driver=run.driver, steps=steps
                ),
            )
            raise
        await self._step("return_stock", lambda: self.inventory.return_stock(order.id), run)
        return await self._tell(
            "cancel_order",
            run,
            lambda steps: self.orders.cancel_order(
                order.id, run.owner, driver=run.driver, steps=steps
            ),
        )

    # -- recovery ----------------------------------------------------------------------

    async def resume(self, order: Order, owner: str) -> Order:
        """Drive an unsettled order (claimed by the recovery worker) to a settled state."""
        structlog.contextvars.bind_contextvars(order_id=order.id)
        async with self._run(order.id, owner, RECOVERY) as run:
            return await self._resume(order, run)

    async def _resume(self, order: Order, run: Run) -> Order:
        if order.status == PENDING:
            self.observer.recovery("drive_pending")
            return await self.drive(order, run, resumed=True)
        if order.status == CONFIRMED and order.cancel_requested:
            self.observer.recovery("finish_cancel")
            try:
                return await self.continue_cancel(order, run)
            except NotCancellableError:
                return await self.orders.get_order(order.id)
        if order.status == CONFIRMED:
            # orders hands out a CONFIRMED order only when its events did not settle it in
            # time: they were lost (a parked event, a broker gone for good). Never expected.
            self.observer.recovery(RECOVERY_EVENTS_LOST)
            log.warning("recovery_events_lost", order_id=order.id)
            return await self.finish_confirmed(order, run)
        if order.status == REJECTED:
            self.observer.recovery("compensate_rejected")
            # The step log is for people, not read here: every undo is idempotent and
            # tombstones, so run all.
            return await self.compensate(order, run, list(ALL_UNDOABLE))
        self.observer.recovery("settle")
        return await self._settle(order, run)


__all__ = ["OrderSaga", "OrderflowError", "Placed", "Run", "SagaObserver", "new_owner"]
