"""Catalog items: list, read, create, update (rename, reprice, restock)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from orderflow.gateway.deps import GatewayDep, IdempotencyDep, PrincipalDep
from orderflow.gateway.errors import error_responses
from orderflow.gateway.schemas import ItemIn, ItemListOut, ItemOut, ItemPatchIn

router = APIRouter(prefix="/api/v1/items", tags=["items"])

SkuPath = Annotated[str, Path(min_length=1, max_length=64)]


@router.get("", response_model=ItemListOut, responses=error_responses((401, 422)))
async def list_items(
    gateway: GatewayDep,
    _principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    cursor: Annotated[str | None, Query(min_length=1, max_length=512)] = None,
) -> dict[str, Any]:
    page = await gateway.services.inventory.list_items(limit, cursor or "")
    return {
        "items": [ItemOut.of(i).model_dump() for i in page.entries],
        "next_cursor": page.next_cursor,
    }


@router.get("/{sku}", response_model=ItemOut, responses=error_responses((401, 404)))
async def get_item(sku: SkuPath, gateway: GatewayDep, _principal: PrincipalDep) -> ItemOut:
    return ItemOut.of(await gateway.services.inventory.get_item(sku))


@router.post(
    "", status_code=201, response_model=ItemOut, responses=error_responses((401, 403, 409, 422))
)
async def create_item(
    body: ItemIn, gateway: GatewayDep, principal: PrincipalDep, idem: IdempotencyDep
) -> ItemOut:
    principal.require_admin()
    item = await gateway.services.inventory.create_item(
        body.sku, body.name, body.price, body.stock, idem
    )
    return ItemOut.of(item)


@router.patch(
    "/{sku}", response_model=ItemOut, responses=error_responses((401, 403, 404, 409, 422))
)
async def update_item(
    sku: SkuPath,
    body: ItemPatchIn,
    gateway: GatewayDep,
    principal: PrincipalDep,
    idem: IdempotencyDep,
) -> ItemOut:
    principal.require_admin()
    item = await gateway.services.inventory.update_item(
        sku, body.name, body.price, body.restock, idem
    )
    return ItemOut.of(item)
