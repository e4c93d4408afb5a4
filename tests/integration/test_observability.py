"""Metrics of the gRPC services and traces across gateway and services, in process.

The three services run on real gRPC servers (port 0, SQLite) built as `orderflow serve`
builds them; the gateway app talks to them over real gRPC channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import grpc
import httpx
import pytest
import structlog
import structlog.testing
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from orderflow.boot import build_component
from orderflow.errors import NotFoundError
from orderflow.gateway.app import create_app
from orderflow.gateway.clients import GrpcOrders
from orderflow.inventory.v1 import inventory_pb2 as inv_pb
from orderflow.inventory.v1 import inventory_pb2_grpc as inv_grpc
from orderflow.orders.v1 import orders_pb2 as ord_pb
from orderflow.orders.v1 import orders_pb2_grpc as ord_grpc
from orderflow.platform import logging as logging_policy
from orderflow.platform import telemetry
from orderflow.platform.component import Component
from orderflow.platform.grpc_server import RunningServer, create_server
from orderflow.platform.metrics import serve_metrics
from orderflow.settings import (
    CommonSettings,
    GatewaySettings,
    InventorySettings,
    LoyaltySettings,
    OrdersSettings,
)

INVENTORY = "orderflow.inventory.v1.InventoryService"
SERVICES = {
    "orders": ("orderflow.orders.v1.OrderService", OrdersSettings),
    "inventory": (INVENTORY, InventorySettings),
    "loyalty": ("orderflow.loyalty.v1.LoyaltyService", LoyaltySettings),
}


@dataclass
class Hosted:
    component: Component
    server: RunningServer


Host = Callable[..., Awaitable[Hosted]]


@pytest.fixture
async def host(sqlite_url: Callable[[str], str]) -> AsyncIterator[Host]:
    """await host("inventory", **settings) -> the service on a real server (port 0)."""
    hosted: list[Hosted] = []

    async def start(service: str, **settings: object) -> Hosted:
        cfg = SERVICES[service][1](database_url=sqlite_url(service), **settings)
        component = await build_component(service, cfg, CommonSettings())
        server = await create_server([component.spec], "127.0.0.1", 0)
        hosted.append(Hosted(component, server))
        return hosted[-1]

    yield start
    for h in reversed(hosted):
        await h.server.stop(0)
        await h.component.close()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_service_metrics_count_rpcs_by_method_and_code_and_show_stock(host: Host) -> None:
    inventory = await host("inventory", stock_metrics_interval_seconds=0.05)
    registry = inventory.server.metrics.registry
    async with grpc.aio.insecure_channel(f"127.0.0.1:{inventory.server.port}") as channel:
        stub = inv_grpc.InventoryServiceStub(channel)
        await stub.CreateItem(inv_pb.CreateItemRequest(sku="MUG-1", name="Mug", price=100, stock=7))
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.GetItem(inv_pb.GetItemRequest(sku="NOPE"))
            assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        await stub.ReserveStock(
            inv_pb.ReserveStockRequest(
                order_id="o-1", lines=[inv_pb.StockLine(sku="MUG-1", quantity=2)]
            )
        )

    def calls(method: str, code: str) -> float:
        return sample(
            registry, "orderflow_rpc_requests_total", service=INVENTORY, method=method, code=code
        )

    assert calls("CreateItem", "OK") == 1
    assert calls("GetItem", "NOT_FOUND") == 2
    assert calls("ReserveStock", "OK") == 1
    latency = "orderflow_rpc_duration_seconds_count"
    assert sample(registry, latency, service=INVENTORY, method="GetItem", code="NOT_FOUND") == 2
    # Health checks and reflection are not counted.
    assert all(
        not s.labels.get("service", "").startswith("grpc.")
        for m in registry.collect()
        for s in m.samples
    )

    async def stock(state: str) -> float:
        for _ in range(200):
            value = registry.get_sample_value("orderflow_stock", {"sku": "MUG-1", "state": state})
            if value is not None and (state != "reserved" or value == 2):
                return value
            await asyncio.sleep(0.02)
        raise AssertionError(f"no orderflow_stock{{state={state}}} sample")

    assert (await stock("reserved"), await stock("available"), await stock("sold")) == (2, 5, 0)
    assert registry.get_sample_value("orderflow_stock_truncated") == 0

    # The same registry over HTTP, as `orderflow serve` exposes it on its metrics port.
    endpoint = serve_metrics(registry, "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"http://127.0.0.1:{endpoint.port}/metrics")).text
    finally:
        endpoint.close()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {"orderflow_rpc_requests", "orderflow_rpc_duration_seconds", "orderflow_stock"} <= set(
        families
    )


async def wait_for_sample(
    registry: CollectorRegistry, name: str, labels: dict[str, str], value: float
) -> None:
    for _ in range(250):
        if registry.get_sample_value(name, labels) == value:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(
        f"{name}{labels} is {registry.get_sample_value(name, labels)}, not {value}"
    )


async def test_inventory_counts_the_items_at_or_below_its_low_stock_threshold(host: Host) -> None:
    inventory = await host("inventory", stock_metrics_interval_seconds=0.05, low_stock_threshold=3)
    registry = inventory.server.metrics.registry
    async with grpc.aio.insecure_channel(f"127.0.0.1:{inventory.server.port}") as channel:
        stub = inv_grpc.InventoryServiceStub(channel)
        await wait_for_sample(registry, "orderflow_stock_low_items", {}, 0)
        assert registry.get_sample_value("orderflow_stock_low_threshold") == 3
        for sku, stock in [("MUG-1", 10), ("TEE-1", 3), ("CAP-1", 4)]:
            request = inv_pb.CreateItemRequest(sku=sku, name=sku, price=100, stock=stock)
            await stub.CreateItem(request)
        await wait_for_sample(registry, "orderflow_stock_low_items", {}, 1)  # TEE-1: 3 <= 3
        reserve = inv_pb.ReserveStockRequest(
            order_id="o-1", lines=[inv_pb.StockLine(sku="MUG-1", quantity=8)]
        )
        await stub.ReserveStock(reserve)
        await wait_for_sample(registry, "orderflow_stock_low_items", {}, 2)  # and MUG-1: 2
        restock = inv_pb.UpdateItemRequest(sku="TEE-1", restock=10)
        await stub.UpdateItem(restock)
        await wait_for_sample(registry, "orderflow_stock_low_items", {}, 1)
    assert registry.get_sample_value("orderflow_stock", {"sku": "MUG-1", "state": "available"}) == 2


async def test_orders_counts_an_order_stuck_from_its_lease_to_its_settlement(host: Host) -> None:
    orders = await host("orders", stuck_metrics_interval_seconds=0.05)
    registry = orders.server.metrics.registry

    async def stuck(status: str, value: float) -> None:
        await wait_for_sample(registry, "orderflow_orders_stuck", {"status": status}, value)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{orders.server.port}") as channel:
        stub = ord_grpc.OrderServiceStub(channel)
        for status in ("PENDING", "CONFIRMED", "REJECTED", "CANCELLED"):
            await stuck(status, 0)
        created = await stub.CreateOrder(
            ord_pb.CreateOrderRequest(
                customer_id="c-1",
                lines=[ord_pb.OrderLine(sku="MUG-1", quantity=1)],
                request_fingerprint="fp",
                lease_owner="gateway:a",
                lease_seconds=0.3,
            )
        )
        order_id = created.order.id
        await stuck("PENDING", 1)  # its request's lease ran out
        claimed = await stub.ClaimStaleOrders(
            ord_pb.ClaimStaleOrdersRequest(lease_owner="recovery:r", lease_seconds=30, limit=10)
        )
        assert [o.id for o in claimed.orders] == [order_id]
        rejected = ord_pb.RejectOrderRequest(
            order_id=order_id,
            lease_owner="recovery:r",
            failure=ord_pb.Failure(code="SERVICE_UNAVAILABLE", message="down"),
        )
        await stub.RejectOrder(rejected)
        await stuck("REJECTED", 1)  # held by the recovery worker, its undo steps to run
        await stuck("PENDING", 0)
        await stub.SettleOrder(
            ord_pb.SettleOrderRequest(order_id=order_id, lease_owner="recovery:r")
        )
        await stuck("REJECTED", 0)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on, into memory, for whatever is built during the test."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    previous = telemetry.use_tracer_provider(provider)
    yield exporter
    telemetry.use_tracer_provider(previous)
    provider.shutdown()


async def test_one_order_is_one_trace_through_the_gateway_and_all_three_services(
    spans: InMemorySpanExporter, host: Host
) -> None:
    hosted = {name: await host(name) for name in SERVICES}
    ports = {name: h.server.port for name, h in hosted.items()}
    settings = GatewaySettings(
        orders_target=f"127.0.0.1:{ports['orders']}",
        inventory_target=f"127.0.0.1:{ports['inventory']}",
        loyalty_target=f"127.0.0.1:{ports['loyalty']}",
    )
    app = create_app(settings, CommonSettings(), recovery=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as api:
            item = {"sku": "MUG-1", "name": "Mug", "price": 1250, "stock": 5}
            assert (await api.post("/api/v1/items", json=item)).status_code == 201
            tier = await api.put("/api/v1/customers/c-1/loyalty", json={"tier": "gold"})
            assert tier.status_code == 200
            spans.clear()
            order = {"customer_id": "c-1", "items": [{"sku": "MUG-1", "quantity": 2}]}
            placed = await api.post("/api/v1/orders", json=order)
            assert placed.status_code == 201, placed.text
    # Every call is made before the reply (the follow-ups are events, ADR 18).
    finished: tuple[ReadableSpan, ...] = spans.get_finished_spans()
    roots = [s for s in finished if s.parent is None]
    assert [s.name for s in roots] == ["POST /api/v1/orders"], [s.name for s in finished]
    trace_id = roots[0].context.trace_id
    assert {s.context.trace_id for s in finished} == {trace_id}

    def served(service: str) -> set[str]:
        return {
            str((s.attributes or {}).get("rpc.method"))
            for s in finished
            if s.kind == SpanKind.SERVER and (s.attributes or {}).get("rpc.service") == service
        }

    assert {"CreateOrder", "ConfirmOrder"} <= served(SERVICES["orders"][0])
    assert {"ReserveStock"} <= served(SERVICES["inventory"][0])
    assert {"ApplyDiscount"} <= served(SERVICES["loyalty"][0])
    # Each service span continues the gateway's client span of the same call.
    clients = {s.context.span_id: s for s in finished if s.kind == SpanKind.CLIENT}
    for server_span in (s for s in finished if s.kind == SpanKind.SERVER and s.parent):
        if server_span is roots[0]:
            continue
        assert server_span.parent is not None
        assert server_span.parent.span_id in clients, server_span.name
        assert clients[server_span.parent.span_id].name == server_span.name


def test_tracing_is_off_and_costs_nothing_without_an_endpoint() -> None:
    """No endpoint: no provider, no interceptors, and the SDK and instrumentations never load."""
    code = (
        "import sys\n"
        "from orderflow.platform import telemetry\n"
        "import orderflow.gateway.app, orderflow.platform.grpc_server, orderflow.onebox\n"
        "assert telemetry.configure_tracing('orders') is False\n"
        "assert telemetry.tracer_provider() is None\n"
        "assert telemetry.server_interceptors() == [] and telemetry.client_interceptors() is None\n"
        "loaded = [m for m in sys.modules if m.startswith(('opentelemetry.sdk',"
        " 'opentelemetry.instrumentation', 'opentelemetry.exporter'))]\n"
        "assert not loaded, loaded\n"
        "assert telemetry.configure_tracing('orders', 'http://127.0.0.1:9') is True\n"
        "assert len(telemetry.server_interceptors()) == 1\n"
        "telemetry.tracer_provider().shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ORDERFLOW_"))}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


async def test_ids_any_text_reach_the_service_as_metadata_without_failing_the_call(
    host: Host,
) -> None:
    """An order id from a URL (or a request id) can be any text; gRPC metadata only
    carries printable ASCII, so the client percent-encodes it instead of failing the call."""
    orders = await host("orders")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{orders.server.port}") as channel:
        client = GrpcOrders(channel, GatewaySettings())
        with (
            structlog.contextvars.bound_contextvars(request_id="req-\u00e9"),
            pytest.raises(NotFoundError),
        ):
            await client.get_order("\u00e9\u2603 x")
    calls = "orderflow_rpc_requests_total"
    labels = {"service": "orderflow.orders.v1.OrderService", "method": "GetOrder"}
    assert sample(orders.server.metrics.registry, calls, **labels, code="NOT_FOUND") == 1


@pytest.fixture
def sample_rate() -> Iterator[Callable[[float], None]]:
    """Set the share of requests whose calls are logged at INFO; the default after."""
    yield logging_policy.sample_requests
    logging_policy.sample_requests(logging_policy.DEFAULT_SAMPLE_RATE)


async def test_a_call_is_logged_at_info_when_it_failed_or_its_request_is_sampled(
    host: Host, sample_rate: Callable[[float], None]
) -> None:
    inventory = await host("inventory")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{inventory.server.port}") as channel:
        stub = inv_grpc.InventoryServiceStub(channel)

        async def get(sku: str, request_id: str) -> None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stub.GetItem(
                    inv_pb.GetItemRequest(sku=sku), metadata=(("x-request-id", request_id),)
                )

        await stub.CreateItem(inv_pb.CreateItemRequest(sku="LOG-1", name="Log", price=1, stock=1))
        with structlog.testing.capture_logs() as lines:
            sample_rate(0.0)
            await get("LOG-1", "not-sampled")
            await get("NOPE", "failed")
            sample_rate(1.0)
            await get("LOG-1", "sampled")
    # In call order: not sampled, failed, sampled.
    levels = [(x["outcome"], x["log_level"]) for x in lines if x["event"] == "rpc"]
    assert levels == [("OK", "debug"), ("NOT_FOUND", "info"), ("OK", "info")]


def test_every_process_samples_the_same_requests(sample_rate: Callable[[float], None]) -> None:
    ids = [f"req-{n}" for n in range(20_000)]
    sample_rate(0.01)
    chosen = {i for i in ids if logging_policy.sampled(i)}
    assert 150 < len(chosen) < 250  # about 1%
    assert chosen == {i for i in ids if logging_policy.sampled(i)}  # by the id alone
    sample_rate(0.0)
    assert not any(logging_policy.sampled(i) for i in ids)
    sample_rate(1.0)
    assert all(logging_policy.sampled(i) for i in ids)
