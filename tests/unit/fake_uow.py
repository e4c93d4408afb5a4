"""In-memory repositories and units of work for the services' unit tests (no database).

A fake unit of work keeps the SQL one's promise: what a block did is kept only if
`commit()` ran, otherwise everything is put back as it was on entry. Each fake store counts
its commits and rollbacks, so a test can tell a repeat that rolled back from one that wrote.
The repositories do what the SQL ones do, in dicts: conditional moves refuse to drive a
counter negative, compare-and-set refuses a stale version, unique keys refuse a duplicate.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any, Self

from google.protobuf.message import Message

from orderflow.errors import ConcurrentChangeError, InvalidStateError, LeaseHeldError
from orderflow.inventory.domain import (
    Item,
    ItemChange,
    NewItem,
    Reservation,
    ReservationState,
    ReservedLine,
)
from orderflow.loyalty.domain import Application, ApplicationState, BookedEntry, LedgerEntry
from orderflow.orders import domain as orders_domain
from orderflow.orders.domain import Order, OrderStatus, Step
from orderflow.platform.idempotency import KeyRecord


class DuplicateKeyError(Exception):
    """What a unique key of the SQL schema would refuse (IntegrityError there)."""


class FakeRepository:
    """A repository whose rows live in its attributes (dicts and lists of frozen values)."""

    def snapshot(self) -> dict[str, Any]:
        return {name: copy.copy(value) for name, value in vars(self).items()}

    def restore(self, snapshot: dict[str, Any]) -> None:
        vars(self).update(snapshot)


class FakeOutbox(FakeRepository):
    """The outbox: the event messages written, in order (kept only if committed)."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def add(self, *messages: Message) -> None:
        self.messages.extend(messages)

    def of(self, kind: type[Message]) -> list[Any]:
        return [m for m in self.messages if isinstance(m, kind)]


class FakeStore:
    """The repositories of one fake database, and the factory of its units of work."""

    def __init__(self) -> None:
        self.commits = 0
        self.rollbacks = 0
        self.outbox = FakeOutbox()

    def repositories(self) -> Sequence[FakeRepository]:
        raise NotImplementedError

    def all_repositories(self) -> Sequence[FakeRepository]:
        return (*self.repositories(), self.outbox)


class FakeUnitOfWork:
    """`async with` it: rolled back on exit unless `await commit()` ran."""

    @property
    def events(self) -> FakeOutbox:
        return self.store.outbox

    def __init__(self, store: FakeStore, *, readonly: bool = False) -> None:
        self.store = store
        self.readonly = readonly
        self._committed = False
        self._snapshots: list[dict[str, Any]] = []

    async def __aenter__(self) -> Self:
        self._snapshots = [repo.snapshot() for repo in self.store.all_repositories()]
        self._committed = False
        return self

    async def commit(self) -> None:
        assert not self.readonly, "a read-only unit of work is never committed"
        self._committed = True
        self.store.commits += 1

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._committed:  # (the outbox too: a rolled-back change emits nothing)
            for repo, snapshot in zip(self.store.all_repositories(), self._snapshots, strict=True):
                repo.restore(snapshot)
            if not self.readonly:
                self.store.rollbacks += 1


class FakeIdempotencyRecords(FakeRepository):
    """Idempotency keys by (scope, key), changed only as the SQL statements change them."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], KeyRecord] = {}

    async def get(self, scope: str, key: str, *, lock: bool = False) -> KeyRecord | None:
        return self.rows.get((scope, key))

    async def add_if_absent(self, record: KeyRecord) -> bool:
        if (record.scope, record.key) in self.rows:
            return False
        self.rows[(record.scope, record.key)] = record
        return True

    async def take_over(
        self, record: KeyRecord, owner: str, token: str, lease_until_us: int
    ) -> bool:
        found = self.rows.get((record.scope, record.key))
        if found is None or found.token != record.token or found.result is not None:
            return False
        self.rows[(record.scope, record.key)] = replace(
            found, owner=owner, token=token, lease_until_us=lease_until_us
        )
        return True

    async def complete(self, scope: str, key: str, token: str, result: str) -> bool:
        found = self.rows.get((scope, key))
        if found is None or found.token != token or found.result is not None:
            return False
        self.rows[(scope, key)] = replace(found, result=result)
        return True

    async def purge(self, before_us: int, limit: int) -> int:
        old = sorted(
            (r for r in self.rows.values() if r.created_us < before_us), key=lambda r: r.created_us
        )
        for r in old[:limit]:
            del self.rows[(r.scope, r.key)]
        return len(old[:limit])


# -- inventory -------------------------------------------------------------------------


class FakeItemRepository(FakeRepository):
    def __init__(self) -> None:
        self.rows: dict[str, Item] = {}
        self.low: set[str] = set()  # skus marked low on stock

    async def get(self, sku: str) -> Item | None:
        return self.rows.get(sku)

    async def add(self, new: NewItem, currency: str, now: int) -> None:
        if new.sku in self.rows:
            raise DuplicateKeyError(new.sku)
        self.rows[new.sku] = Item(
            new.sku, new.name, new.price, currency, new.stock, 0, 0, new.stock
        )
        self.low.discard(new.sku)

    async def page(self, after: str, limit: int) -> list[Item]:
        return [self.rows[sku] for sku in sorted(self.rows) if sku > after][:limit]

    async def low_on_stock(self, threshold: int, limit: int) -> list[Item]:
        found = [i for i in self.rows.values() if i.available <= threshold]
        return sorted(found, key=lambda i: (i.available, i.sku))[:limit]

    async def change(self, change: ItemChange, now: int) -> bool:
        item = self.rows.get(change.sku)
        if item is None:
            return False
        restock = change.restock or 0
        self.rows[change.sku] = replace(
            item,
            name=item.name if change.name is None else change.name,
            price=item.price if change.price is None else change.price,
            available=item.available + restock,
            received=item.received + restock,
        )
        return True

    async def known_skus(self, skus: Iterable[str]) -> set[str]:
        return {sku for sku in skus if sku in self.rows}

    async def take_stock(self, sku: str, quantity: int, now: int) -> tuple[int, int] | None:
        item = self.rows.get(sku)
        if item is None or item.available < quantity:
            return None
        self.rows[sku] = replace(
            item, available=item.available - quantity, reserved=item.reserved + quantity
        )
        return item.price, item.available - quantity

    async def mark_low(self, sku: str, threshold: int) -> int | None:
        item = self.rows.get(sku)
        if item is None or sku in self.low or item.available > threshold:
            return None
        self.low.add(sku)
        return item.available

    async def rearm_low(self, skus: Iterable[str], threshold: int) -> None:
        for sku in skus:
            if sku in self.low and self.rows[sku].available > threshold:
                self.low.discard(sku)

    async def move_stock(
        self, lines: Sequence[ReservedLine], source: str, target: str, now: int
    ) -> None:
        for line in lines:
            item = self.rows[line.sku]
            held = getattr(item, source)
            assert held >= line.quantity, f"{line.sku}: {held} {source}, {line.quantity} moved"
            self.rows[line.sku] = replace(
                item,
                **{source: held - line.quantity, target: getattr(item, target) + line.quantity},
            )


class FakeReservationRepository(FakeRepository):
    def __init__(self) -> None:
        self.rows: dict[str, Reservation] = {}

    async def get(self, order_id: str, *, lock: bool = False) -> Reservation | None:
        return self.rows.get(order_id)

    async def add(self, reservation: Reservation, now: int) -> None:
        if not await self.add_if_absent(reservation, now):
            raise DuplicateKeyError(reservation.order_id)

    async def add_if_absent(self, reservation: Reservation, now: int) -> bool:
        if reservation.order_id in self.rows:
            return False
        self.rows[reservation.order_id] = reservation
        return True

    async def move(
        self, order_id: str, source: ReservationState, target: ReservationState, now: int
    ) -> Reservation | None:
        found = self.rows.get(order_id)
        if found is None or found.state != source:
            return None
        self.rows[order_id] = moved = replace(found, state=target)
        return moved


class FakeInventoryStore(FakeStore):
    def __init__(self) -> None:
        super().__init__()
        self.items = FakeItemRepository()
        self.reservations = FakeReservationRepository()
        self.idempotency = FakeIdempotencyRecords()

    def repositories(self) -> Sequence[FakeRepository]:
        return (self.items, self.reservations, self.idempotency)

    def __call__(self, *, readonly: bool = False) -> FakeInventoryUnitOfWork:
        return FakeInventoryUnitOfWork(self, readonly=readonly)


class FakeInventoryUnitOfWork(FakeUnitOfWork):
    store: FakeInventoryStore

    @property
    def items(self) -> FakeItemRepository:
        return self.store.items

    @property
    def reservations(self) -> FakeReservationRepository:
        return self.store.reservations

    @property
    def idempotency(self) -> FakeIdempotencyRecords:
        return self.store.idempotency


# -- loyalty ---------------------------------------------------------------------------


class FakeAccountRepository(FakeRepository):
    def __init__(self) -> None:
        self.rows: dict[str, tuple[str, int]] = {}  # customer -> (tier, points)
        self.ledger: list[LedgerEntry] = []
        self.booked: list[BookedEntry] = []

    async def get(self, customer_id: str) -> tuple[str, int] | None:
        return self.rows.get(customer_id)

    async def ensure(self, customer_id: str, tier: str, now: int) -> bool:
        if customer_id in self.rows:
            return False
        self.rows[customer_id] = (tier, 0)
        return True

    async def set_tier(self, customer_id: str, tier: str, now: int) -> None:
        if customer_id in self.rows:
            self.rows[customer_id] = (tier, self.rows[customer_id][1])

    async def add_points(self, entry: LedgerEntry, now: int) -> int | None:
        found = self.rows.get(entry.customer_id)
        if entry.delta == 0:
            return None if found is None else found[1]
        if found is None or found[1] + entry.delta < 0:
            return None
        for e in self.ledger:  # the ledger's unique keys
            if (
                entry.order_id is not None and (e.order_id, e.kind) == (entry.order_id, entry.kind)
            ) or (
                entry.idempotency_key is not None
                and (e.customer_id, e.idempotency_key) == (entry.customer_id, entry.idempotency_key)
            ):
                raise DuplicateKeyError(entry)
        self.rows[entry.customer_id] = (found[0], found[1] + entry.delta)
        self.ledger.append(entry)
        self.booked.append(BookedEntry(len(self.booked) + 1, entry, now))
        return found[1] + entry.delta

    async def entries(self, customer_id: str, before: int | None, limit: int) -> list[BookedEntry]:
        mine = [
            b
            for b in reversed(self.booked)
            if b.entry.customer_id == customer_id and (before is None or b.id < before)
        ]
        return mine[:limit]


class FakeApplicationRepository(FakeRepository):
    def __init__(self) -> None:
        self.rows: dict[str, Application] = {}

    async def get(self, order_id: str, *, lock: bool = False) -> Application | None:
        return self.rows.get(order_id)

    async def add(self, application: Application, now: int) -> None:
        if not await self.add_if_absent(application, now):
            raise DuplicateKeyError(application.order_id)

    async def add_if_absent(self, application: Application, now: int) -> bool:
        if application.order_id in self.rows:
            return False
        self.rows[application.order_id] = application
        return True

    async def move(
        self, order_id: str, source: ApplicationState, target: ApplicationState, now: int
    ) -> Application | None:
        found = self.rows.get(order_id)
        if found is None or found.state != source:
            return None
        self.rows[order_id] = moved = replace(found, state=target)
        return moved


class FakeLoyaltyStore(FakeStore):
    def __init__(self) -> None:
        super().__init__()
        self.accounts = FakeAccountRepository()
        self.applications = FakeApplicationRepository()
        self.idempotency = FakeIdempotencyRecords()

    def repositories(self) -> Sequence[FakeRepository]:
        return (self.accounts, self.applications, self.idempotency)

    def __call__(self, *, readonly: bool = False) -> FakeLoyaltyUnitOfWork:
        return FakeLoyaltyUnitOfWork(self, readonly=readonly)


class FakeLoyaltyUnitOfWork(FakeUnitOfWork):
    store: FakeLoyaltyStore

    @property
    def accounts(self) -> FakeAccountRepository:
        return self.store.accounts

    @property
    def applications(self) -> FakeApplicationRepository:
        return self.store.applications

    @property
    def idempotency(self) -> FakeIdempotencyRecords:
        return self.store.idempotency


# -- orders ----------------------------------------------------------------------------


class FakeOrderRepository(FakeRepository):
    def __init__(self) -> None:
        self.rows: dict[str, Order] = {}

    async def get(self, order_id: str, *, lock: bool = False) -> Order | None:
        return self.rows.get(order_id)

    async def find_by_key(self, customer_id: str, idempotency_key: str) -> Order | None:
        for order in self.rows.values():
            if (order.customer_id, order.idempotency_key) == (customer_id, idempotency_key):
                return order
        return None

    async def add(self, order: Order) -> bool:
        if order.idempotency_key and await self.find_by_key(
            order.customer_id, order.idempotency_key
        ):
            return False
        if order.id in self.rows:
            raise DuplicateKeyError(order.id)
        self.rows[order.id] = order
        return True

    async def save(self, order: Order, read: Order) -> None:
        stored = self.rows.get(order.id)
        if stored is None or stored.version != read.version:
            raise ConcurrentChangeError(f"order {order.id} changed meanwhile", order_id=order.id)
        self.rows[order.id] = order

    async def settle(self, order_id: str, owner: str, now: int) -> Order | None:
        """The SQL fast path's cases, by the domain's rule (the two agree: integration tests)."""
        read = self.rows.get(order_id)
        if read is None:
            return None
        try:
            settled = orders_domain.settle(read, owner, now)
        except (InvalidStateError, LeaseHeldError):
            return None
        if settled is read:
            return None
        self.rows[order_id] = settled
        return settled

    async def page(
        self, customer_id: str, status: str, before: tuple[int, str] | None, limit: int
    ) -> list[Order]:
        found = sorted(self.rows.values(), key=lambda o: (o.created_us, o.id), reverse=True)
        return [
            o
            for o in found
            if (not customer_id or o.customer_id == customer_id)
            and (not status or o.status.value == status)
            and (before is None or (o.created_us, o.id) < before)
        ][:limit]

    async def stale(self, now: int, limit: int, events_grace_us: int) -> list[Order]:
        found = [o for o in self.rows.values() if orders_domain.is_stale(o, now, events_grace_us)]
        return sorted(found, key=lambda o: o.updated_us)[:limit]

    async def count_stuck(self, now: int, events_grace_us: int) -> dict[OrderStatus, int]:
        counted: dict[OrderStatus, int] = {}
        for order in self.rows.values():
            if orders_domain.is_stuck(order, now, events_grace_us):
                counted[order.status] = counted.get(order.status, 0) + 1
        return counted

    async def unsettled(self, limit: int) -> list[Order]:
        found = [o for o in self.rows.values() if not o.settled]
        return sorted(found, key=lambda o: (o.created_us, o.id))[:limit]


class FakeStepRepository(FakeRepository):
    """The step log: (order id, step) in recording order; a known (order id, step id) is
    skipped, as the SQL unique key makes the insert do nothing."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, Step]] = []

    async def add(self, order_id: str, steps: Sequence[Step]) -> None:
        known = {(o, s.step_id) for o, s in self.rows}
        for step in steps:
            if (order_id, step.step_id) not in known:
                known.add((order_id, step.step_id))
                self.rows.append((order_id, step))

    async def of(self, order_id: str, limit: int) -> tuple[list[Step], bool]:
        mine = [(s.started_us, seq, s) for seq, (o, s) in enumerate(self.rows) if o == order_id]
        ordered = [s for _, _, s in sorted(mine, key=lambda x: (x[0], x[1]))]
        return ordered[-limit:], len(ordered) > limit


class FakeOrdersStore(FakeStore):
    def __init__(self) -> None:
        super().__init__()
        self.orders = FakeOrderRepository()
        self.steps = FakeStepRepository()

    def repositories(self) -> Sequence[FakeRepository]:
        return (self.orders, self.steps)

    def __call__(self, *, readonly: bool = False) -> FakeOrdersUnitOfWork:
        return FakeOrdersUnitOfWork(self, readonly=readonly)


class FakeOrdersUnitOfWork(FakeUnitOfWork):
    store: FakeOrdersStore

    @property
    def orders(self) -> FakeOrderRepository:
        return self.store.orders

    @property
    def steps(self) -> FakeStepRepository:
        return self.store.steps
