"""Serve the gateway app with uvicorn inside the running event loop.

uvicorn is told whom to believe about the client's address: X-Forwarded-For and
X-Forwarded-Proto count only from ORDERFLOW_GATEWAY_TRUSTED_PROXIES (by default nobody;
uvicorn on its own trusts 127.0.0.1, so anyone on the machine, or a local proxy passing
them through, could pick a fresh address per request and a fresh rate-limit bucket with
it). Replies carry no `server` header. Request heads, their time to arrive, bodies' time
to arrive and open connections are bounded by the protocol (gateway.http_limits), the
same in both modes: serve_gateway and `orderflow run` (onebox) both call uvicorn_server.
With ORDERFLOW_GATEWAY_METRICS_PORT, /metrics is served on that port instead of the API's.
"""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from orderflow.gateway.app import create_app
from orderflow.gateway.http_limits import limited_protocol
from orderflow.gateway.metrics import GatewayMetrics
from orderflow.platform.metrics import MetricsEndpoint, serve_metrics
from orderflow.settings import AuthSettings, CommonSettings, GatewaySettings


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


async def serve_gateway(
    settings: GatewaySettings, common: CommonSettings, auth: AuthSettings | None = None
) -> None:
    """Run the gateway until SIGTERM/SIGINT (per-service mode)."""
    metrics = GatewayMetrics()
    app = create_app(settings, common, auth=auth, metrics=metrics)
    endpoint = metrics_endpoint(settings, metrics.registry)
    try:
        await uvicorn_server(app, settings, metrics).serve()
    finally:
        if endpoint is not None:
            endpoint.close()
