"""What routes need, built once at start-up and reached through short Annotated aliases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from orderflow.gateway.auth import Authenticator, Principal
from orderflow.gateway.metrics import GatewayMetrics
from orderflow.gateway.ports import InventoryPort, LoyaltyPort, OrdersPort
from orderflow.gateway.ratelimit import RateLimiter
from orderflow.gateway.readiness import Readiness
from orderflow.gateway.saga import OrderSaga
from orderflow.gateway.watch import OrderWatch
from orderflow.settings import CommonSettings, GatewaySettings


@dataclass
class Services:
    """The three services as the gateway sees them (gRPC clients, or fakes in tests)."""

    orders: OrdersPort
    inventory: InventoryPort
    loyalty: LoyaltyPort


@dataclass
class Gateway:
    settings: GatewaySettings
    common: CommonSettings
    services: Services
    saga: OrderSaga
    metrics: GatewayMetrics
    readiness: Readiness
    auth: Authenticator
    limiter: RateLimiter
    watch: OrderWatch


async def get_gateway(request: Request) -> Gateway:
    # async: a plain def would run in a thread pool, a thread hop on every request
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def client_address(request: Request) -> str:
    """The client's address: the connection's peer, or what a trusted proxy said it is
    (uvicorn rewrites it only for ORDERFLOW_GATEWAY_TRUSTED_PROXIES)."""
    return request.client.host if request.client else "unknown"


async def get_principal(
    gateway: GatewayDep,
    request: Request,
    authorization: Annotated[
        str | None,
        Header(description="Bearer token (required unless the gateway runs without auth)"),
    ] = None,
) -> Principal:
    return gateway.auth.authenticate(authorization, client_address(request))


PrincipalDep = Annotated[Principal, Depends(get_principal)]


IDEMPOTENCY_KEY_DESCRIPTION = (
    "Makes retries safe: the same key and body give the same reply, with one effect; "
    "another body with the key is refused (422 IDEMPOTENCY_KEY_REUSED), and a repeat "
    "while the first request still runs gets 409 REQUEST_IN_PROGRESS. At most 255 "
    "characters, kept at least 24 hours, scoped to the caller and the route's target."
)


# The admin Idempotency-Key header (ADR 0023); operations.admin_idempotency makes the key.
IdempotencyKeyDep = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=255,
        description=IDEMPOTENCY_KEY_DESCRIPTION,
    ),
]
