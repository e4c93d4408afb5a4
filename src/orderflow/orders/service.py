"""Orders use cases: each one checks its input, then runs as one retried transaction."""

from __future__ import annotations

import dataclasses
import functools
import uuid
from collections.abc import Callable
from typing import Protocol

import structlog

from orderflow.errors import IdempotencyKeyReusedError, InvalidArgumentError, NotFoundError
from orderflow.events.outbox import EventSink
from orderflow.orders import domain
from orderflow.orders.domain import Failure, FollowUp, Order, OrderStatus, Totals
from orderflow.orders.events import caused
from orderflow.platform.db import Transactional, UnitOfWorkFactory, now_us, transact
from orderflow.validation import check_id, check_limit, check_range, decode_cursor, encode_cursor

DEFAULT_PAGE = 20
MAX_CLAIM = 100
# How long a CONFIRMED order waits for its follow-ups' events before recovery finishes it.
DEFAULT_EVENTS_GRACE_SECONDS = 60.0

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

    async def stale(self, now: int, limit: int, events_grace_us: int) -> list[Order]:
        """Up to limit orders for which domain.is_stale holds, oldest first, locked."""
        ...


class OrdersUnitOfWork(Transactional, Protocol):
    @property
    def orders(self) -> OrderRepository: ...

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

    async def _change(self, order_id: str, change: Change) -> Order:
        order_id = check_id("order_id", order_id)

        async def work(uow: OrdersUnitOfWork) -> Order:
            read = await self._get(uow, order_id, lock=True)
            changed = change(read, self.now())
            if changed is not read:
                await uow.orders.save(changed, read)
                await uow.events.add(*caused(read, changed))
            return changed

        return await transact(self.uow, work)

    async def acquire_lease(self, order_id: str, owner: str, seconds: float) -> Order:
        owner, lease = domain.check_owner(owner), domain.lease_us(seconds)
        return await self._change(
            order_id, lambda order, now: domain.acquire_lease(order, owner, lease, now)
        )

    async def confirm_order(self, order_id: str, owner: str, totals: Totals) -> Order:
        owner = domain.check_owner(owner)
        return await self._change(
            order_id, lambda order, now: domain.confirm(order, owner, totals, now)
        )

    async def reject_order(self, order_id: str, owner: str, failure: Failure) -> Order:
        owner = domain.check_owner(owner)
        return await self._change(
            order_id, lambda order, now: domain.reject(order, owner, failure, now)
        )

    async def request_cancel(self, order_id: str, owner: str, seconds: float) -> Order:
        owner, lease = domain.check_owner(owner), domain.lease_us(seconds)
        return await self._change(
            order_id, lambda order, now: domain.request_cancel(order, owner, lease, now)
        )

    async def withdraw_cancel(self, order_id: str, owner: str) -> Order:
        owner = domain.check_owner(owner)
        return await self._change(
            order_id, lambda order, now: domain.withdraw_cancel(order, owner, now)
        )

    async def cancel_order(self, order_id: str, owner: str) -> Order:
        owner = domain.check_owner(owner)
        return await self._change(order_id, lambda order, now: domain.cancel(order, owner, now))

    async def settle_order(self, order_id: str, owner: str) -> Order:
        """domain.settle, tried first as one statement (the usual case), then by the rules."""
        owner = domain.check_owner(owner)
        order_id = check_id("order_id", order_id)

        async def fast(uow: OrdersUnitOfWork) -> Order | None:
            settled = await uow.orders.settle(order_id, owner, self.now())
            if settled is not None:
                await uow.events.add(*caused(dataclasses.replace(settled, settled=False), settled))
            return settled

        settled = await transact(self.uow, fast)
        if settled is not None:
            return settled
        return await self._change(order_id, lambda order, now: domain.settle(order, owner, now))

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
                claimed.append(order)
            return claimed

        return await transact(self.uow, work)

    async def record_follow_up(
        self, uow: OrdersUnitOfWork, order_id: str, follow_up: FollowUp
    ) -> Order:
        """In the unit of work of the consumer of a follow-up's event: record that it is
        done, and settle the order once both are (domain.follow_up_done)."""
        read = await self._get(uow, order_id, lock=True)
        changed = domain.follow_up_done(read, follow_up, self.now())
        if changed is not read:
            await uow.orders.save(changed, read)
            await uow.events.add(*caused(read, changed))
            if changed.settled and not read.settled:
                log.debug("order_settled_by_events", order_id=order_id)
        return changed


def _parse_cursor(cursor: str) -> tuple[int, str]:
    created, _, order_id = decode_cursor(cursor).partition(":")
    if not (created.isascii() and created.isdigit() and len(created) <= 18) or not order_id:
        raise InvalidArgumentError("cursor is not valid", field="cursor")
    return int(created), order_id
