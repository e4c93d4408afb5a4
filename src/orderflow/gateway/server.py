"""Serve the gateway app with uvicorn inside the running event loop.

uvicorn is told whom to believe about the client's address: X-Forwarded-For and
X-Forwarded-Proto count only from ORDERFLOW_GATEWAY_TRUSTED_PROXIES (by default nobody;
uvicorn on its own trusts 127.0.0.1, so anyone on the machine, or a local proxy passing
them through, could pick a fresh address per request and a fresh rate-limit bucket with
it). Replies carry no `server` header. Request heads, their time to arrive, bodies' time
to arrive and open connections are bounded by the protocol (gateway.http_limits), the
same in both modes: serve_gateway and `orderflow run` (onebox) both call uvicorn_server.
With ORDERFLOW_GATEWAY_METRICS_PORT, /metrics is served on that port instead of the API's.

The public gRPC API (gateway.grpc_api) is served beside it on ORDERFLOW_GATEWAY_GRPC_PORT,
once the app's lifespan has built the gateway both share: health, reflection, per-RPC
metrics and request ids come from the platform's gRPC server (platform.grpc_server).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from orderflow.gateway.app import create_app
from orderflow.gateway.deps import Gateway
from orderflow.gateway.http_limits import limited_protocol
from orderflow.gateway.metrics import GatewayMetrics
from orderflow.gateway.readiness import Readiness
from orderflow.platform.grpc_server import RunningServer, ServiceSpec, create_server
from orderflow.platform.metrics import (
    MetricsEndpoint,
    RegistryCollector,
    ServiceMetrics,
    serve_metrics,
)
from orderflow.settings import AuthSettings, CommonSettings, GatewaySettings, StartupError

# Streams (WatchOrder) and calls still running get this long once shutdown begins.
GRPC_GRACE_SECONDS = 2.0


def uvicorn_server(
    app: FastAPI, settings: GatewaySettings, metrics: GatewayMetrics | None = None
) -> uvicorn.Server:
    """metrics: where requests refused before the app saw them are counted."""

    def refused(status: int) -> None:
        if metrics is not None:
            metrics.http_requests.labels("-", "unparsed", str(status)).inc()

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=limited_protocol(settings, refused),
        ws="none",  # no WebSocket routes; an Upgrade is served as plain HTTP, JSON errors
        log_config=None,
        access_log=False,  # the request middleware logs each request with its ids
        lifespan="on",
        timeout_graceful_shutdown=5,
        timeout_keep_alive=settings.keep_alive_seconds,
        server_header=False,
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=list(settings.trusted_proxies) or None,
    )
    return uvicorn.Server(config)


def metrics_endpoint(
    settings: GatewaySettings, registry: CollectorRegistry
) -> MetricsEndpoint | None:
    """/metrics on ORDERFLOW_GATEWAY_METRICS_PORT (same host as the API), if configured."""
    if not settings.metrics_port:
        return None
    return serve_metrics(registry, settings.host, settings.metrics_port)


async def start_grpc_api(
    app: FastAPI, settings: GatewaySettings, metrics: ServiceMetrics | None = None
) -> RunningServer:
    """Serve orderflow.api.v1.OrderingService on settings.host:grpc_port over the gateway
    that app's lifespan built (call once the app has started); metrics: where its calls
    are counted."""
    from orderflow.api.v1 import ordering_pb2_grpc
    from orderflow.gateway.grpc_api import SERVICE_NAME, OrderingServicer

    def gateway() -> Gateway:
        built: Gateway = app.state.gateway
        return built

    async def probe() -> None:
        readiness: Readiness = gateway().readiness
        states = await readiness.check()
        down = {name: state for name, state in states.items() if state != "SERVING"}
        if down:
            raise RuntimeError(f"services not serving: {down}")

    spec = ServiceSpec(
        name=SERVICE_NAME,
        servicer=OrderingServicer(gateway),
        add_to_server=ordering_pb2_grpc.add_OrderingServiceServicer_to_server,
        probe=probe,
    )
    try:
        return await create_server([spec], settings.host, settings.grpc_port, metrics=metrics)
    except OSError:
        raise StartupError(
            f"cannot listen on {settings.host}:{settings.grpc_port} "
            "(ORDERFLOW_GATEWAY_GRPC_PORT, --grpc-api-port)"
        ) from None


async def serve_both(
    app: FastAPI,
    settings: GatewaySettings,
    metrics: GatewayMetrics,
    started: Callable[[RunningServer], None] | None = None,
    rpc_metrics: ServiceMetrics | None = None,
) -> None:
    """Run the REST API and, once its lifespan has run, the gRPC API, until uvicorn stops
    (SIGTERM/SIGINT); then the gRPC API stops too, its streams ended within the grace.

    rpc_metrics: where the gRPC API's calls are counted, when metrics has them already
    (one-process mode: the services' RPC metrics); else on metrics, beside HTTP's."""
    server = uvicorn_server(app, settings, metrics)
    serving = asyncio.create_task(server.serve())
    # uvicorn has no start event to await; poll its flag until it listens or fails.
    while not server.started and not serving.done():  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    if not server.started:
        await serving
        return
    try:
        grpc_api = await start_grpc_api(app, settings, rpc_metrics)
    except BaseException:
        server.should_exit = True
        await serving
        raise
    if rpc_metrics is None:  # the API's RPC counts on the gateway's /metrics, beside HTTP's
        metrics.registry.register(RegistryCollector(grpc_api.metrics.registry))
    stopped = False

    async def stop_grpc_api() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            await grpc_api.stop(GRPC_GRACE_SECONDS)

    # On SIGTERM the app's shutdown stops the gRPC API before it closes its clients.
    app.state.before_shutdown.append(stop_grpc_api)
    try:
        if started is not None:
            started(grpc_api)
        await serving
    finally:
        await stop_grpc_api()


async def serve_gateway(
    settings: GatewaySettings, common: CommonSettings, auth: AuthSettings | None = None
) -> None:
    """Run the gateway (REST and gRPC APIs) until SIGTERM/SIGINT (per-service mode)."""
    from orderflow.events.settings import EventsSettings

    metrics = GatewayMetrics()
    # Order events wake WatchOrder streams: an ephemeral consumer of the services' stream.
    events = EventsSettings()
    bus = events.create_bus() if events.nats_url else None
    app = create_app(settings, common, auth=auth, metrics=metrics, events=bus)
    endpoint = metrics_endpoint(settings, metrics.registry)
    try:
        await serve_both(app, settings, metrics)
    finally:
        if endpoint is not None:
            endpoint.close()
        if bus is not None:
            await bus.close()
