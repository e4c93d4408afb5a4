"""Build the inventory component from settings: its database (migrated) and its gRPC service."""

from __future__ import annotations

import dataclasses
import functools

from orderflow.inventory.grpc_api import service_spec
from orderflow.inventory.metrics import StockGauges
from orderflow.inventory.service import InventoryService
from orderflow.inventory.storage import SqlInventoryUnitOfWork
from orderflow.platform.component import Component, open_database
from orderflow.settings import CommonSettings, InventorySettings


async def build(
    settings: InventorySettings, common: CommonSettings, *, migrate: bool = True
) -> Component:
    """The service on its own database (migrated first unless migrate is False)."""
    database = await open_database(
        settings.database_url, settings.db_pool_size, "inventory", migrate=migrate
    )
    service = InventoryService(
        functools.partial(SqlInventoryUnitOfWork, database), currency=common.currency
    )
    gauges = StockGauges(database, interval=settings.stock_metrics_interval_seconds)
    spec = dataclasses.replace(service_spec(service, database), metrics=gauges.run)
    return Component(spec, database)
