"""Build the loyalty component from settings: its database (migrated), its gRPC service, and
its events (the outbox relay, and the consumer that earns a confirmed order's points,
ADR 18)."""

from __future__ import annotations

import functools

from orderflow.events.backlog import BacklogReader
from orderflow.events.bus import EventBus
from orderflow.events.consumer import Handler
from orderflow.events.envelope import Event
from orderflow.events.outbox import Outbox
from orderflow.events.service import service_events
from orderflow.events.v1 import events_pb2
from orderflow.loyalty.domain import Tiers
from orderflow.loyalty.grpc_api import service_spec
from orderflow.loyalty.service import LoyaltyService
from orderflow.loyalty.storage import SqlLoyaltyUnitOfWork, outbox_tables
from orderflow.platform.component import Component, open_database
from orderflow.settings import CommonSettings, LoyaltySettings

SERVICE = "loyalty"


def handlers(service: LoyaltyService) -> dict[str, Handler[SqlLoyaltyUnitOfWork]]:
    """loyalty consumes order.confirmed: the order's points are earned."""

    async def order_confirmed(uow: SqlLoyaltyUnitOfWork, event: Event) -> None:
        assert isinstance(event.data, events_pb2.OrderConfirmed)
        await service.commit_discount_for(uow, event.data.order_id)

    return {"order.confirmed": order_confirmed}


async def build(
    settings: LoyaltySettings,
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
    uow = functools.partial(SqlLoyaltyUnitOfWork, database, outbox)
    service = LoyaltyService(
        uow,
        tiers=Tiers(settings.tiers, settings.default_tier),
        minor_units=common.minor_units,
        idempotency_lease_seconds=settings.idempotency_lease_seconds,
        idempotency_retention_seconds=settings.idempotency_retention_seconds,
    )
    events = service_events(SERVICE, uow, outbox, handlers(service), bus)
    events.relay.housekeeping.append(service.purge_idempotency_keys)
    backlog = BacklogReader(uow, outbox.tables)
    return Component(service_spec(service, database, backlog), database, events)
