"""Loyalty accounts: read, set the tier, adjust points; REST over operations."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from orderflow.gateway import operations as ops
from orderflow.gateway.deps import GatewayDep, IdempotencyKeyDep, PrincipalDep
from orderflow.gateway.errors import error_responses
from orderflow.gateway.schemas import AccountOut, PointsIn, TierIn

router = APIRouter(prefix="/api/v1/customers", tags=["loyalty"])

CustomerPath = Annotated[str, Path(min_length=1, max_length=ops.ID_MAX)]


@router.get(
    "/{customer_id}/loyalty", response_model=AccountOut, responses=error_responses((401, 404))
)
async def get_account(
    customer_id: CustomerPath, gateway: GatewayDep, principal: PrincipalDep
) -> AccountOut:
    return AccountOut.of(await ops.get_account(gateway, principal, customer_id))


@router.put(
    "/{customer_id}/loyalty",
    response_model=AccountOut,
    responses=error_responses((401, 403, 409, 422)),
)
async def set_tier(
    customer_id: CustomerPath,
    body: TierIn,
    gateway: GatewayDep,
    principal: PrincipalDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> AccountOut:
    account = await ops.set_tier(gateway, principal, customer_id, body, idempotency_key)
    return AccountOut.of(account)


@router.post(
    "/{customer_id}/loyalty/points",
    response_model=AccountOut,
    responses=error_responses((401, 403, 409, 422)),
)
async def adjust_points(
    customer_id: CustomerPath,
    body: PointsIn,
    gateway: GatewayDep,
    principal: PrincipalDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> AccountOut:
    account = await ops.adjust_points(gateway, principal, customer_id, body, idempotency_key)
    return AccountOut.of(account)
