"""Every domain error a service raises reaches a REST client with its own code and HTTP status.

No service raises every error on demand (CONCURRENT_CHANGE needs two writers to race
past a row lock), so here a stand-in inventory servicer raises the error its GetItem is
asked for. The rest is the real path: the gRPC server's error mapping
(platform.grpc_server), the wire, the gateway's Caller and translation (gateway.rpc), its
adapter (gateway.clients), the route and the HTTP error table (gateway.errors).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest

from orderflow.errors import (
    ERRORS_BY_CODE,
    DependencyError,
    OrderflowError,
    RateLimitedError,
    error_classes,
)
from orderflow.gateway.app import create_app
from orderflow.gateway.errors import http_status
from orderflow.inventory.v1 import inventory_pb2_grpc
from orderflow.platform.grpc_server import ServiceSpec, create_server
from orderflow.settings import CommonSettings, GatewaySettings


class RaisingInventory(inventory_pb2_grpc.InventoryServiceServicer):  # type: ignore[misc]
    """GetItem(sku=CODE) raises the error whose code is CODE."""

    async def GetItem(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        cls = ERRORS_BY_CODE[request.sku]
        if issubclass(cls, RateLimitedError):
            raise cls("slow down", retry_after_seconds=7)
        raise cls(f"raised {cls.code} on purpose", sku=request.sku)


async def _healthy() -> None:
    return None


@pytest.fixture
async def api() -> AsyncIterator[httpx.AsyncClient]:
    spec = ServiceSpec(
        name="orderflow.inventory.v1.InventoryService",
        servicer=RaisingInventory(),
        add_to_server=inventory_pb2_grpc.add_InventoryServiceServicer_to_server,
        probe=_healthy,
    )
    running = await create_server([spec], "127.0.0.1", 0)
    target = f"127.0.0.1:{running.port}"
    settings = GatewaySettings(
        orders_target=target,
        inventory_target=target,
        loyalty_target=target,
        rpc_backoff_seconds=0.01,
    )
    app = create_app(settings, CommonSettings(), recovery=False)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                yield client
    finally:
        await running.stop(0)


def expected_code(cls: type[OrderflowError]) -> str:
    if issubclass(cls, DependencyError):
        # Sent as UNAVAILABLE, which also means "no answer": the gateway cannot tell them
        # apart, so the client hears SERVICE_UNAVAILABLE (and may retry: 503).
        return "SERVICE_UNAVAILABLE"
    if cls is OrderflowError:
        return "UPSTREAM_ERROR"  # an unnamed failure in a service is a bad gateway to us
    return cls.code


@pytest.mark.parametrize("cls", error_classes(), ids=lambda cls: cls.code)
async def test_an_error_raised_in_a_service_reaches_rest_with_its_status(
    api: httpx.AsyncClient, cls: type[OrderflowError]
) -> None:
    response = await api.get(f"/api/v1/items/{cls.code}")
    code = expected_code(cls)
    assert response.status_code == http_status(code), response.text
    assert response.status_code != 500
    error = response.json()["error"]
    assert error["code"] == code
    if code == cls.code and not issubclass(cls, DependencyError):  # rebuilt as it was raised
        if cls is RateLimitedError:
            assert response.headers["retry-after"] == "7"
        else:
            assert error["message"] == f"raised {cls.code} on purpose"
            assert error["details"] == {"sku": cls.code}


async def test_a_concurrent_change_is_a_409_conflict(api: httpx.AsyncClient) -> None:
    response = await api.get("/api/v1/items/CONCURRENT_CHANGE")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "CONCURRENT_CHANGE"
