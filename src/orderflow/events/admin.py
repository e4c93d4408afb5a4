"""Parked events of a service, for operators (`orderflow events parked`, `... redrive ID`).

Plain functions over a service's own database URL: they open it, act, and close it, from
any process (the service need not be running; its consumer's runner handles a redrive
request once it runs). `service` is orders, inventory or loyalty.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from orderflow.events.consumer import ParkedEvent, list_parked, request_redrive
from orderflow.events.tables import EventTables
from orderflow.platform.db import Database, UnitOfWork, create_database

T = TypeVar("T")


def service_event_tables(service: str) -> EventTables:
    """The event tables of a service's database (its storage module's `outbox_tables`)."""
    storage = importlib.import_module(f"orderflow.{service}.storage")
    tables = storage.outbox_tables
    assert isinstance(tables, EventTables)
    return tables


async def _with_database(
    database_url: str, service: str, work: Callable[[Database, EventTables], Awaitable[T]]
) -> T:
    database = create_database(database_url, pool_size=1)
    try:
        return await work(database, service_event_tables(service))
    finally:
        await database.dispose()


async def parked_events(
    database_url: str, service: str, consumer: str | None = None
) -> list[ParkedEvent]:
    """Every event parked in the service's database (by any of its consumers, or by
    `consumer`), oldest first."""

    async def read(database: Database, tables: EventTables) -> list[ParkedEvent]:
        return await list_parked(lambda: UnitOfWork(database), tables, consumer)

    return await _with_database(database_url, service, read)


async def redrive(
    database_url: str, service: str, event_id: str, consumer: str | None = None
) -> int:
    """Ask for parked event `event_id` to be handled again by the service's consumer (it
    stays parked, attempts counted, if it fails again); how many parked rows were marked
    (0: no such parked event)."""

    async def mark(database: Database, tables: EventTables) -> int:
        return await request_redrive(lambda: UnitOfWork(database), tables, event_id, consumer)

    return await _with_database(database_url, service, mark)
