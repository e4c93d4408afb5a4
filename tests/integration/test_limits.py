"""gRPC servers bound what they accept: message size and calls in flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from orderflow.boot import build_component
from orderflow.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from orderflow.platform.component import Component
from orderflow.platform.grpc_server import MAX_MESSAGE_BYTES, RunningServer, create_server
from orderflow.settings import CommonSettings, InventorySettings


@pytest.fixture
async def component(tmp_path: Path) -> AsyncIterator[Component]:
    settings = InventorySettings(database_url=f"sqlite+aiosqlite:///{tmp_path}/inventory.db")
    built: Component = await build_component("inventory", settings, CommonSettings())
    yield built
    await built.close()


async def _serve(component: Component, max_concurrent_rpcs: int | None = None) -> RunningServer:
    return await create_server(
        [component.spec], "127.0.0.1", 0, max_concurrent_rpcs=max_concurrent_rpcs
    )


async def test_an_oversized_message_is_refused(component: Component) -> None:
    running = await _serve(component)
    unbounded = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}", options=unbounded) as ch:
        stub = inventory_pb2_grpc.InventoryServiceStub(ch)
        huge = inventory_pb2.CreateItemRequest(
            sku="BIG", name="x" * (MAX_MESSAGE_BYTES + 1), price=1, stock=1
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateItem(huge, timeout=10)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        missing = await stub.ListItems(inventory_pb2.ListItemsRequest(), timeout=5)
        assert list(missing.items) == []  # nothing was created
    await running.stop(0)


async def test_calls_beyond_the_concurrency_bound_are_refused(component: Component) -> None:
    running = await _serve(component, max_concurrent_rpcs=2)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
        stub = inventory_pb2_grpc.InventoryServiceStub(ch)
        calls = [
            stub.ReserveStock(
                inventory_pb2.ReserveStockRequest(
                    order_id=f"o-{n}", lines=[inventory_pb2.StockLine(sku="NONE", quantity=1)]
                ),
                timeout=10,
            )
            for n in range(60)
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        codes = {r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)}
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes
    await running.stop(0)
