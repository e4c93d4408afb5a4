"""Liveness, readiness and metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from orderflow.gateway.deps import GatewayDep
from orderflow.gateway.errors import error_response, error_responses

router = APIRouter(tags=["operations"])
# Apart, so that the app can leave /metrics off the API port (ORDERFLOW_GATEWAY_METRICS_PORT).
metrics_router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, Any]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses=error_responses((503,)))
async def readyz(gateway: GatewayDep) -> JSONResponse:
    """Ready when all three services report SERVING; 503 with each service's status otherwise."""
    statuses = await gateway.readiness.check()
    gateway.metrics.serving(statuses)
    if all(s == "SERVING" for s in statuses.values()):
        return JSONResponse({"status": "ready", "services": statuses})
    return error_response(
        "SERVICE_UNAVAILABLE", "not every service is serving", {"services": statuses}
    )


@metrics_router.get("/metrics", response_class=PlainTextResponse)
async def metrics(gateway: GatewayDep) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)
