"""Orders use cases: each one checks its input, then runs as one retried transaction."""

from __future__ import annotations

import dataclasses
import functools
import uuid
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog

from orderflow.errors import IdempotencyKeyReusedError, InvalidArgumentError, NotFoundError
from orderflow.events.outbox import EventSink
from orderflow.orders import domain
from orderflow.orders.domain import (
    Driver,
    Failure,
    FollowUp,
    Order,
    OrderStatus,
    Step,
    Totals,
    own_step,
)
from orderflow.orders.events import caused
from orderflow.platform.db import Transactional, UnitOfWorkFactory, now_us, transact
from orderflow.validation import check_id, check_limit, check_range, decode_cursor, encode_cursor

DEFAULT_PAGE = 20
MAX_CLAIM = 100
# How long a CONFIRMED order waits for its follow-ups' events before recovery finishes it.
DEFAULT_EVENTS_GRACE_SECONDS = 60.0
# The most steps one history answer carries (the newest); a stuck order claimed round after
# round can log many more.
MAX_HISTORY = 500
# The step each follow-up's event stands for.
FOLLOW_UP_STEP = {FollowUp.STOCK: "commit_stock", FollowUp.LOYALTY: "commit_discount"}

log = structlog.get_logger("orderflow.orders")

Change = Callable[[Order, int], Order]


class OrderRepository(Protocol):
    async def get(self, order_id: str, *, lock: bool = False) -> Order | None: ...

    async def find_by_key(self, customer_id: str, idempotency_key: str) -> Order | None: ...

    async def add(self, order: Order) -> bool:
        """Insert order; False (nothing inserted) when its customer already used its key."""
        ...

    async def save(self, order: Order, read: Order) -> None:
        """Write order over read, the version it was computed from (compare-and-set):
        ConcurrentChangeError if the stored order is no longer at read's version."""
        ...

    async def settle(self, order_id: str, owner: str, now: int) -> Order | None:
        """domain.settle's usual case in one statement; None (nothing done) otherwise."""
        ...

    async def page(
        self, customer_id: str, status: str, before: tuple[int, str] | None, limit: int
    ) -> list[Order]:
        """Newest first, strictly older than `before` = (created_us, id)."""
        ...

    async def count_stuck(self, now: int, events_grace_us: int) -> dict[OrderStatus, int]:
        """How many orders domain.is_stuck holds for, by status (statuses with none left out)."""
        ...

    async def stale(self, now: int, limit: int, events_grace_us: int) -> list[Order]:
        """Up to limit orders for which domain.is_stale holds, oldest first, locked."""
        ...

    async def unsettled(self, limit: int) -> list[Order]:
        """Up to limit unsettled orders, oldest first, read only."""
        ...


class StepRepository(Protocol):
    """The saga's step log: rows written in the transaction of the change they record."""

    async def add(self, order_id: str, steps: Sequence[Step]) -> None:
        """Record steps in order; one whose (order id, step id) is recorded is skipped."""
        ...

    async def of(self, order_id: str, limit: int) -> tuple[list[Step], bool]:
        """The newest limit steps of the order, in time order (then in the order they were
        recorded), and whether older ones were left out."""
        ...


class OrdersUnitOfWork(Transactional, Protocol):
    @property
    def orders(self) -> OrderRepository: ...

    @property
    def steps(self) -> StepRepository: ...

    @property
    def events(self) -> EventSink: ...


class OrdersService:
    def __init__(
        self,
        uow: UnitOfWorkFactory[OrdersUnitOfWork],
        *,
        clock: Callable[[], int] = now_us,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        events_grace_seconds: float = DEFAULT_EVENTS_GRACE_SECONDS,
    ) -> None:
        self.uow = uow
        self._reader = functools.partial(uow, readonly=True)
        self.now = clock
        self.new_id = new_id
        self.events_grace_us = int(events_grace_seconds * 1_000_000)

    async def create_order(
        self,
        customer_id: str,
        lines: list[tuple[str, int]],
        redeem_points: int,
        idempotency_key: str,
        request_fingerprint: str,
        lease_owner: str,
        lease_seconds: float,
        driver: Driver = Driver.REQUEST,
    ) -> tuple[Order, bool]:
        """A new PENDING order leased to lease_owner, or the order made earlier with the key;
        True when it is lease_owner's to drive (new, or made by the same owner's earlier
        attempt and still PENDING)."""
        new = domain.new_order(
            customer_id,
            lines,
            redeem_points,
            idempotency_key,
            request_fingerprint,
            lease_owner,
            lease_seconds,
        )

        async def work(uow: OrdersUnitOfWork) -> tuple[Order, bool]:
            now = self.now()
            order = Order(
                id=self.new_id(),
                customer_id=new.customer_id,
                status=OrderStatus.PENDING,
                lines=new.lines,
                currency="",
                subtotal=0,
                discount=0,
                redeem_points=new.redeem_points,
                points_redeemed=0,
                total=0,
                points_earned=0,
                failure=None,
                idempotency_key=new.idempotency_key,
                request_fingerprint=new.request_fingerprint,
                settled=False,
                cancel_requested=False,
                lease_owner=new.lease_owner,
                lease_expires_us=now + new.lease_us,
                created_us=now,
                updated_us=now,
                version=1,
            )
            if await uow.orders.add(order):
                await uow.steps.add(
                    order.id, [own_step(order, "create", driver, now, self.now(), None)]
                )
                return order, True
            earlier = await uow.orders.find_by_key(new.customer_id, new.idempotency_key)
            if earlier is None:  # pragma: no cover - the key's row cannot vanish
                raise RuntimeError("idempotency key conflict without an order")
            if earlier.request_fingerprint != new.request_fingerprint:
                raise IdempotencyKeyReusedError(
                    f"idempotency key {new.idempotency_key!r} was already used for "
                    "a different request",
                    order_id=earlier.id,
                )
            if earlier.status is OrderStatus.PENDING and earlier.lease_owner == new.lease_owner:
                # The same request again (the gateway repeated a call whose reply was lost):
                # the order it created, still its own to drive.
                return earlier, True
            return earlier, False

        return await transact(self.uow, work)

    async def get_order(self, order_id: str) -> Order:
        order_id = check_id("order_id", order_id)
        return await transact(self._reader, lambda uow: self._get(uow, order_id))

    @staticmethod
    async def _get(uow: OrdersUnitOfWork, order_id: str, *, lock: bool = False) -> Order:
        order = await uow.orders.get(order_id, lock=lock)
        if order is None:
            raise NotFoundError(f"no order with id {order_id}", order_id=order_id)
        return order

    async def list_orders(
        self, customer_id: str, status: str, limit: int, cursor: str
    ) -> tuple[list[Order], str]:
        """Orders newest first, optionally of one customer and one status, paged by cursor."""
        if customer_id:
            check_id("customer_id", customer_id)
        if status and status not in OrderStatus.__members__:
            raise InvalidArgumentError(f"unknown status {status!r}", field="status")
        limit = check_limit(limit, default=DEFAULT_PAGE)
        before = _parse_cursor(cursor) if cursor else None

        async def work(uow: OrdersUnitOfWork) -> tuple[list[Order], str]:
            found = await uow.orders.page(customer_id, status, before, limit + 1)
            page = found[:limit]
            more = len(found) > limit
            return page, encode_cursor(f"{page[-1].created_us}:{page[-1].id}") if more else ""

        return await transact(self._reader, work)

    async def _change(
        self,
        order_id: str,
        change: Change,
        step: str,
        driver: Driver,
        steps: Sequence[Step] = (),
    ) -> Order:
        """Apply change to the order and log it as step (with the steps the driver reports,
        recorded before it), all in one transaction: a change that rolls back logs nothing."""
        order_id = check_id("order_id", order_id)
        reported = domain.check_steps(tuple(steps))

        async def work(uow: OrdersUnitOfWork) -> Order:
            started = self.now()
            read = await self._get(uow, order_id, lock=True)
            changed = change(read, started)
            logged = list(reported)
            if changed is not read:
                await uow.orders.save(changed, read)
                await uow.events.add(*caused(read, changed))
                reason = changed.failure if step == "reject" else None
                logged.append(own_step(changed, step, driver, started, self.now(), reason))
            if logged:
                await uow.steps.add(order_id, logged)
            return changed

        return await transact(self.uow, work)

    # Each change below takes `steps`: what its driver did since its last call to orders
    # (reserve, apply_discount, the undo steps, ...), recorded with the change (ADR 26).

    async def acquire_lease(
        self, order_id: str, owner: str, seconds: float, driver: Driver = Driver.REQUEST
    ) -> Order:
        owner, lease = domain.check_owner(owner), domain.lease_us(seconds)
        return await self._change(
            order_id,
            lambda order, now: domain.acquire_lease(order, owner, lease, now),
            "lease",
            driver,
        )

    async def confirm_order(
        self,
        order_id: str,
        owner: str,
        totals: Totals,
        driver: Driver = Driver.REQUEST,
        steps: Sequence[Step] = (),
    ) -> Order:
        owner = domain.check_owner(owner)
        return await self._change(
            order_id,
            lambda order, now: domain.confirm(order, owner, totals, now),
            "confirm",
            driver,
            steps,
        )

    async def reject_order(
        self,
        order_id: str,
        owner: str,
        failure: Failure,
        driver: Driver = Driver.REQUEST,
        steps: Sequence[Step] = (),
    ) -> Order:
        owner = domain.check_owner(owner)
        return await self._change(
            order_id,
            lambda order, now: domain.reject(order, owner, failure, now),
            "reject",
            driver,
            steps,
        )

    async def request_cancel(
        self,
        order_id: str,
        owner: str,
        seconds: float,
        driver: Driver = Driver.REQUEST,
        steps: Sequence[Step] = (),
    ) -> Order:
        owner, lease = domain.check_owner(owner), domain.lease_us(seconds)
        return await self._change(
            order_id,
            lambda order, now: domain.request_cancel(order, owner, lease, now),
            "request_cancel",
            driver,
            steps,
        )

    async def withdraw_cancel(
        self,
        order_id: str,
        owner: str,
        driver: Driver = Driver.REQUEST,
        steps: Sequence[Step] = (),
    ) -> Order:
        owner = domain.check_owner(owner)
        return await self._change(
            order_id,
            lambda order, now: domain.withdraw_cancel(order, owner, now),
            "withdraw_cancel",
            driver,
            steps,
        )

    async def cancel_order(
        self,
        order_id: str,
        owner: str,
        driver: Driver = Driver.REQUEST,
        steps: Sequence[Step] = (),
    ) -> Order:
        owner = domain.check_owner(owner)
        return await self._change(
            order_id, lambda order, now: domain.cancel(order, owner, now), "cancel", driver, steps
        )

    async def settle_order(
        self,
        order_id: str,
        owner: str,
        driver: Driver = Driver.REQUEST,
        steps: Sequence[Step] = (),
    ) -> Order:
        """domain.settle, tried first as one statement (the usual case), then by the rules."""
        owner = domain.check_owner(owner)
        order_id = check_id("order_id", order_id)
        reported = domain.check_steps(tuple(steps))

        async def fast(uow: OrdersUnitOfWork) -> Order | None:
            started = self.now()
            settled = await uow.orders.settle(order_id, owner, started)
            if settled is not None:
                await uow.events.add(*caused(dataclasses.replace(settled, settled=False), settled))
                step = own_step(settled, "settle", driver, started, self.now(), None)
                await uow.steps.add(order_id, [*reported, step])
            return settled

        settled = await transact(self.uow, fast)
        if settled is not None:
            return settled
        return await self._change(
            order_id,
            lambda order, now: domain.settle(order, owner, now),
            "settle",
            driver,
            reported,
        )

    async def record_steps(self, order_id: str, steps: Sequence[Step]) -> Order:
        """Record steps a driver ran that no change of the order carried (an undo that could
        not run, a cancel that failed half-way); idempotent on (order id, step id)."""
        order_id = check_id("order_id", order_id)
        reported = domain.check_steps(tuple(steps))

        async def work(uow: OrdersUnitOfWork) -> Order:
            order = await self._get(uow, order_id)
            if reported:
                await uow.steps.add(order_id, reported)
            return order

        return await transact(self.uow, work)

    async def order_history(self, order_id: str) -> tuple[Order, list[Step], bool]:
        """The order, its newest MAX_HISTORY steps in time order, and whether older ones were
        left out."""
        order_id = check_id("order_id", order_id)

        async def work(uow: OrdersUnitOfWork) -> tuple[Order, list[Step], bool]:
            order = await self._get(uow, order_id)
            steps, truncated = await uow.steps.of(order_id, MAX_HISTORY)
            return order, steps, truncated

        return await transact(self._reader, work)

    async def list_unsettled(self, limit: int) -> tuple[list[Order], bool, list[str]]:
        """Unsettled orders, oldest first, as they are (nothing claimed); whether there are
        more than limit; and the ids of those that are stuck (domain.is_stuck, the rule of
        orderflow_orders_stuck). What an operator looks at (the console's attention list)."""
        limit = check_limit(limit, default=DEFAULT_PAGE)

        async def work(uow: OrdersUnitOfWork) -> tuple[list[Order], bool, list[str]]:
            found = await uow.orders.unsettled(limit + 1)
            page, now = found[:limit], self.now()
            stuck = [o.id for o in page if domain.is_stuck(o, now, self.events_grace_us)]
            return page, len(found) > limit, stuck

        return await transact(self._reader, work)

    async def claim_stale(self, owner: str, seconds: float, limit: int) -> list[Order]:
        """Lease up to limit unsettled orders whose lease ran out to owner, oldest first."""
        owner, lease = domain.check_owner(owner), domain.lease_us(seconds)
        limit = check_range("limit", limit, 1, MAX_CLAIM)

        async def work(uow: OrdersUnitOfWork) -> list[Order]:
            now = self.now()
            claimed = []
            for read in await uow.orders.stale(now, limit, self.events_grace_us):
                order = domain.claim(read, owner, lease, now, self.events_grace_us)
                await uow.orders.save(order, read)
                step = own_step(order, "claim", Driver.RECOVERY, now, self.now(), None)
                await uow.steps.add(order.id, [step])
                claimed.append(order)
            return claimed

        return await transact(self.uow, work)

    async def count_stuck(self) -> dict[OrderStatus, int]:
        """Orders whose saga outlived its driver (domain.is_stuck), by status, every status
        present: what orderflow_orders_stuck shows."""

        async def work(uow: OrdersUnitOfWork) -> dict[OrderStatus, int]:
            return await uow.orders.count_stuck(self.now(), self.events_grace_us)

        counted = await transact(self._reader, work)
        return {status: counted.get(status, 0) for status in OrderStatus}

    async def record_follow_up(
        self, uow: OrdersUnitOfWork, order_id: str, follow_up: FollowUp
    ) -> Order:
        """In the unit of work of the consumer of a follow-up's event: record that it is
        done, and settle the order once both are (domain.follow_up_done)."""
        started = self.now()
        read = await self._get(uow, order_id, lock=True)
        changed = domain.follow_up_done(read, follow_up, started)
        if changed is not read:
            await uow.orders.save(changed, read)
            await uow.events.add(*caused(read, changed))
            now = self.now()
            steps = [own_step(changed, FOLLOW_UP_STEP[follow_up], Driver.EVENT, started, now, None)]
            if changed.settled and not read.settled:
                steps.append(own_step(changed, "settle", Driver.EVENT, now, now, None))
                log.debug("order_settled_by_events", order_id=order_id)
            await uow.steps.add(order_id, steps)
        return changed


def _parse_cursor(cursor: str) -> tuple[int, str]:
    created, _, order_id = decode_cursor(cursor).partition(":")
    if not (created.isascii() and created.isdigit() and len(created) <= 18) or not order_id:
        raise InvalidArgumentError("cursor is not valid", field="cursor")
    return int(created), order_id
