"""Loyalty accounts: read, set the tier, adjust points."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from orderflow.gateway.deps import GatewayDep, IdempotencyDep, PrincipalDep
from orderflow.gateway.errors import error_responses
from orderflow.gateway.schemas import AccountOut, PointsIn, TierIn

router = APIRouter(prefix="/api/v1/customers", tags=["loyalty"])

CustomerPath = Annotated[str, Path(min_length=1, max_length=64)]


@router.get(
    "/{customer_id}/loyalty", response_model=AccountOut, responses=error_responses((401, 404))
)
async def get_account(
    customer_id: CustomerPath, gateway: GatewayDep, principal: PrincipalDep
) -> AccountOut:
    principal.check_owner(customer_id, "loyalty account")
    return AccountOut.of(await gateway.services.loyalty.get_account(customer_id))


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
    idem: IdempotencyDep,
) -> AccountOut:
    principal.require_admin()
    return AccountOut.of(await gateway.services.loyalty.set_tier(customer_id, body.tier, idem))


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
    idem: IdempotencyDep,
) -> AccountOut:
    principal.require_admin()
    account = await gateway.services.loyalty.adjust_points(
        customer_id, body.delta, body.reason, idem
    )
    return AccountOut.of(account)
