"""One-process mode: the three services on one gRPC server, and the gateway calling them over gRPC.

Each service keeps its own SQLite file under the data directory, unless its
ORDERFLOW_<SERVICE>_DATABASE_URL says otherwise (the variable wins; the banner shows what
each service uses). `--demo` loads a small catalog and a few loyalty accounts (only what
is missing, so restarts keep the data as it is).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import structlog
from sqlalchemy.engine import make_url

from orderflow import boot
from orderflow.errors import AlreadyExistsError, NotFoundError
from orderflow.events.settings import EventsSettings
from orderflow.gateway.app import create_app
from orderflow.gateway.clients import GrpcInventory, GrpcLoyalty, GrpcOrders
from orderflow.gateway.deps import Services
from orderflow.gateway.metrics import GatewayMetrics
from orderflow.gateway.readiness import Readiness
from orderflow.gateway.rpc import Channels
from orderflow.gateway.server import metrics_endpoint, serve_both
from orderflow.platform.component import Component, start_events
from orderflow.platform.grpc_bind import dial_host
from orderflow.platform.grpc_server import RunningServer, create_server
from orderflow.platform.inproc import InProcessChannel, InProcessServer
from orderflow.platform.logging import wants_json
from orderflow.platform.metrics import RegistryCollector
from orderflow.platform.migrations import wait_for_database
from orderflow.platform.telemetry import client_interceptors, server_interceptors
from orderflow.platform.tls import channel_credentials, server_credentials
from orderflow.registry import SERVICE_NAMES, SERVICES
from orderflow.seed import DEMO
from orderflow.settings import AuthSettings, CommonSettings, GatewaySettings, StartupError

log = structlog.get_logger("orderflow.run")


def storage(cfg: Any) -> str:
    """Where a service keeps its data, for people: a file path, or the URL without password."""
    url = make_url(cfg.database_url)
    where = url.database or "" if url.get_backend_name() == "sqlite" else ""
    shown = where or url.render_as_string(hide_password=True)
    variable = f"{type(cfg).model_config.get('env_prefix', '')}DATABASE_URL"
    if variable in os.environ:
        return f"{shown}  (from {variable})"
    return shown


async def load_demo(
    target: str | grpc.aio.Channel,
    gateway: GatewaySettings,
    credentials: grpc.ChannelCredentials | None = None,
) -> None:
    """Load the demo data (what is missing of it) through the services at target (an
    address, or a channel to them)."""
    channels = Channels(credentials)
    try:
        channel = channels.get(target) if isinstance(target, str) else target
        inventory = GrpcInventory(channel, gateway)
        loyalty = GrpcLoyalty(channel, gateway)
        for item in DEMO.items:
            with contextlib.suppress(AlreadyExistsError):
                await inventory.create_item(item.sku, item.name, item.price, item.stock)
        for account in DEMO.customers:
            try:
                await loyalty.get_account(account.customer_id)
            except NotFoundError:
                await loyalty.set_tier(account.customer_id, account.tier)
                if account.points:
                    await loyalty.adjust_points(
                        account.customer_id, account.points, "demo welcome points"
                    )
    finally:
        await channels.close()


def demo_curl(port: int) -> str:
    return (
        f"curl -s -X POST http://127.0.0.1:{port}/api/v1/orders "
        "-H 'Content-Type: application/json' -H 'Idempotency-Key: demo-1' "
        '-d \'{"customer_id": "c-1", "items": [{"sku": "MUG-1", "quantity": 2}], '
        '"redeem_points": 100}\''
    )


async def check_databases(services: dict[str, Any]) -> None:
    """Wait for each service's database (60 s); one that does not exist is said at once."""
    for definition in SERVICES:
        cfg = services[definition.name]
        await wait_for_database(
            definition.name, cfg.database_url, boot.env_name(cfg), 60.0, log.warning
        )


async def run_onebox(
    *,
    common: CommonSettings,
    gateway: GatewaySettings,
    grpc_port: int,
    services: dict[str, Any],
    demo: bool,
    auth: AuthSettings | None = None,
    grpc_host: str = "127.0.0.1",
    events: EventsSettings | None = None,
) -> None:
    """Run everything until SIGTERM/SIGINT; services: each service's settings by name;
    events: ORDERFLOW_NATS_URL and ORDERFLOW_EVENTS_* (read from the environment if None).
    gRPC listens on grpc_host, not the gateway's host: beyond loopback only as the caller
    allowed (boot.guard_grpc_bind)."""
    await check_databases(services)
    # One bus for the three services: in-process, or JetStream with ORDERFLOW_NATS_URL.
    bus = (events or EventsSettings()).create_bus()
    components: list[Component] = []
    try:
        for definition in SERVICES:
            components.append(await definition.build(services[definition.name], common, bus=bus))
        try:
            specs = [c.spec for c in components]
            credentials = server_credentials(common)
            running = await create_server(specs, grpc_host, grpc_port, credentials=credentials)
        except OSError:
            raise StartupError(f"cannot listen on {grpc_host}:{grpc_port} (--grpc-port)") from None
    except BaseException:
        for component in components:
            await component.close()
        await bus.close()
        raise
    target = f"{dial_host(grpc_host)}:{running.port}"
    stack = contextlib.ExitStack()
    try:
        await start_events(components, running.metrics.registry)
        wired = gateway.model_copy(
            update={"orders_target": target, "inventory_target": target, "loyalty_target": target}
        )
        # The gateway calls the services in this process through their servicers, without
        # the loopback socket (ADR 34); with tracing on, over the socket, so that each
        # call is a span of the client and one of the server, as in production.
        local = None if tracing_on() else in_process_channel(running)
        one_channel = dict.fromkeys(SERVICE_NAMES, local)
        if demo:
            await load_demo(local or target, gateway, channel_credentials(common))
        # The gateway's /metrics shows the services' metrics too (RPCs, stock levels).
        metrics = GatewayMetrics()
        metrics.registry.register(RegistryCollector(running.metrics.registry))
        endpoint = metrics_endpoint(gateway, metrics.registry)
        if endpoint is not None:
            stack.callback(endpoint.close)
        # The services' bus: its order events wake the gRPC API's WatchOrder streams.
        app = create_app(
            wired,
            common,
            auth=auth,
            metrics=metrics,
            events=bus,
            services=None if local is None else services_by_name(one_channel, wired),
            readiness=None
            if local is None
            else Readiness.over_grpc(dict.fromkeys(SERVICE_NAMES, local), 1.0),
        )
        await serve_both(
            app,
            gateway,
            metrics,
            lambda api: announce(
                common, gateway, f"{grpc_host}:{running.port}", services, demo, api.port
            ),
            rpc_metrics=running.metrics,
        )
    finally:
        stack.close()
        await running.stop(1.0)
        for component in components:  # relays and consumers first, then the databases
            if component.events is not None:
                await component.events.stop()
        await bus.close()
        for component in components:
            await component.close()


def tracing_on() -> bool:
    """Whether gRPC calls are traced (then they go over the socket, ADR 34)."""
    return bool(server_interceptors()) or client_interceptors() is not None


def in_process_channel(running: RunningServer) -> InProcessChannel:
    """A channel to the services running's server hosts, through their servicers in this
    process: the same handlers, health and RPC metrics as the server's."""
    return InProcessServer(running.specs, running.metrics, running.health).channel()


def services_by_name(channels: Mapping[str, Any], settings: GatewaySettings) -> Services:
    """The gateway's clients of the three services, each over its channel (by name)."""
    return Services(
        orders=GrpcOrders(channels["orders"], settings),
        inventory=GrpcInventory(channels["inventory"], settings),
        loyalty=GrpcLoyalty(channels["loyalty"], settings),
    )


def announce(
    common: CommonSettings,
    gateway: GatewaySettings,
    target: str,
    services: dict[str, Any],
    demo: bool,
    api_port: int | None = None,
    workers: Sequence[Any] = (),
) -> None:
    """Say where everything is: a banner on a terminal, one log event when logging JSON.
    workers: the worker processes of the services, if any (supervisor.Worker)."""
    http = f"http://{gateway.host}:{gateway.port}"
    api = f"{gateway.host}:{api_port if api_port is not None else gateway.grpc_port}"
    stores = {name: storage(cfg) for name, cfg in services.items()}
    if wants_json(common.log_format):
        log.info(
            "orderflow_running",
            http=http,
            grpc_api=api,
            grpc=target,
            docs=f"{http}/docs",
            console=f"{http}/console/",
            storage=stores,
            workers={w.name: w.process.pid for w in workers if w.process},
        )
        return
    lines = [
        f"orderflow is running: {http} (gRPC API on {api}; services' gRPC on {target})",
        f"  API docs:  {http}/docs",
        f"  console:   {http}/console/",
    ]
    lines += [f"  {name + ':':<10} {where}" for name, where in stores.items()]
    if workers:
        shown = ", ".join(f"{w.name} (pid {w.process.pid})" for w in workers if w.process)
        lines += [f"  services in {len(workers)} worker processes: {shown}"]
    if demo:
        lines += ["  place an order:", f"    {demo_curl(gateway.port)}"]
    print("\n".join(lines), file=sys.stderr, flush=True)
