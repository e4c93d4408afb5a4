"""Writing events: one outbox row per event, in the transaction of the change that caused it.

Call `append(tx.connection, tables, message, ...)` inside the unit of work, after the
change's own writes: the event commits or rolls back with them. Writing it after them
also keeps one aggregate's events in commit order, because the change's write has taken
the aggregate's row lock (PostgreSQL) or the database's write lock (SQLite) before the
event's `seq` is drawn.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import ClassVar, Protocol

from google.protobuf.message import Message
from sqlalchemy import insert

from orderflow.events.envelope import Event, rfc3339, to_json
from orderflow.events.store import SqlConnection
from orderflow.events.tables import EventTables
from orderflow.platform.db import Database, UnitOfWork, now_us


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


class EventSink(Protocol):
    """Where a service's use case writes the events of its change: `await uow.events.add(m)`
    appends them to the outbox of the unit of work's own transaction."""

    async def add(self, *messages: Message) -> None: ...


class Outbox:
    """A service's outbox: its event tables, and what to call after a commit that wrote
    events (the relay's `wake`, so an event need not wait for the relay's next poll)."""

    def __init__(self, tables: EventTables) -> None:
        self.tables = tables
        self.on_commit: Callable[[], None] = _nothing

    def writer(self, connection: SqlConnection) -> OutboxWriter:
        return OutboxWriter(connection, self)


def _nothing() -> None:
    return None


class OutboxWriter:
    """The outbox as one unit of work sees it (`uow.events`): rows go into its transaction."""

    __slots__ = ("connection", "outbox", "written")

    def __init__(self, connection: SqlConnection, outbox: Outbox) -> None:
        self.connection = connection
        self.outbox = outbox
        self.written = False

    async def add(self, *messages: Message) -> None:
        if messages:
            await append(self.connection, self.outbox.tables, *messages)
            self.written = True

    def committed(self) -> None:
        """The unit of work committed: wake the relay if events were written."""
        if self.written:
            self.written = False
            self.outbox.on_commit()


class OutboxUnitOfWork(UnitOfWork):
    """A service's unit of work with its outbox: `await uow.events.add(message)` writes an
    event in the transaction; after `commit()` the relay is woken. A subclass names its
    database's tables in `event_tables` and calls `super()._attach()`."""

    event_tables: ClassVar[EventTables]
    events: OutboxWriter

    def __init__(
        self, database: Database, outbox: Outbox | None = None, *, readonly: bool = False
    ) -> None:
        super().__init__(database, readonly=readonly)
        self.outbox = outbox if outbox is not None else Outbox(self.event_tables)

    def _attach(self) -> None:
        self.events = self.outbox.writer(self.connection)

    async def commit(self) -> None:
        await super().commit()
        self.events.committed()
