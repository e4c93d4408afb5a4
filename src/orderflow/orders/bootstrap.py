"""Build the orders component from settings: its database (migrated), its gRPC service, and
its events (the outbox relay, and the consumer that settles orders, ADR 18)."""

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
from orderflow.orders.domain import FollowUp
from orderflow.orders.grpc_api import service_spec
from orderflow.orders.metrics import StuckOrderGauges
from orderflow.orders.service import OrdersService
from orderflow.orders.storage import SqlOrdersUnitOfWork, outbox_tables
from orderflow.platform.component import Component, open_database
from orderflow.settings import CommonSettings, OrdersSettings

SERVICE = "orders"


def handlers(service: OrdersService) -> dict[str, Handler[SqlOrdersUnitOfWork]]:
    """orders consumes the follow-ups of confirmed orders and settles an order once both
    have reported."""

    async def stock_committed(uow: SqlOrdersUnitOfWork, event: Event) -> None:
        assert isinstance(event.data, events_pb2.StockCommitted)
        await service.record_follow_up(uow, event.data.order_id, FollowUp.STOCK)

    async def loyalty_committed(uow: SqlOrdersUnitOfWork, event: Event) -> None:
        assert isinstance(event.data, events_pb2.LoyaltyCommitted)
        await service.record_follow_up(uow, event.data.order_id, FollowUp.LOYALTY)

    return {"stock.committed": stock_committed, "loyalty.committed": loyalty_committed}


async def build(
    settings: OrdersSettings,
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
    uow = functools.partial(SqlOrdersUnitOfWork, database, outbox)
    service = OrdersService(uow, events_grace_seconds=settings.events_grace_seconds)
    gauges = StuckOrderGauges(service, interval=settings.stuck_metrics_interval_seconds)
    backlog = BacklogReader(uow, outbox.tables)
    spec = dataclasses.replace(service_spec(service, database, backlog), metrics=gauges.run)
    events = service_events(SERVICE, uow, outbox, handlers(service), bus)
    return Component(spec, database, events)
