"""Build the inventory component from settings: its database (migrated), its gRPC service,
and its events (the outbox relay, and the consumer that commits the stock of a confirmed
order, ADR 18)."""

from __future__ import annotations

import dataclasses
import functools

from orderflow.events.backlog import BacklogReader
from orderflow.events.bus import EventBus
from orderflow.events.consumer import Handler
from orderflow.events.envelope import Event
from orderflow.events.outbox import Outbox
from orderflow.events.service import service_events
from orderflow.events.v1 import events_pb2
from orderflow.inventory.grpc_api import service_spec
from orderflow.inventory.metrics import StockGauges
from orderflow.inventory.service import InventoryService
from orderflow.inventory.storage import SqlInventoryUnitOfWork, outbox_tables
from orderflow.platform.component import Component, open_database
from orderflow.settings import CommonSettings, InventorySettings

SERVICE = "inventory"


def handlers(service: InventoryService) -> dict[str, Handler[SqlInventoryUnitOfWork]]:
    """inventory consumes order.confirmed: the order's reserved stock becomes sold."""

    async def order_confirmed(uow: SqlInventoryUnitOfWork, event: Event) -> None:
        assert isinstance(event.data, events_pb2.OrderConfirmed)
        await service.commit_stock_for(uow, event.data.order_id)

    return {"order.confirmed": order_confirmed}


async def build(
    settings: InventorySettings,
    common: CommonSettings,
    *,
    migrate: bool = True,
    bus: EventBus | None = None,
) -> Component:
    """The service on its own database (migrated first unless migrate is False); its events
    go through bus (shared by the services of one process), or a bus of its own."""
    database = await open_database(
        settings.database_url, settings.db_pool_size, SERVICE, migrate=migrate
    )
    outbox = Outbox(outbox_tables)
    uow = functools.partial(SqlInventoryUnitOfWork, database, outbox)
    service = InventoryService(
        uow,
        currency=common.currency,
        low_stock_threshold=settings.low_stock_threshold,
        idempotency_lease_seconds=settings.idempotency_lease_seconds,
        idempotency_retention_seconds=settings.idempotency_retention_seconds,
    )
    gauges = StockGauges(
        database,
        interval=settings.stock_metrics_interval_seconds,
        low_stock_threshold=settings.low_stock_threshold,
    )
    backlog = BacklogReader(uow, outbox.tables)
    spec = dataclasses.replace(service_spec(service, database, backlog), metrics=gauges.run)
    events = service_events(SERVICE, uow, outbox, handlers(service), bus)
    events.relay.housekeeping.append(service.purge_idempotency_keys)
    return Component(spec, database, events)
