"""Every event type in one table: its name, CloudEvents type, NATS subject, message and source.

The table is the single place that names events: the outbox, the relay, the buses, the
consumers and the AsyncAPI test all read it, so a type cannot be known to one and not to
another. Names follow DESIGN.md (Events): `ce-type` is `orderflow.<name>.v1` and the
subject is `<prefix>.<name>`, where the prefix is `orderflow.events` unless configured
(tests use a prefix of their own).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from google.protobuf.message import Message

from orderflow.events.v1 import events_pb2

DEFAULT_SUBJECT_PREFIX = "orderflow.events"
DEFAULT_STREAM = "ORDERFLOW_EVENTS"


class UnknownEventTypeError(LookupError):
    """An event type, CloudEvents type, subject or message class that the registry lacks."""


@dataclass(frozen=True)
class EventType:
    """One kind of event.

    `name` is the dotted name (`order.confirmed`); `aggregate` the kind of thing its
    `ce-subject` identifies (`order`, `item`, `customer`), read from the message's
    `aggregate_field`; `source` the service that emits it.
    """

    name: str
    message: type[Message]
    source: str
    aggregate: str
    aggregate_field: str

    @property
    def ce_type(self) -> str:
        return f"orderflow.{self.name}.v1"

    def subject(self, prefix: str = DEFAULT_SUBJECT_PREFIX) -> str:
        return f"{prefix}.{self.name}"

    def aggregate_id(self, message: Message) -> str:
        value = getattr(message, self.aggregate_field)
        assert isinstance(value, str)
        return value


def _order(name: str, message: type[Message], source: str) -> EventType:
    return EventType(name, message, source, "order", "order_id")


EVENT_TYPES: tuple[EventType, ...] = (
    _order("order.confirmed", events_pb2.OrderConfirmed, "orders"),
    _order("order.rejected", events_pb2.OrderRejected, "orders"),
    _order("order.cancel_requested", events_pb2.OrderCancelRequested, "orders"),
    _order("order.cancelled", events_pb2.OrderCancelled, "orders"),
    _order("order.settled", events_pb2.OrderSettled, "orders"),
    _order("stock.committed", events_pb2.StockCommitted, "inventory"),
    _order("stock.returned", events_pb2.StockReturned, "inventory"),
    EventType("item.changed", events_pb2.ItemChanged, "inventory", "item", "sku"),
    EventType("item.low_stock", events_pb2.ItemLowStock, "inventory", "item", "sku"),
    _order("loyalty.committed", events_pb2.LoyaltyCommitted, "loyalty"),
    EventType("points.changed", events_pb2.PointsChanged, "loyalty", "customer", "customer_id"),
    EventType("tier.changed", events_pb2.TierChanged, "loyalty", "customer", "customer_id"),
)

_BY_NAME = {t.name: t for t in EVENT_TYPES}
_BY_CE_TYPE = {t.ce_type: t for t in EVENT_TYPES}
_BY_MESSAGE = {t.message: t for t in EVENT_TYPES}


def event_type(name: str) -> EventType:
    """The type named `name` (`order.confirmed`) or with that ce-type (`orderflow.….v1`)."""
    found = _BY_NAME.get(name) or _BY_CE_TYPE.get(name)
    if found is None:
        raise UnknownEventTypeError(f"unknown event type: {name!r}")
    return found


def type_of(message: Message) -> EventType:
    """The type whose body is `message`'s class."""
    found = _BY_MESSAGE.get(type(message))
    if found is None:
        raise UnknownEventTypeError(f"no event type has body {type(message).__name__}")
    return found


def type_of_subject(subject: str, prefix: str = DEFAULT_SUBJECT_PREFIX) -> EventType:
    """The type published on `subject` under `prefix`."""
    head = prefix + "."
    if not subject.startswith(head):
        raise UnknownEventTypeError(f"subject {subject!r} is not under {prefix!r}")
    return event_type(subject[len(head) :])


def emitted_by(source: str) -> Iterator[EventType]:
    """The types one service emits."""
    return (t for t in EVENT_TYPES if t.source == source)
