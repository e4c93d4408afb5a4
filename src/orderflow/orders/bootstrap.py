"""Build the orders component from settings: its database (migrated) and its gRPC service."""

from __future__ import annotations

import functools

from orderflow.orders.grpc_api import service_spec
from orderflow.orders.service import OrdersService
from orderflow.orders.storage import SqlOrdersUnitOfWork
from orderflow.platform.component import Component, open_database
from orderflow.settings import CommonSettings, OrdersSettings


async def build(
    settings: OrdersSettings, common: CommonSettings, *, migrate: bool = True
) -> Component:
    """The service on its own database (migrated first unless migrate is False)."""
    database = await open_database(
        settings.database_url, settings.db_pool_size, "orders", migrate=migrate
    )
    service = OrdersService(functools.partial(SqlOrdersUnitOfWork, database))
    return Component(service_spec(service, database), database)
