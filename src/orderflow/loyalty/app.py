"""Build the loyalty component from settings: its database (migrated) and its gRPC service."""

from __future__ import annotations

import dataclasses
import functools

from orderflow.loyalty.domain import Tiers
from orderflow.loyalty.grpc_api import service_spec
from orderflow.loyalty.migrations import HEAD
from orderflow.loyalty.service import LoyaltyService
from orderflow.platform.component import Component
from orderflow.platform.db import create_database
from orderflow.settings import CommonSettings, LoyaltySettings


async def build(
    settings: LoyaltySettings, common: CommonSettings, *, migrate: bool = True
) -> Component:
    """The service on its database; with migrate, the database is brought up to date first
    (`orderflow serve` migrates in a child process instead, so alembic stays out of memory)."""
    database = create_database(settings.database_url, pool_size=settings.db_pool_size)
    if migrate:
        from orderflow.platform import migrations

        try:
            await migrations.upgrade(database, "loyalty")
        except BaseException:
            await database.dispose()
            raise
    service = LoyaltyService(
        database,
        tiers=Tiers(settings.tiers, settings.default_tier),
        minor_units=common.minor_units,
    )
    spec = service_spec(service, database)
    # SERVING only once the database answers and is at the newest migration.
    spec = dataclasses.replace(spec, probe=functools.partial(database.ping_schema, HEAD))
    return Component(spec, database)
