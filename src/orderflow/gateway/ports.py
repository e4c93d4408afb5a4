"""What the gateway needs from the three services: Protocols over plain data, for fakes too.

Why the gateway has types of its own, and uses neither the services' domain types nor
the protobuf messages:

- Not the domain types: each service owns its domain and may change it (fields, rules,
  states) without the gateway knowing; in the per-service deployment the gateway does not
  even run that code. What crosses is only what the wire contract carries, and the types
  here say exactly that, no more (no versions, lease expiry times, ledgers).
- Not protobuf: generated messages are mutable, have no None (an unset field reads as
  0 or ""), enums as ints and timestamps as a message. The saga, the routes and the fakes
  in tests/fakes.py work with frozen dataclasses instead, and only gateway/clients.py
  knows protobuf: the saga can be tested with fakes, and a change of wire format changes
  one module.

docs/architecture.md shows where each type crosses on the order path.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")

PENDING = "PENDING"
CONFIRMED = "CONFIRMED"
REJECTED = "REJECTED"
CANCELLED = "CANCELLED"
STATUSES = (PENDING, CONFIRMED, REJECTED, CANCELLED)

# Who ran a step of an order's saga (the step log, ADR 26).
REQUEST = "request"  # a gateway answering the client
RECOVERY = "recovery"  # a gateway's recovery worker
EVENT = "event"  # the orders service, consuming a follow-up's event
DRIVERS = (REQUEST, RECOVERY, EVENT)
# How it went: ok; failed (refused, did nothing); unknown (no answer: it may have acted).
OK = "ok"
FAILED = "failed"
UNKNOWN = "unknown"
OUTCOMES = (OK, FAILED, UNKNOWN)


@dataclass(frozen=True)
class Line:
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
    status: str
    lines: tuple[Line, ...]
    currency: str = ""
    subtotal: int = 0
    discount: int = 0
    redeem_points: int = 0
    points_redeemed: int = 0
    total: int = 0
    points_earned: int = 0
    failure: Failure | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    idempotency_key: str = ""
    settled: bool = False
    cancel_requested: bool = False
    lease_owner: str = ""


@dataclass(frozen=True)
class SagaStep:
    """One step of an order's saga as it ran (an entry of its history)."""

    step_id: str
    name: str
    outcome: str
    driver: str
    started_at: datetime
    duration_us: int
    error: Failure | None = None


@dataclass(frozen=True)
class History:
    """An order with its saga's steps, oldest first (the newest 500 if truncated)."""

    order: Order
    steps: tuple[SagaStep, ...]
    truncated: bool = False


@dataclass(frozen=True)
class Page(Generic[T]):
    entries: list[T]
    next_cursor: str | None


@dataclass(frozen=True)
class Reservation:
    lines: tuple[Line, ...]
    currency: str


@dataclass(frozen=True)
class Discount:
    """The loyalty figures of one order."""

    discount: int
    points_redeemed: int
    total: int
    points_earned: int
    discount_percent: int = 0
    tier: str = ""


@dataclass(frozen=True)
class Item:
    sku: str
    name: str
    price: int
    currency: str
    available: int
    reserved: int
    sold: int


@dataclass(frozen=True)
class Account:
    customer_id: str
    tier: str
    discount_percent: int
    points: int


@dataclass(frozen=True)
class Unsettled:
    """Orders whose saga still has work to do, oldest first; the ids of the stuck ones (as
    the orders service judges them); whether there were more than asked for."""

    orders: list[Order]
    stuck: frozenset[str]
    truncated: bool = False


@dataclass(frozen=True)
class LowStock:
    """The items at or below inventory's low-stock threshold, fewest available first."""

    items: list[Item]
    threshold: int
    truncated: bool = False


@dataclass(frozen=True)
class PointsEntry:
    """One entry of a customer's points ledger."""

    kind: str
    delta: int
    reason: str
    order_id: str
    created_at: datetime | None


@dataclass(frozen=True)
class Parked:
    """An event a service's consumer gave up on."""

    consumer: str
    event_id: str
    event_type: str
    subject: str
    attempts: int
    last_error: str
    parked_at: datetime | None
    redrive_requested: bool
    # What it is about (its ce-subject): an order id, a sku or a customer id.
    aggregate: str = ""


@dataclass(frozen=True)
class EventsBacklog:
    """One service's events: unpublished outbox rows (and when the oldest was written), the
    newest parked events and how many are parked."""

    service: str
    pending: int
    oldest_pending_at: datetime | None
    parked: list[Parked]
    parked_count: int


@dataclass(frozen=True)
class Idempotency:
    """What makes an admin change safe to repeat (ADR 0023): its key, whose key it is
    (the caller), and the request claiming it (its retries may take its claim over)."""

    key: str
    scope: str
    owner: str

    @classmethod
    def generated(cls, scope: str = "", key: str | None = None) -> Idempotency:
        """This request's claim on `key`, or on a key of the gateway's own when the client
        sent none."""
        return cls(
            key if key is not None else f"gw-{uuid.uuid4().hex}", scope, f"gw-{uuid.uuid4().hex}"
        )


@dataclass(frozen=True)
class NewOrder:
    customer_id: str
    lines: tuple[Line, ...]
    redeem_points: int
    idempotency_key: str
    fingerprint: str
    lease_owner: str
    lease_seconds: float


class OrdersPort(Protocol):
    """The changes take the driver making them and the steps it ran since its last call to
    orders (`steps`), which orders records with the change (ADR 26)."""

    async def create_order(self, new: NewOrder) -> tuple[Order, bool]: ...
    async def get_order(self, order_id: str) -> Order: ...
    async def list_orders(
        self, customer_id: str, status: str, limit: int, cursor: str
    ) -> Page[Order]: ...
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
    ) -> Order: ...
    async def reject_order(
        self,
        order_id: str,
        owner: str,
        failure: Failure,
        *,
        driver: str = REQUEST,
        steps: Sequence[SagaStep] = (),
    ) -> Order: ...
    async def request_cancel(
        self,
        order_id: str,
        owner: str,
        seconds: float,
        *,
        driver: str = REQUEST,
        steps: Sequence[SagaStep] = (),
    ) -> Order: ...
    async def withdraw_cancel(
        self, order_id: str, owner: str, *, driver: str = REQUEST, steps: Sequence[SagaStep] = ()
    ) -> Order: ...
    async def cancel_order(
        self, order_id: str, owner: str, *, driver: str = REQUEST, steps: Sequence[SagaStep] = ()
    ) -> Order: ...
    async def settle_order(
        self, order_id: str, owner: str, *, driver: str = REQUEST, steps: Sequence[SagaStep] = ()
    ) -> Order: ...
    async def claim_stale(self, owner: str, seconds: float, limit: int) -> list[Order]: ...
    async def record_steps(self, order_id: str, steps: Sequence[SagaStep]) -> None: ...
    async def order_history(self, order_id: str) -> History: ...
    async def list_unsettled(self, limit: int) -> Unsettled: ...
    async def events_backlog(self, limit: int) -> EventsBacklog: ...


class InventoryPort(Protocol):
    async def reserve(self, order_id: str, lines: Sequence[Line]) -> Reservation: ...
    async def release(self, order_id: str) -> None: ...
    async def commit_stock(self, order_id: str) -> None: ...
    async def return_stock(self, order_id: str) -> None: ...
    async def create_item(
        self, sku: str, name: str, price: int, stock: int, idem: Idempotency | None = None
    ) -> Item: ...
    async def get_item(self, sku: str) -> Item: ...
    async def list_items(self, limit: int, cursor: str) -> Page[Item]: ...
    async def list_low_stock(self, limit: int) -> LowStock: ...
    async def events_backlog(self, limit: int) -> EventsBacklog: ...
    async def update_item(
        self,
        sku: str,
        name: str | None,
        price: int | None,
        restock: int | None,
        idem: Idempotency | None = None,
    ) -> Item: ...


class LoyaltyPort(Protocol):
    async def apply_discount(
        self, order_id: str, customer_id: str, subtotal: int, redeem_points: int
    ) -> Discount: ...
    async def void_discount(self, order_id: str) -> None: ...
    async def commit_discount(self, order_id: str) -> None: ...
    async def refund_discount(self, order_id: str) -> None: ...
    async def get_account(self, customer_id: str) -> Account: ...
    async def list_entries(
        self, customer_id: str, limit: int, cursor: str
    ) -> Page[PointsEntry]: ...
    async def events_backlog(self, limit: int) -> EventsBacklog: ...
    async def set_tier(
        self, customer_id: str, tier: str, idem: Idempotency | None = None
    ) -> Account: ...
    async def adjust_points(
        self, customer_id: str, delta: int, reason: str, idem: Idempotency | None = None
    ) -> Account: ...
