"""Writing events: one outbox row per event, in the transaction of the change that caused it.

Call `append(tx.connection, tables, message, ...)` inside the unit of work, after the
change's own writes: the event commits or rolls back with them. Writing it after them
also keeps one aggregate's events in commit order, because the change's write has taken
the aggregate's row lock (PostgreSQL) or the database's write lock (SQLite) before the
event's `seq` is drawn.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from google.protobuf.message import Message
from sqlalchemy import insert

from orderflow.events.envelope import Event, rfc3339, to_json
from orderflow.events.store import SqlConnection
from orderflow.events.tables import EventTables
from orderflow.platform.db import now_us


def outbox_row(event: Event, created_us: int) -> dict[str, object]:
    return {
        "id": event.id,
        "aggregate_type": event.type.aggregate,
        "aggregate_id": event.subject,
        "event_type": event.type.name,
        "source": event.source,
        "time": rfc3339(event.time),
        "traceparent": event.traceparent,
        "payload": to_json(event.data),
        "created_us": created_us,
        "published_us": None,
    }


async def append_events(
    connection: SqlConnection, tables: EventTables, events: Iterable[Event]
) -> list[Event]:
    """Insert events into the outbox in the given order (which is their publish order)."""
    listed = list(events)
    if listed:
        created = now_us()
        await connection.execute(
            insert(tables.outbox), [outbox_row(event, created) for event in listed]
        )
    return listed


async def append(
    connection: SqlConnection,
    tables: EventTables,
    *messages: Message,
    source: str | None = None,
    time: datetime | None = None,
) -> list[Event]:
    """Insert one event per message (typed by its class, see the registry) into the outbox
    of the transaction `connection` belongs to; return the events (their ids included)."""
    return await append_events(
        connection, tables, [Event.new(m, source=source, time=time) for m in messages]
    )
