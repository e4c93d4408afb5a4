"""WatchOrder: the order now, then each change until it is settled, fed by the order events."""

from __future__ import annotations

import asyncio
import itertools
import re
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from orderflow.api.v1 import ordering_pb2 as pb
from orderflow.api.v1 import ordering_pb2_grpc as pb_grpc
from tests.e2e.conftest import new_customer, new_item, start, unique
from tests.e2e.nats import NatsServer
from tests.e2e.test_grpc_api import grpc_reply
from tests.system import System, one_process

STATUS = pb.OrderStatus.Name


@pytest.fixture
async def stub(system: System) -> AsyncIterator[pb_grpc.OrderingServiceStub]:
    async with grpc.aio.insecure_channel(system.grpc_target) as channel:
        yield pb_grpc.OrderingServiceStub(channel)


async def watch(
    stub: pb_grpc.OrderingServiceStub, order_id: str, timeout: float = 20
) -> list[pb.Order]:
    seen = []
    async for update in stub.WatchOrder(pb.WatchOrderRequest(order_id=order_id), timeout=timeout):
        seen.append(update.order)
    return seen


async def open_streams(base_url: str) -> float:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as api:
        text = (await api.get("/metrics")).text
    found = re.search(r"^orderflow_grpc_watch_streams (\S+)$", text, re.M)
    assert found, "no orderflow_grpc_watch_streams metric"
    return float(found.group(1))


async def test_a_new_order_is_watched_until_settled(
    api: httpx.AsyncClient, stub: pb_grpc.OrderingServiceStub
) -> None:
    sku = await new_item(api, price=300, stock=5)
    customer = await new_customer(api)
    placed = await stub.PlaceOrder(
        pb.PlaceOrderRequest(
            customer_id=customer, items=[pb.PlaceOrderRequest.Line(sku=sku, quantity=2)]
        ),
        timeout=10,
    )
    updates = await watch(stub, placed.order.id)
    assert updates, "no state at all"
    assert STATUS(updates[0].status) in ("ORDER_STATUS_PENDING", "ORDER_STATUS_CONFIRMED")
    assert updates[-1].settled and STATUS(updates[-1].status) == "ORDER_STATUS_CONFIRMED"
    assert all(not u.settled for u in updates[:-1])
    assert updates[-1].total == 600
    # Each message is a change: no two in a row are the same.
    assert all(a != b for a, b in itertools.pairwise(updates))


async def test_a_cancelled_order_yields_the_cancellation(
    api: httpx.AsyncClient, stub: pb_grpc.OrderingServiceStub
) -> None:
    sku = await new_item(api, price=800, stock=5)
    customer = await new_customer(api)
    placed = await stub.PlaceOrder(
        pb.PlaceOrderRequest(
            customer_id=customer, items=[pb.PlaceOrderRequest.Line(sku=sku, quantity=1)]
        ),
        timeout=10,
    )
    await watch(stub, placed.order.id)  # settled
    cancelled = await stub.CancelOrder(pb.CancelOrderRequest(order_id=placed.order.id), timeout=10)
    assert cancelled.order.status == pb.ORDER_STATUS_CANCELLED
    updates = await watch(stub, placed.order.id)
    assert STATUS(updates[-1].status) == "ORDER_STATUS_CANCELLED"
    assert updates[-1].settled


async def test_watching_nothing_is_not_found(stub: pb_grpc.OrderingServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await watch(stub, unique("nope"))
    assert (caught.value.code(), grpc_reply(caught.value).error) == (
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
    )


# -- an order that cannot settle: its events cannot get out while the broker is down -------


@pytest.fixture(scope="module")
def stalled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[System, NatsServer]]:
    workdir = Path(tmp_path_factory.mktemp("stalled"))
    nats = NatsServer(workdir)
    nats.start()
    system = start(one_process(workdir, {"ORDERFLOW_NATS_URL": nats.url}))
    try:
        yield system, nats
    finally:
        system.stop()
        if nats.running:
            nats.stop()


async def test_a_deadline_ends_the_stream_and_leaves_nothing_behind(
    stalled: tuple[System, NatsServer],
) -> None:
    system, nats = stalled
    async with (
        httpx.AsyncClient(base_url=system.base_url, timeout=30) as api,
        grpc.aio.insecure_channel(system.grpc_target) as channel,
    ):
        stub = pb_grpc.OrderingServiceStub(channel)
        sku = await new_item(api, price=100, stock=5)
        customer = await new_customer(api)
        nats.stop()  # the order's events stay in the outbox: it cannot settle
        placed = await stub.PlaceOrder(
            pb.PlaceOrderRequest(
                customer_id=customer, items=[pb.PlaceOrderRequest.Line(sku=sku, quantity=1)]
            ),
            timeout=10,
        )
        assert placed.order.status == pb.ORDER_STATUS_CONFIRMED
        seen: list[pb.Order] = []
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for update in stub.WatchOrder(
                pb.WatchOrderRequest(order_id=placed.order.id), timeout=1.5
            ):
                seen.append(update.order)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 5
        assert seen and STATUS(seen[0].status) == "ORDER_STATUS_CONFIRMED"
        assert not seen[-1].settled
        deadline = time.monotonic() + 5
        while (left := await open_streams(system.base_url)) != 0:
            assert time.monotonic() < deadline, f"{left} WatchOrder streams still open"
            await asyncio.sleep(0.1)


async def test_a_graceful_stop_ends_the_open_streams(
    stalled: tuple[System, NatsServer],
) -> None:
    """SIGTERM: a stream still watching an order that cannot settle ends within the grace,
    and the process exits cleanly (runs last: it stops the module's system)."""
    system, nats = stalled
    if nats.running:
        nats.stop()
    async with (
        httpx.AsyncClient(base_url=system.base_url, timeout=30) as api,
        grpc.aio.insecure_channel(system.grpc_target) as channel,
    ):
        stub = pb_grpc.OrderingServiceStub(channel)
        sku = await new_item(api, price=100, stock=5)
        customer = await new_customer(api)
        placed = await stub.PlaceOrder(
            pb.PlaceOrderRequest(
                customer_id=customer, items=[pb.PlaceOrderRequest.Line(sku=sku, quantity=1)]
            ),
            timeout=10,
        )
        stream = stub.WatchOrder(pb.WatchOrderRequest(order_id=placed.order.id), timeout=60)
        first = await stream.read()
        assert isinstance(first, pb.WatchOrderResponse) and not first.order.settled
        started = time.monotonic()
        process = system.processes["onebox"]
        assert process.popen is not None
        process.popen.terminate()
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while await stream.read() is not grpc.aio.EOF:
                pass
        assert ended.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert time.monotonic() - started < 8
        # uvicorn re-raises the SIGTERM it handled once everything is shut down.
        code = await asyncio.to_thread(process.popen.wait, 15)
        assert code in (0, -signal.SIGTERM), code
        assert "Traceback" not in process.log_path.read_text()
