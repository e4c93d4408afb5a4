"""Catalog items: list, read, create, update (rename, reprice, restock); REST over operations."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from orderflow.gateway import operations as ops
from orderflow.gateway.deps import GatewayDep, IdempotencyKeyDep, PrincipalDep
from orderflow.gateway.errors import error_responses
from orderflow.gateway.schemas import ItemIn, ItemListOut, ItemOut, ItemPatchIn

router = APIRouter(prefix="/api/v1/items", tags=["items"])

SkuPath = Annotated[str, Path(min_length=1, max_length=ops.ID_MAX)]
low, high, default = ops.ITEMS_PAGE


@router.get("", response_model=ItemListOut, responses=error_responses((401, 422)))
async def list_items(
    gateway: GatewayDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=low, le=high)] = default,
    cursor: Annotated[str | None, Query(min_length=1, max_length=ops.CURSOR_MAX)] = None,
) -> dict[str, Any]:
    page = await ops.list_items(gateway, principal, limit, cursor)
    return {
        "items": [ItemOut.of(i).model_dump() for i in page.entries],
        "next_cursor": page.next_cursor,
    }


@router.get("/{sku}", response_model=ItemOut, responses=error_responses((401, 404)))
async def get_item(sku: SkuPath, gateway: GatewayDep, principal: PrincipalDep) -> ItemOut:
    return ItemOut.of(await ops.get_item(gateway, principal, sku))


@router.post(
    "", status_code=201, response_model=ItemOut, responses=error_responses((401, 403, 409, 422))
)
async def create_item(
    body: ItemIn,
    gateway: GatewayDep,
    principal: PrincipalDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> ItemOut:
    return ItemOut.of(await ops.create_item(gateway, principal, body, idempotency_key))


@router.patch(
    "/{sku}", response_model=ItemOut, responses=error_responses((401, 403, 404, 409, 422))
)
async def update_item(
    sku: SkuPath,
    body: ItemPatchIn,
    gateway: GatewayDep,
    principal: PrincipalDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> ItemOut:
    return ItemOut.of(await ops.update_item(gateway, principal, sku, body, idempotency_key))
