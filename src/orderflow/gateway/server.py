"""Serve the gateway app with uvicorn inside the running event loop."""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI

from orderflow.gateway.app import create_app
from orderflow.settings import AuthSettings, CommonSettings, GatewaySettings


def uvicorn_server(app: FastAPI, settings: GatewaySettings) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http="httptools",
        log_config=None,
        access_log=False,  # the request middleware logs each request with its ids
        lifespan="on",
        timeout_graceful_shutdown=5,
        timeout_keep_alive=settings.keep_alive_seconds,
    )
    return uvicorn.Server(config)


async def serve_gateway(
    settings: GatewaySettings, common: CommonSettings, auth: AuthSettings | None = None
) -> None:
    """Run the gateway until SIGTERM/SIGINT (per-service mode)."""
    app = create_app(settings, common, auth=auth)
    await uvicorn_server(app, settings).serve()
