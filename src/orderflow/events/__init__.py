"""Events: the transactional outbox, its relay, the buses and idempotent consumers.

A service writes events with `append()` in the unit of work of the change that caused
them; its `OutboxRelay` publishes them through an `EventBus` (`InProcessBus` in one
process, `JetStreamBus` with NATS); its `ConsumerRunner` handles the events it subscribes
to, each effect once (inbox), parking what keeps failing. The registry names every event
type; `Event` is the CloudEvents envelope. See ADR 16.

The names below load their module on first use (PEP 562): the gateway imports the buses
without the outbox's SQLAlchemy, which its image does not ship.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orderflow.events.bus import Delivery, EventBus, InProcessBus, PublishError, Subscription
    from orderflow.events.consumer import (
        ConsumerRunner,
        Handler,
        ParkedEvent,
        list_parked,
        record_handled,
        request_redrive,
    )
    from orderflow.events.envelope import Event, InvalidEventError, WireMessage
    from orderflow.events.jetstream import BrokerUnavailableError, JetStreamBus
    from orderflow.events.metrics import EventMetrics
    from orderflow.events.outbox import append, append_events
    from orderflow.events.registry import (
        DEFAULT_STREAM,
        DEFAULT_SUBJECT_PREFIX,
        EVENT_TYPES,
        EventType,
        UnknownEventTypeError,
        event_type,
        type_of,
    )
    from orderflow.events.relay import LeaseLostError, OutboxRelay, take_lease
    from orderflow.events.settings import EventsSettings
    from orderflow.events.store import (
        SqlConnection,
        Transaction,
        TransactionFactory,
        in_transaction,
    )
    from orderflow.events.tables import (
        EventTables,
        create_event_tables,
        drop_event_tables,
        event_tables,
    )

_MODULES = {
    "BrokerUnavailableError": "orderflow.events.jetstream",
    "ConsumerRunner": "orderflow.events.consumer",
    "DEFAULT_STREAM": "orderflow.events.registry",
    "DEFAULT_SUBJECT_PREFIX": "orderflow.events.registry",
    "Delivery": "orderflow.events.bus",
    "EVENT_TYPES": "orderflow.events.registry",
    "Event": "orderflow.events.envelope",
    "EventBus": "orderflow.events.bus",
    "EventMetrics": "orderflow.events.metrics",
    "EventTables": "orderflow.events.tables",
    "EventType": "orderflow.events.registry",
    "EventsSettings": "orderflow.events.settings",
    "Handler": "orderflow.events.consumer",
    "InProcessBus": "orderflow.events.bus",
    "InvalidEventError": "orderflow.events.envelope",
    "JetStreamBus": "orderflow.events.jetstream",
    "LeaseLostError": "orderflow.events.relay",
    "OutboxRelay": "orderflow.events.relay",
    "ParkedEvent": "orderflow.events.consumer",
    "PublishError": "orderflow.events.bus",
    "SqlConnection": "orderflow.events.store",
    "Subscription": "orderflow.events.bus",
    "Transaction": "orderflow.events.store",
    "TransactionFactory": "orderflow.events.store",
    "UnknownEventTypeError": "orderflow.events.registry",
    "WireMessage": "orderflow.events.envelope",
    "append": "orderflow.events.outbox",
    "append_events": "orderflow.events.outbox",
    "create_event_tables": "orderflow.events.tables",
    "drop_event_tables": "orderflow.events.tables",
    "event_tables": "orderflow.events.tables",
    "event_type": "orderflow.events.registry",
    "in_transaction": "orderflow.events.store",
    "list_parked": "orderflow.events.consumer",
    "record_handled": "orderflow.events.consumer",
    "request_redrive": "orderflow.events.consumer",
    "take_lease": "orderflow.events.relay",
    "type_of": "orderflow.events.registry",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "DEFAULT_STREAM",
    "DEFAULT_SUBJECT_PREFIX",
    "EVENT_TYPES",
    "BrokerUnavailableError",
    "ConsumerRunner",
    "Delivery",
    "Event",
    "EventBus",
    "EventMetrics",
    "EventTables",
    "EventType",
    "EventsSettings",
    "Handler",
    "InProcessBus",
    "InvalidEventError",
    "JetStreamBus",
    "LeaseLostError",
    "OutboxRelay",
    "ParkedEvent",
    "PublishError",
    "SqlConnection",
    "Subscription",
    "Transaction",
    "TransactionFactory",
    "UnknownEventTypeError",
    "WireMessage",
    "append",
    "append_events",
    "create_event_tables",
    "drop_event_tables",
    "event_tables",
    "event_type",
    "in_transaction",
    "list_parked",
    "record_handled",
    "request_redrive",
    "take_lease",
    "type_of",
]
