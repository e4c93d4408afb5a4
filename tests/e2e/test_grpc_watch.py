"""WatchOrder: the order now, then each change until it is settled, fed by the order events."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from sqlalchemy import NullPool, text
from sqlalchemy.ext.asyncio import create_async_engine

from orderflow.api.v1 import ordering_pb2 as pb
from orderflow.api.v1 import ordering_pb2_grpc as pb_grpc
from orderflow.registry import SERVICE_NAMES
from tests.e2e.conftest import new_customer, new_item, points, start, stock, unique
from tests.e2e.nats import NatsServer
from tests.e2e.tcp_proxy import LossyProxy
from tests.e2e.test_grpc_api import grpc_reply
from tests.system import Process, System, free_port, one_process

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


# -- a cancel made through another gateway ------------------------------------------------
#
# The watched order must be CONFIRMED but not yet settled when the cancel is asked for (a
# settled order's stream has ended), and the cancel must pause after its request: loyalty's
# database is kept busy from the placement on, so loyalty can neither earn the order's
# points (the order stays unsettled) nor refund its discount (the cancel waits). Events go
# over JetStream in both modes: on the in-process bus a publish waits for every consumer's
# ack, so a busy loyalty would hold back the order events too (the in-process tap has a
# test of its own, tests/unit/test_gateway_watch.py).


@pytest.fixture(scope="module")
def onebox_on_jetstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    workdir = Path(tmp_path_factory.mktemp("onebox-jetstream"))
    nats = NatsServer(workdir)
    nats.start()
    try:
        system = start(one_process(workdir, {"ORDERFLOW_NATS_URL": nats.url}))
        try:
            yield system
        finally:
            system.stop()
    finally:
        nats.stop()


@pytest.fixture(params=["one-process", "per-service"])
def two_gateways_system(request: pytest.FixtureRequest) -> System:
    if request.param == "one-process":
        return request.getfixturevalue("onebox_on_jetstream")
    return request.getfixturevalue("per_service_system")


@dataclass
class OtherGateway:
    """A second gateway process on ports of its own, against the same services; its calls
    to loyalty pass a proxy that can hold a reply back."""

    api: httpx.AsyncClient
    loyalty: LossyProxy


@contextlib.asynccontextmanager
async def other_gateway(system: System, workdir: Path) -> AsyncIterator[OtherGateway]:
    if system.mode == "one-process":
        (onebox,) = system.processes.values()
        grpc_port = onebox.argv[onebox.argv.index("--grpc-port") + 1]
        env = dict(onebox.env)
        targets = {name: f"127.0.0.1:{grpc_port}" for name in SERVICE_NAMES}
    else:
        env = dict(system.processes["gateway"].env)
        targets = {n: env[f"ORDERFLOW_GATEWAY_{n.upper()}_TARGET"] for n in SERVICE_NAMES}
    host, _, port = targets["loyalty"].rpartition(":")
    proxy = LossyProxy(host, int(port))
    proxy.start()
    targets["loyalty"] = f"127.0.0.1:{proxy.port}"
    http = free_port()
    env.update({f"ORDERFLOW_GATEWAY_{n.upper()}_TARGET": t for n, t in targets.items()})
    env.update(
        {
            "ORDERFLOW_GATEWAY_PORT": str(http),
            "ORDERFLOW_GATEWAY_GRPC_PORT": "0",
            # Patient: its calls wait for a busy loyalty rather than give up after 2 s.
            "ORDERFLOW_GATEWAY_RPC_TIMEOUT_SECONDS": "30",
            "ORDERFLOW_GATEWAY_REQUEST_TIMEOUT_SECONDS": "30",
            "ORDERFLOW_GATEWAY_LEASE_SECONDS": "60",
        }
    )
    argv = [sys.executable, "-m", "orderflow", "serve", "gateway"]
    process = Process("other-gateway", argv, env, http, workdir / "other-gateway.log")
    other = System("other gateway", f"http://127.0.0.1:{http}", {"gateway": process})
    try:
        start(other)
        async with httpx.AsyncClient(base_url=other.base_url, timeout=60) as api:
            yield OtherGateway(api, proxy)
    finally:
        proxy.release()
        other.stop()
        proxy.stop()


@contextlib.asynccontextmanager
async def loyalty_busy(system: System, customer: str) -> AsyncIterator[None]:
    """Loyalty's writes to the customer's orders wait for the block to end, as behind a long
    transaction: SQLite's write lock (one process) or the rows' locks (PostgreSQL)."""
    if system.mode == "one-process":
        (onebox,) = system.processes.values()
        path = Path(onebox.argv[onebox.argv.index("--data-dir") + 1]) / "loyalty.db"
        db = sqlite3.connect(path, timeout=10, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            yield
        finally:
            db.close()  # (rolls back)
        return
    url = system.processes["loyalty"].env["ORDERFLOW_LOYALTY_DATABASE_URL"]
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn, conn.begin():
            locked = await conn.execute(
                text("SELECT order_id FROM applications WHERE customer_id = :c FOR UPDATE"),
                {"c": customer},
            )
            assert locked.all(), "the customer has no order at loyalty to lock"
            yield
    finally:
        await engine.dispose()


async def reached(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def states(updates: list[pb.Order]) -> list[tuple[str, bool, bool]]:
    """(status, cancel requested, settled) of each update, repeats in a row made one."""
    every = [
        (STATUS(u.status).removeprefix("ORDER_STATUS_"), u.cancel_requested, u.settled)
        for u in updates
    ]
    return [state for state, _ in itertools.groupby(every)]


async def test_a_cancel_made_through_another_gateway_is_watched_from_its_request(
    two_gateways_system: System, tmp_path: Path
) -> None:
    """A stream on one gateway shows "cancel requested", then the cancellation, for a
    cancel made through another gateway process: the request is an event (ADR 28)."""
    system = two_gateways_system
    seen: list[pb.Order] = []

    async def read(stream: AsyncIterator[pb.WatchOrderResponse]) -> None:
        async for update in stream:
            seen.append(update.order)

    async with (
        httpx.AsyncClient(base_url=system.base_url, timeout=30) as api,
        grpc.aio.insecure_channel(system.grpc_target) as channel,
        other_gateway(system, tmp_path) as other,
    ):
        stub = pb_grpc.OrderingServiceStub(channel)
        sku = await new_item(api, price=700, stock=5)
        customer = await new_customer(api)
        # Placed through the other gateway; loyalty's answer to its discount is held back
        # until loyalty is busy.
        other.loyalty.hold(customer)
        placing = asyncio.create_task(
            other.api.post(
                "/api/v1/orders",
                json={"customer_id": customer, "items": [{"sku": sku, "quantity": 2}]},
            )
        )
        assert await asyncio.to_thread(other.loyalty.held.wait, 10), "no discount was asked"
        async with loyalty_busy(system, customer):
            other.loyalty.release()
            placed = await placing
            assert placed.status_code == 201, placed.text
            order_id = placed.json()["id"]
            watching = stub.WatchOrder(pb.WatchOrderRequest(order_id=order_id), timeout=60)
            reading = asyncio.create_task(read(watching))
            assert await reached(lambda: bool(seen), 10), "the stream sent nothing"
            assert states(seen) == [("CONFIRMED", False, False)]
            # Cancelled through the other gateway: asked for, then waiting for loyalty.
            cancelling = asyncio.create_task(other.api.post(f"/api/v1/orders/{order_id}/cancel"))
            shown = await reached(lambda: any(u.cancel_requested for u in seen), 10)
            assert shown, f"the stream did not show the cancel request: {states(seen)}"
        cancelled = await cancelling
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "CANCELLED"
        await asyncio.wait_for(reading, 20)
        assert states(seen) == [
            ("CONFIRMED", False, False),
            ("CONFIRMED", True, False),  # cancel requested
            ("CANCELLED", True, True),
        ]
        assert await stock(api, sku) == (5, 0, 0)
        assert await points(api, customer) == 0


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
