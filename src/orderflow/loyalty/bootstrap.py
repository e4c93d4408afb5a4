"""Build the loyalty component from settings: its database (migrated) and its gRPC service."""

from __future__ import annotations

import functools

from orderflow.loyalty.domain import Tiers
from orderflow.loyalty.grpc_api import service_spec
from orderflow.loyalty.service import LoyaltyService
from orderflow.loyalty.storage import SqlLoyaltyUnitOfWork
from orderflow.platform.component import Component, open_database
from orderflow.settings import CommonSettings, LoyaltySettings


async def build(
    settings: LoyaltySettings, common: CommonSettings, *, migrate: bool = True
) -> Component:
    """The service on its own database (migrated first unless migrate is False)."""
    database = await open_database(
        settings.database_url, settings.db_pool_size, "loyalty", migrate=migrate
    )
    service = LoyaltyService(
        functools.partial(SqlLoyaltyUnitOfWork, database),
        tiers=Tiers(settings.tiers, settings.default_tier),
        minor_units=common.minor_units,
    )
    return Component(service_spec(service, database), database)
