"""One-process mode: the three services on one gRPC server, and the gateway calling them over gRPC.

Each service keeps its own SQLite file under the data directory, unless its
ORDERFLOW_<SERVICE>_DATABASE_URL says otherwise. `--demo` loads a small catalog and a
few loyalty accounts (only what is missing, so restarts keep the data as it is).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import grpc
import structlog

from orderflow.errors import AlreadyExistsError, NotFoundError
from orderflow.gateway.app import create_app
from orderflow.gateway.clients import GrpcInventory, GrpcLoyalty
from orderflow.gateway.metrics import GatewayMetrics
from orderflow.gateway.rpc import Channels
from orderflow.gateway.server import metrics_endpoint, uvicorn_server
from orderflow.platform.component import Component
from orderflow.platform.grpc_bind import dial_host
from orderflow.platform.grpc_server import create_server
from orderflow.platform.metrics import RegistryCollector
from orderflow.platform.tls import channel_credentials, server_credentials
from orderflow.registry import SERVICES
from orderflow.settings import AuthSettings, CommonSettings, GatewaySettings

log = structlog.get_logger("orderflow.run")

DEMO_ITEMS = (
    ("MUG-1", "Mug", 1250, 100),
    ("TEE-1", "T-shirt", 2000, 50),
    ("CAP-1", "Cap", 1500, 50),
    ("STICKER-1", "Sticker", 150, 1000),
)
# customer, tier, starting points
DEMO_ACCOUNTS = (("c-1", "gold", 500), ("c-2", "silver", 0), ("c-3", "standard", 0))


def service_settings(data_dir: Path) -> dict[str, Any]:
    """Each service's settings, with its database under data_dir unless configured."""
    chosen: dict[str, Any] = {}
    for definition in SERVICES:
        cls = definition.settings_cls
        cfg = cls()
        if "database_url" not in cfg.model_fields_set:
            url = f"sqlite+aiosqlite:///{(data_dir / f'{definition.name}.db').resolve()}"
            cfg = cls(database_url=url)
        chosen[definition.name] = cfg
    return chosen


async def load_demo(
    target: str, gateway: GatewaySettings, credentials: grpc.ChannelCredentials | None = None
) -> None:
    channels = Channels(credentials)
    try:
        inventory = GrpcInventory(channels.get(target), gateway)
        loyalty = GrpcLoyalty(channels.get(target), gateway)
        for sku, name, price, stock in DEMO_ITEMS:
            with contextlib.suppress(AlreadyExistsError):
                await inventory.create_item(sku, name, price, stock)
        for customer, tier, points in DEMO_ACCOUNTS:
            try:
                await loyalty.get_account(customer)
            except NotFoundError:
                await loyalty.set_tier(customer, tier)
                if points:
                    await loyalty.adjust_points(customer, points, "demo welcome points")
    finally:
        await channels.close()


def demo_curl(port: int) -> str:
    return (
        f"curl -s -X POST http://127.0.0.1:{port}/api/v1/orders "
        "-H 'Content-Type: application/json' -H 'Idempotency-Key: demo-1' "
        '-d \'{"customer_id": "c-1", "items": [{"sku": "MUG-1", "quantity": 2}], '
        '"redeem_points": 100}\''
    )


async def run_onebox(
    *,
    common: CommonSettings,
    gateway: GatewaySettings,
    grpc_port: int,
    data_dir: Path,
    demo: bool,
    announce: Any = print,
    auth: AuthSettings | None = None,
    grpc_host: str = "127.0.0.1",
) -> None:
    """Run everything until SIGTERM/SIGINT. gRPC listens on grpc_host, not the gateway's
    host: beyond loopback only as the caller allowed (boot.guard_grpc_bind)."""
    data_dir = data_dir.resolve()  # noqa: ASYNC240 - once, before serving
    configured = service_settings(data_dir)
    components: list[Component] = []
    for definition in SERVICES:
        components.append(await definition.build(configured[definition.name], common))
    host = gateway.host
    running = await create_server(
        [c.spec for c in components], grpc_host, grpc_port, credentials=server_credentials(common)
    )
    target = f"{dial_host(grpc_host)}:{running.port}"
    stack = contextlib.ExitStack()
    try:
        if demo:
            await load_demo(target, gateway, channel_credentials(common))
        wired = gateway.model_copy(
            update={"orders_target": target, "inventory_target": target, "loyalty_target": target}
        )
        # The gateway's /metrics shows the services' metrics too (RPCs, stock levels).
        metrics = GatewayMetrics()
        metrics.registry.register(RegistryCollector(running.metrics.registry))
        endpoint = metrics_endpoint(gateway, metrics.registry)
        if endpoint is not None:
            stack.callback(endpoint.close)
        server = uvicorn_server(create_app(wired, common, auth=auth, metrics=metrics), gateway)
        serving = asyncio.create_task(server.serve())
        # uvicorn has no start event to await; poll its flag until it listens or fails.
        while not server.started and not serving.done():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        if server.started:
            grpc_at = f"{grpc_host}:{running.port}"
            announce(f"orderflow is running: http://{host}:{gateway.port} (gRPC on {grpc_at})")
            announce(f"  API docs:  http://{host}:{gateway.port}/docs")
            announce(f"  data:      {data_dir}")
            if demo:
                announce("  place an order:")
                announce(f"    {demo_curl(gateway.port)}")
        await serving
    finally:
        stack.close()
        await running.stop(1.0)
        for component in components:
            await component.close()
