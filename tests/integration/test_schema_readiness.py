"""A service reports SERVING only once its database is migrated to the newest revision."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orderflow.boot import build_component
from orderflow.platform import migrations
from orderflow.platform.grpc_server import check_health, create_server
from orderflow.settings import CommonSettings, InventorySettings, LoyaltySettings, OrdersSettings

SETTINGS = {"orders": OrdersSettings, "inventory": InventorySettings, "loyalty": LoyaltySettings}


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_the_declared_head_is_the_newest_migration(service: str) -> None:
    declared = importlib.import_module(f"orderflow.{service}.migrations").HEAD
    assert declared == migrations.head_revision(service)


async def _status(port: int, name: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        return int(reply.status)


@pytest.mark.parametrize("service", sorted(SETTINGS))
async def test_not_serving_until_migrated(
    service: str, make_db_url: Callable[[str], object]
) -> None:
    url = str(await make_db_url(service))  # type: ignore[misc]
    component = await build_component(
        service, SETTINGS[service](database_url=url), CommonSettings(), migrate=False
    )
    running = await create_server([component.spec], "127.0.0.1", 0, health_interval=3600)
    try:
        name = component.spec.name
        assert await _status(running.port, name) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await _status(running.port, "") == health_pb2.HealthCheckResponse.NOT_SERVING
        await migrations.upgrade(component.database, service)
        assert await check_health(running)
        assert await _status(running.port, name) == health_pb2.HealthCheckResponse.SERVING
        assert await _status(running.port, "") == health_pb2.HealthCheckResponse.SERVING
    finally:
        await running.stop(0)
        await component.close()
