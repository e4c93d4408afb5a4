"""The in-process channel of one-process mode (ADR 34): the gateway's clients get the same
answers, errors, deadlines and metrics through it as over the server's socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import pytest

from orderflow import registry
from orderflow.errors import NotFoundError, OutOfStockError, ServiceUnavailableError
from orderflow.gateway.budget import budget
from orderflow.gateway.clients import GrpcInventory, GrpcLoyalty
from orderflow.gateway.ports import Line
from orderflow.gateway.readiness import Readiness
from orderflow.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from orderflow.platform.component import Component
from orderflow.platform.grpc_server import RunningServer, create_server
from orderflow.platform.inproc import InProcessServer
from orderflow.platform.logging import REQUEST_ID_KEY
from orderflow.settings import CommonSettings, GatewaySettings


@dataclass
class Hosted:
    server: RunningServer
    components: list[Component]
    socket: grpc.aio.Channel
    local: grpc.aio.Channel


@pytest.fixture
async def hosted(sqlite_url: Callable[[str], str]) -> AsyncIterator[Hosted]:
    """Inventory and loyalty on one server, as in one process: a socket channel and an
    in-process channel to the same servicers."""
    components = []
    for name in ("inventory", "loyalty"):
        definition = registry.service(name)
        cfg = definition.settings_cls(database_url=sqlite_url(name))
        components.append(await definition.build(cfg, CommonSettings()))
    server = await create_server([c.spec for c in components], "127.0.0.1", 0)
    socket = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    local = InProcessServer(server.specs, server.metrics, server.health).channel()
    yield Hosted(server, components, socket, local)
    await socket.close()
    await local.close()
    await server.stop(0)
    for component in components:
        await component.close()


def rpc_count(server: RunningServer, method: str, code: str) -> float:
    value = server.metrics.registry.get_sample_value(
        "orderflow_rpc_requests_total",
        {"service": "orderflow.inventory.v1.InventoryService", "method": method, "code": code},
    )
    return value or 0.0


async def test_the_same_calls_give_the_same_answers_in_process(hosted: Hosted) -> None:
    settings = GatewaySettings()
    over_socket = GrpcInventory(hosted.socket, settings)
    in_process = GrpcInventory(hosted.local, settings)
    created = await in_process.create_item("INPROC-1", "Thing", 250, 3)
    assert created.available == 3
    assert await over_socket.get_item("INPROC-1") == await in_process.get_item("INPROC-1")

    # A domain error comes back as the same error, with its details.
    for client in (over_socket, in_process):
        with pytest.raises(NotFoundError):
            await client.get_item("NO-SUCH-SKU")
    reserved = await in_process.reserve("order-1", [Line("INPROC-1", 2)])
    assert [line.unit_price for line in reserved.lines] == [250]
    with pytest.raises(OutOfStockError) as refused:
        await in_process.reserve("order-2", [Line("INPROC-1", 2)])
    assert "1 available" in refused.value.message
    assert (await over_socket.get_item("INPROC-1")).reserved == 2

    # The calls are the server's: counted on its metrics by method and status code.
    assert rpc_count(hosted.server, "ReserveStock", "OK") == 1
    assert rpc_count(hosted.server, "ReserveStock", "FAILED_PRECONDITION") == 1
    assert rpc_count(hosted.server, "GetItem", "NOT_FOUND") == 2


async def test_loyalty_through_the_same_channel(hosted: Hosted) -> None:
    loyalty = GrpcLoyalty(hosted.local, GatewaySettings())
    account = await loyalty.set_tier("c-inproc", "gold")
    assert (account.tier, account.discount_percent) == ("gold", 10)
    assert (await loyalty.adjust_points("c-inproc", 40, "welcome")).points == 40


async def test_health_answers_in_process(hosted: Hosted) -> None:
    ready = Readiness.over_grpc({"inventory": hosted.local, "loyalty": hosted.local}, 1.0)
    assert await ready.check() == {"inventory": "SERVING", "loyalty": "SERVING"}


async def test_metadata_reaches_the_service_and_a_deadline_is_kept(hosted: Hosted) -> None:
    seen: list[tuple[tuple[str, str], ...]] = []
    servicer = hosted.server.specs[0].servicer
    original = servicer.GetItem  # type: ignore[attr-defined]

    async def slow_get_item(request: object, context: grpc.aio.ServicerContext) -> object:
        seen.append(tuple(context.invocation_metadata() or ()))
        if request.sku == "SLOW":  # type: ignore[attr-defined]
            await asyncio.sleep(5)
        return await original(request, context)

    servicer.GetItem = slow_get_item  # type: ignore[attr-defined]
    # Handlers are bound when the channel's server is made: make it again.
    local = InProcessServer(hosted.server.specs, hosted.server.metrics, hosted.server.health)
    stub = inventory_pb2_grpc.InventoryServiceStub(local.channel())
    await stub.CreateItem(inventory_pb2.CreateItemRequest(sku="META-1", name="M", price=1, stock=1))
    await stub.GetItem(
        inventory_pb2.GetItemRequest(sku="META-1"), metadata=((REQUEST_ID_KEY, "req-42"),)
    )
    assert (REQUEST_ID_KEY, "req-42") in seen[-1]

    began = asyncio.get_running_loop().time()
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await stub.GetItem(inventory_pb2.GetItemRequest(sku="SLOW"), timeout=0.2)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert asyncio.get_running_loop().time() - began < 2
    assert rpc_count(hosted.server, "GetItem", "CANCELLED") == 1  # the handler was cancelled

    # Through the gateway's client, a spent budget is "did not answer", as over a socket.
    inventory = GrpcInventory(local.channel(), GatewaySettings(rpc_timeout_seconds=0.2))
    with budget(5.0), pytest.raises(ServiceUnavailableError):
        await inventory.get_item("SLOW")


async def test_an_unknown_method_is_unimplemented(hosted: Hosted) -> None:
    call = hosted.local.unary_unary(
        "/orderflow.inventory.v1.InventoryService/NoSuchMethod",
        request_serializer=inventory_pb2.GetItemRequest.SerializeToString,
        response_deserializer=inventory_pb2.Item.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await call(inventory_pb2.GetItemRequest(sku="X"), timeout=1)
    assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED
