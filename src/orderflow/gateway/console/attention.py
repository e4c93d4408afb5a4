"""What needs an operator's attention, gathered from every service at the moment of asking.

Nothing is stored: each look asks the services' own read RPCs (through the gateway's
ports, so the same in one process and per service) and the gateway's readiness probes,
all at once, and a service that cannot answer is itself reported rather than failing the
page (ADR 30).

- stuck sagas: unsettled orders whose saga outlived its driver's lease (stale, or held by
  a recovery worker because it was), as the orders service judges them — the same rule as
  its orderflow_orders_stuck gauge and the alert on it;
- compensations waiting: REJECTED orders whose undo steps have not all run, and
  cancellations under way, while unsettled (their service was down, say);
- rejections of the last hour, by reason;
- services not SERVING;
- items at or below inventory's low-stock threshold;
- each service's events: an outbox backlog whose oldest event has waited longer than
  BACKLOG_AGE (the relay is not publishing: broker away, relay stuck), and parked events
  (a consumer gave up on them: `orderflow events redrive`).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from orderflow.errors import OrderflowError
from orderflow.gateway import operations as ops
from orderflow.gateway.auth import Principal
from orderflow.gateway.deps import Gateway
from orderflow.gateway.ports import REJECTED, EventsBacklog, LowStock, Order
from orderflow.registry import SERVICE_NAMES

UNSETTLED_LIMIT = 100
REJECTED_PAGES = 5  # of 100: the most rejections of the last hour counted
WINDOW = timedelta(hours=1)
# An outbox row is normally published within milliseconds; one older than this means the
# relay is not getting events out.
BACKLOG_AGE = timedelta(seconds=10)
PARKED_SHOWN = 20


@dataclass(frozen=True)
class Rejections:
    reason: str
    count: int
    newest: datetime | None


@dataclass
class Attention:
    checked_at: datetime
    services: dict[str, str] = field(default_factory=dict)
    stuck: list[Order] = field(default_factory=list)
    compensations: list[Order] = field(default_factory=list)
    unsettled_truncated: bool = False
    rejections: list[Rejections] = field(default_factory=list)
    rejections_truncated: bool = False
    low_stock: LowStock | None = None
    events: list[EventsBacklog] = field(default_factory=list)
    # Sources that could not be read, as sentences.
    problems: list[str] = field(default_factory=list)

    @property
    def services_down(self) -> list[tuple[str, str]]:
        return [(name, status) for name, status in self.services.items() if status != "SERVING"]

    @property
    def lagging(self) -> list[EventsBacklog]:
        """Services whose oldest unpublished event waited longer than BACKLOG_AGE."""
        return [
            e
            for e in self.events
            if e.oldest_pending_at is not None
            and self.checked_at - e.oldest_pending_at > BACKLOG_AGE
        ]

    @property
    def parked_count(self) -> int:
        return sum(e.parked_count for e in self.events)

    @property
    def rejected_count(self) -> int:
        return sum(r.count for r in self.rejections)

    @property
    def total(self) -> int:
        """How many things want attention (what the page's title counts)."""
        low = len(self.low_stock.items) if self.low_stock else 0
        return (
            len(self.services_down)
            + len(self.stuck)
            + len(self.compensations)
            + self.rejected_count
            + low
            + len(self.lagging)
            + self.parked_count
        )


def _newest_first(orders: list[Order]) -> list[Order]:
    epoch = datetime.min.replace(tzinfo=UTC)
    return sorted(orders, key=lambda o: o.created_at or epoch, reverse=True)


async def _rejections(
    gateway: Gateway, principal: Principal, since: datetime
) -> tuple[list[Rejections], bool]:
    tally: Counter[str] = Counter()
    newest: dict[str, datetime] = {}
    cursor: str | None = None
    for _ in range(REJECTED_PAGES):
        page = await ops.list_orders(gateway, principal, None, REJECTED, 100, cursor)
        for order in page.entries:
            if order.created_at is not None and order.created_at < since:
                return _by_reason(tally, newest), False
            reason = order.failure.code if order.failure else "REJECTED"
            tally[reason] += 1
            if order.created_at is not None and reason not in newest:
                newest[reason] = order.created_at
        if page.next_cursor is None:
            return _by_reason(tally, newest), False
        cursor = page.next_cursor
    return _by_reason(tally, newest), True


def _by_reason(tally: Counter[str], newest: dict[str, datetime]) -> list[Rejections]:
    epoch = datetime.min.replace(tzinfo=UTC)
    found = [Rejections(reason, n, newest.get(reason)) for reason, n in tally.items()]
    return sorted(found, key=lambda r: r.newest or epoch, reverse=True)


def _problem(source: str, exc: BaseException) -> str:
    if isinstance(exc, OrderflowError):
        return f"{source}: {exc.code}: {exc.message}"
    return f"{source}: {type(exc).__name__}"


async def gather(gateway: Gateway, principal: Principal, now: datetime | None = None) -> Attention:
    """Everything on the home page's attention list, as of now."""
    now = now or datetime.now(UTC)
    attention = Attention(checked_at=now)
    results: list[Any] = await asyncio.gather(
        gateway.readiness.check(),
        ops.unsettled_orders(gateway, principal, UNSETTLED_LIMIT),
        _rejections(gateway, principal, now - WINDOW),
        ops.low_stock_items(gateway, principal, 50),
        *(ops.events_backlog(gateway, principal, s, PARKED_SHOWN) for s in SERVICE_NAMES),
        return_exceptions=True,
    )
    services, unsettled, rejections, low = results[:4]
    if isinstance(services, BaseException):
        attention.problems.append(_problem("readiness", services))
    else:
        attention.services = services
    if isinstance(unsettled, BaseException):
        attention.problems.append(_problem("unsettled orders (orders service)", unsettled))
    else:
        attention.unsettled_truncated = unsettled.truncated
        attention.stuck = _newest_first([o for o in unsettled.orders if o.id in unsettled.stuck])
        attention.compensations = _newest_first(
            [o for o in unsettled.orders if o.status == REJECTED or o.cancel_requested]
        )
    if isinstance(rejections, BaseException):
        attention.problems.append(_problem("rejected orders (orders service)", rejections))
    else:
        attention.rejections, attention.rejections_truncated = rejections
    if isinstance(low, BaseException):
        attention.problems.append(_problem("low stock (inventory service)", low))
    else:
        attention.low_stock = low
    for service, backlog in zip(SERVICE_NAMES, results[4:], strict=True):
        if isinstance(backlog, BaseException):
            attention.problems.append(_problem(f"events ({service} service)", backlog))
        else:
            attention.events.append(backlog)
    return attention
