"""gRPC servers bound what they accept: message size and calls in flight."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
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


async def test_calls_beyond_the_concurrency_bound_are_refused(
    component: Component, tmp_path: Path
) -> None:
    running = await _serve(component, max_concurrent_rpcs=2)
    # Another connection holds SQLite's write lock (as another process's writer would), so
    # the first two calls stay in flight, waiting for it, while the other 58 arrive; a
    # reserve is quick enough otherwise that calls might never overlap.
    holder = sqlite3.connect(tmp_path / "inventory.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = inventory_pb2_grpc.InventoryServiceStub(ch)

            async def reserve(n: int) -> grpc.StatusCode:
                request = inventory_pb2.ReserveStockRequest(
                    order_id=f"o-{n}", lines=[inventory_pb2.StockLine(sku="NONE", quantity=1)]
                )
                try:
                    await stub.ReserveStock(request, timeout=20)
                except grpc.aio.AioRpcError as exc:
                    return exc.code()
                return grpc.StatusCode.OK

            calls = [asyncio.create_task(reserve(n)) for n in range(60)]
            refused = 0
            for finished in asyncio.as_completed(calls, timeout=15):
                refused += await finished == grpc.StatusCode.RESOURCE_EXHAUSTED
                if refused == 58:
                    break
            holder.rollback()
            codes = Counter(await asyncio.gather(*calls))
        # the two let in ran once the lock was free, and found no such item
        assert codes == {
            grpc.StatusCode.RESOURCE_EXHAUSTED: 58,
            grpc.StatusCode.INVALID_ARGUMENT: 2,
        }
    finally:
        holder.close()
        await running.stop(0)
