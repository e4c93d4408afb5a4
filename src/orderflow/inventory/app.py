"""Build the inventory component from settings: its database (migrated) and its gRPC service."""

from __future__ import annotations

import dataclasses
import functools

from orderflow.inventory.grpc_api import service_spec
from orderflow.inventory.metrics import StockGauges
from orderflow.inventory.migrations import HEAD
from orderflow.inventory.service import InventoryService
from orderflow.platform.component import Component
from orderflow.platform.db import create_database
from orderflow.settings import CommonSettings, InventorySettings


async def build(
    settings: InventorySettings, common: CommonSettings, *, migrate: bool = True
) -> Component:
    """The service on its database; with migrate, the database is brought up to date first
    (`orderflow serve` migrates in a child process instead, so alembic stays out of memory)."""
    database = create_database(settings.database_url, pool_size=settings.db_pool_size)
    if migrate:
        from orderflow.platform import migrations

        try:
            await migrations.upgrade(database, "inventory")
        except BaseException:
            await database.dispose()
            raise
    service = InventoryService(database, currency=common.currency)
    gauges = StockGauges(database, interval=settings.stock_metrics_interval_seconds)
    spec = dataclasses.replace(
        service_spec(service, database),
        metrics=gauges.run,
        probe=functools.partial(database.ping_schema, HEAD),
    )
    return Component(spec, database)
