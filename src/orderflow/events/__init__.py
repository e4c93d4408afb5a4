"""Events: the transactional outbox, its relay, the buses and idempotent consumers.

A service writes events with `append()` in the unit of work of the change that caused
them; its `OutboxRelay` publishes them through an `EventBus` (`InProcessBus` in one
process, `JetStreamBus` with NATS); its `ConsumerRunner` handles the events it subscribes
to, each effect once (inbox), parking what keeps failing. The registry names every event
type; `Event` is the CloudEvents envelope. See ADR 16.
"""

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
from orderflow.events.store import SqlConnection, Transaction, TransactionFactory, in_transaction
from orderflow.events.tables import (
    EventTables,
    create_event_tables,
    drop_event_tables,
    event_tables,
)

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
