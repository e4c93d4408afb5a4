"""In-memory fakes of the gateway's ports: enough behaviour to test the saga, plus a call log."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

from orderflow.errors import (
    CompensatedError,
    IdempotencyKeyReusedError,
    InsufficientPointsError,
    InvalidStateError,
    NotCancellableError,
    NotFoundError,
    OrderflowError,
    OutOfStockError,
    UnknownSkuError,
)
from orderflow.gateway.ports import (
    CANCELLED,
    CONFIRMED,
    EVENT,
    OK,
    PENDING,
    RECOVERY,
    REJECTED,
    REQUEST,
    Account,
    Discount,
    EventsBacklog,
    Failure,
    History,
    Idempotency,
    Item,
    Line,
    LowStock,
    NewOrder,
    Order,
    Page,
    PointsEntry,
    Reservation,
    SagaStep,
    Unsettled,
)


class Calls:
    """A shared log of calls across fakes, and errors to raise on chosen calls."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.failures: dict[str, OrderflowError] = {}

    def __call__(self, name: str) -> None:
        self.log.append(name)
        if name in self.failures:
            raise self.failures[name]

    def fail(self, name: str, error: OrderflowError) -> None:
        self.failures[name] = error

    def heal(self) -> None:
        self.failures.clear()


class FakeOrders:
    async def events_backlog(self, limit: int) -> EventsBacklog:
        """A fake keeps no outbox: nothing pending, nothing parked."""
        return EventsBacklog("orders", 0, None, [], 0)

    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self.orders: dict[str, Order] = {}
        self.keys: dict[tuple[str, str], tuple[str, str]] = {}
        self._ids = itertools.count(1)
        # A CONFIRMED order is handed to recovery only once its events had their time.
        self.events_grace_over = False
        self.followed_up: set[str] = set()
        # The step log as the orders service keeps it: reported steps (once per step id),
        # then the change's own step, only when the change went through and changed the order.
        self.steps: dict[str, list[SagaStep]] = {}

    def _log(
        self,
        order_id: str,
        name: str,
        driver: str,
        reported: Sequence[SagaStep] = (),
        *,
        changed: bool = True,
        error: Failure | None = None,
    ) -> None:
        log = self.steps.setdefault(order_id, [])
        known = {x.step_id for x in log}
        log.extend(x for x in reported if x.step_id not in known)
        if changed:
            now = datetime.now(UTC)
            log.append(SagaStep(f"{name}@{len(log)}", name, OK, driver, now, 0, error))

    def history(self, order_id: str) -> list[tuple[str, str, str]]:
        """(name, outcome, driver) of each step of the order, in recording order."""
        return [(x.name, x.outcome, x.driver) for x in self.steps.get(order_id, [])]

    async def create_order(self, new: NewOrder) -> tuple[Order, bool]:
        self.calls("orders.create")
        if (new.customer_id, new.idempotency_key) in self.keys:
            order_id, fingerprint = self.keys[(new.customer_id, new.idempotency_key)]
            if fingerprint != new.fingerprint:
                raise IdempotencyKeyReusedError("key reused")
            return self.orders[order_id], False
        order = Order(
            id=f"o-{next(self._ids)}",
            customer_id=new.customer_id,
            status=PENDING,
            lines=new.lines,
            redeem_points=new.redeem_points,
            lease_owner=new.lease_owner,
        )
        self.orders[order.id] = order
        self.keys[(new.customer_id, new.idempotency_key)] = (order.id, new.fingerprint)
        self._log(order.id, "create", REQUEST)
        return order, True

    async def get_order(self, order_id: str) -> Order:
        if order_id not in self.orders:
            raise NotFoundError("no such order")
        return self.orders[order_id]

    async def list_orders(
        self, customer_id: str, status: str, limit: int, cursor: str
    ) -> Page[Order]:
        found = [o for o in self.orders.values() if not customer_id or o.customer_id == customer_id]
        return Page(found[:limit], None)

    async def list_unsettled(self, limit: int) -> Unsettled:
        """Every unsettled order; none is judged stuck (a fake keeps no lease times)."""
        found = [o for o in self.orders.values() if not o.settled]
        return Unsettled(found[:limit], frozenset(), len(found) > limit)

    def _set(self, order: Order, **changes: object) -> Order:
        updated = replace(order, **changes)  # type: ignore[arg-type]
        self.orders[order.id] = updated
        return updated

    async def confirm_order(
        self,
        order_id: str,
        owner: str,
        reservation: Reservation,
        subtotal: int,
        discount: Discount,
        *,
        driver: str = REQUEST,
        steps: Sequence[SagaStep] = (),
    ) -> Order:
        self.calls("orders.confirm")
        order = self.orders[order_id]
        if order.status == CONFIRMED:
            self._log(order_id, "confirm", driver, steps, changed=False)
            return order
        if order.status != PENDING:
            raise InvalidStateError(f"order is {order.status}")
        self._log(order_id, "confirm", driver, steps)
        return self._set(
            order,
            status=CONFIRMED,
            lease_owner="",
            lines=reservation.lines,
            currency=reservation.currency,
            subtotal=subtotal,
            discount=discount.discount,
            points_redeemed=discount.points_redeemed,
            total=discount.total,
            points_earned=discount.points_earned,
        )

    async def reject_order(
        self,
        order_id: str,
        owner: str,
        failure: Failure,
        *,
        driver: str = REQUEST,
        steps: Sequence[SagaStep] = (),
    ) -> Order:
        self.calls("orders.reject")
        order = self.orders[order_id]
        if order.status == REJECTED:
            self._log(order_id, "reject", driver, steps, changed=False)
            return order
        if order.status != PENDING:
            raise InvalidStateError(f"order is {order.status}")
        self._log(order_id, "reject", driver, steps, error=failure)
        return self._set(order, status=REJECTED, failure=failure)

    async def request_cancel(
        self,
        order_id: str,
        owner: str,
        seconds: float,
        *,
        driver: str = REQUEST,
        steps: Sequence[SagaStep] = (),
    ) -> Order:
        self.calls("orders.request_cancel")
        order = await self.get_order(order_id)
        if order.status == CANCELLED:
            return order
        if order.status != CONFIRMED:
            raise NotCancellableError(f"order is {order.status}", status=order.status)
        self._log(order_id, "request_cancel", driver, steps)
        return self._set(order, cancel_requested=True, settled=False, lease_owner=owner)

    async def withdraw_cancel(
        self, order_id: str, owner: str, *, driver: str = REQUEST, steps: Sequence[SagaStep] = ()
    ) -> Order:
        self.calls("orders.withdraw_cancel")
        settled = order_id in self.followed_up
        self._log(order_id, "withdraw_cancel", driver, steps)
        return self._set(self.orders[order_id], cancel_requested=False, settled=settled)

    def follow_ups_done(self, order_id: str) -> Order:
        """What the orders service does once stock.committed and loyalty.committed of the
        order were consumed: a CONFIRMED order not being cancelled is settled."""
        self.followed_up.add(order_id)
        self._log(order_id, "commit_stock", EVENT)
        self._log(order_id, "commit_discount", EVENT)
        order = self.orders[order_id]
        if order.status == CONFIRMED and not order.cancel_requested and not order.settled:
            self._log(order_id, "settle", EVENT)
            return self._set(order, settled=True, lease_owner="")
        return order

    async def cancel_order(
        self, order_id: str, owner: str, *, driver: str = REQUEST, steps: Sequence[SagaStep] = ()
    ) -> Order:
        self.calls("orders.cancel")
        order = self.orders[order_id]
        if order.status == CANCELLED:
            self._log(order_id, "cancel", driver, steps, changed=False)
            return order
        self._log(order_id, "cancel", driver, steps)
        return self._set(order, status=CANCELLED, settled=True, lease_owner="")

    async def settle_order(
        self, order_id: str, owner: str, *, driver: str = REQUEST, steps: Sequence[SagaStep] = ()
    ) -> Order:
        self.calls("orders.settle")
        self._log(order_id, "settle", driver, steps, changed=not self.orders[order_id].settled)
        return self._set(self.orders[order_id], settled=True, lease_owner="")

    async def claim_stale(self, owner: str, seconds: float, limit: int) -> list[Order]:
        self.calls("orders.claim_stale")
        stale = [
            o
            for o in self.orders.values()
            if not o.settled
            and (o.status != CONFIRMED or o.cancel_requested or self.events_grace_over)
        ][:limit]
        for order in stale:
            self._log(order.id, "claim", RECOVERY)
        return [self._set(o, lease_owner=owner) for o in stale]

    async def record_steps(self, order_id: str, steps: Sequence[SagaStep]) -> None:
        self.calls("orders.record_steps")
        await self.get_order(order_id)
        self._log(order_id, "", REQUEST, steps, changed=False)

    async def order_history(self, order_id: str) -> History:
        order = await self.get_order(order_id)
        return History(order, tuple(self.steps.get(order_id, [])))


class FakeInventory:
    async def events_backlog(self, limit: int) -> EventsBacklog:
        """A fake keeps no outbox: nothing pending, nothing parked."""
        return EventsBacklog("inventory", 0, None, [], 0)

    def __init__(self, calls: Calls, stock: dict[str, tuple[int, int]] | None = None) -> None:
        """stock: sku -> (price, available)."""
        self.calls = calls
        self.items = {
            sku: {"price": price, "available": n, "reserved": 0, "sold": 0}
            for sku, (price, n) in (stock or {}).items()
        }
        self.reservations: dict[str, tuple[str, tuple[Line, ...]]] = {}

    async def reserve(self, order_id: str, lines: Sequence[Line]) -> Reservation:
        self.calls("inventory.reserve")
        state, held = self.reservations.get(order_id, ("", ()))
        if state in ("RELEASED", "RETURNED"):
            raise CompensatedError("reservation was released")
        if state:
            return Reservation(held, "USD")
        unknown = [x.sku for x in lines if x.sku not in self.items]
        if unknown:
            raise UnknownSkuError(f"unknown skus: {unknown}", skus=unknown)
        for x in lines:
            if self.items[x.sku]["available"] < x.quantity:
                raise OutOfStockError(f"{x.sku} is out of stock", sku=x.sku)
        priced = []
        for x in lines:
            self.items[x.sku]["available"] -= x.quantity
            self.items[x.sku]["reserved"] += x.quantity
            priced.append(Line(x.sku, x.quantity, self.items[x.sku]["price"]))
        self.reservations[order_id] = ("RESERVED", tuple(priced))
        return Reservation(tuple(priced), "USD")

    def _move(self, order_id: str, source: str, target: str, new_state: str) -> None:
        _, held = self.reservations[order_id]
        for x in held:
            self.items[x.sku][source] -= x.quantity
            self.items[x.sku][target] += x.quantity
        self.reservations[order_id] = (new_state, held)

    async def release(self, order_id: str) -> None:
        self.calls("inventory.release")
        state, _ = self.reservations.get(order_id, ("", ()))
        if state == "RESERVED":
            self._move(order_id, "reserved", "available", "RELEASED")
        elif not state:
            self.reservations[order_id] = ("RELEASED", ())

    async def commit_stock(self, order_id: str) -> None:
        """Also what inventory's consumer of order.confirmed does (a late one: no effect)."""
        self.calls("inventory.commit_stock")
        if self.reservations[order_id][0] == "RESERVED":
            self._move(order_id, "reserved", "sold", "COMMITTED")

    async def return_stock(self, order_id: str) -> None:
        self.calls("inventory.return")
        state, _ = self.reservations.get(order_id, ("", ()))
        if state == "COMMITTED":
            self._move(order_id, "sold", "available", "RETURNED")
        elif state == "RESERVED":
            self._move(order_id, "reserved", "available", "RETURNED")

    async def create_item(
        self, sku: str, name: str, price: int, stock: int, idem: Idempotency | None = None
    ) -> Item:
        raise NotImplementedError

    async def get_item(self, sku: str) -> Item:
        i = self.items[sku]
        return Item(sku, sku, i["price"], "USD", i["available"], i["reserved"], i["sold"])

    async def list_items(self, limit: int, cursor: str) -> Page[Item]:
        return Page([await self.get_item(s) for s in self.items][:limit], None)

    async def list_low_stock(self, limit: int) -> LowStock:
        found = [await self.get_item(s) for s in self.items]
        low = sorted((i for i in found if i.available <= 5), key=lambda i: (i.available, i.sku))
        return LowStock(low[:limit], 5, len(low) > limit)

    async def update_item(
        self,
        sku: str,
        name: str | None,
        price: int | None,
        restock: int | None,
        idem: Idempotency | None = None,
    ) -> Item:
        raise NotImplementedError


class FakeLoyalty:
    async def events_backlog(self, limit: int) -> EventsBacklog:
        """A fake keeps no outbox: nothing pending, nothing parked."""
        return EventsBacklog("loyalty", 0, None, [], 0)

    def __init__(self, calls: Calls, points: dict[str, int] | None = None, percent: int = 10):
        self.calls = calls
        self.points = dict(points or {})
        self.percent = percent
        self.applications: dict[str, tuple[str, str, Discount]] = {}

    async def apply_discount(
        self, order_id: str, customer_id: str, subtotal: int, redeem_points: int
    ) -> Discount:
        self.calls("loyalty.apply_discount")
        if order_id in self.applications:
            state, _, d = self.applications[order_id]
            if state in ("CANCELLED", "REFUNDED"):
                raise CompensatedError("application was cancelled")
            return d
        balance = self.points.setdefault(customer_id, 0)
        if redeem_points > balance:
            raise InsufficientPointsError("not enough points", available=balance)
        discount = subtotal * self.percent // 100
        total = subtotal - discount - redeem_points
        self.points[customer_id] = balance - redeem_points
        d = Discount(discount, redeem_points, total, total // 100, self.percent, "gold")
        self.applications[order_id] = ("APPLIED", customer_id, d)
        return d

    async def void_discount(self, order_id: str) -> None:
        self.calls("loyalty.void_discount")
        state, customer, d = self.applications.get(order_id, ("", "", Discount(0, 0, 0, 0)))
        if state == "APPLIED":
            self.points[customer] += d.points_redeemed
            self.applications[order_id] = ("CANCELLED", customer, d)
        elif not state:
            self.applications[order_id] = ("CANCELLED", "", d)

    async def commit_discount(self, order_id: str) -> None:
        """Also what loyalty's consumer of order.confirmed does (a late one: no effect)."""
        self.calls("loyalty.commit_discount")
        state, customer, d = self.applications[order_id]
        if state == "APPLIED":
            self.points[customer] += d.points_earned
            self.applications[order_id] = ("COMMITTED", customer, d)

    async def refund_discount(self, order_id: str) -> None:
        self.calls("loyalty.refund_discount")
        state, customer, d = self.applications[order_id]
        if state == "APPLIED":  # its order.confirmed was not consumed yet
            self.points[customer] += d.points_redeemed
            self.applications[order_id] = ("REFUNDED", customer, d)
        elif state == "COMMITTED":
            net = d.points_redeemed - d.points_earned
            if self.points[customer] + net < 0:
                raise NotCancellableError("earned points already spent")
            self.points[customer] += net
            self.applications[order_id] = ("REFUNDED", customer, d)

    async def get_account(self, customer_id: str) -> Account:
        if customer_id not in self.points:
            raise NotFoundError("no account")
        return Account(customer_id, "gold", self.percent, self.points[customer_id])

    async def list_entries(self, customer_id: str, limit: int, cursor: str) -> Page[PointsEntry]:
        return Page([], None)

    async def set_tier(
        self, customer_id: str, tier: str, idem: Idempotency | None = None
    ) -> Account:
        raise NotImplementedError

    async def adjust_points(
        self, customer_id: str, delta: int, reason: str, idem: Idempotency | None = None
    ) -> Account:
        raise NotImplementedError


async def consume_order_confirmed(
    orders: FakeOrders, inventory: FakeInventory, loyalty: FakeLoyalty, order_id: str
) -> Order:
    """What the services' consumers do with order.confirmed and the events it causes:
    inventory commits the stock, loyalty earns the points, orders settles the order."""
    await inventory.commit_stock(order_id)
    await loyalty.commit_discount(order_id)
    return orders.follow_ups_done(order_id)
