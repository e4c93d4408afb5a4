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


async def get_gateway(request: Request) -> Gateway:
    # async: a plain def would run in a thread pool, a thread hop on every request
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


async def get_principal(
    gateway: GatewayDep,
    authorization: Annotated[
        str | None,
        Header(description="Bearer token (required unless the gateway runs without auth)"),
    ] = None,
) -> Principal:
    return gateway.auth.authenticate(authorization)


PrincipalDep = Annotated[Principal, Depends(get_principal)]
