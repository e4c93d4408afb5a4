"""Orders: place (the saga), read, list, cancel; REST over gateway.operations."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import JSONResponse

from orderflow.gateway import operations as ops
from orderflow.gateway.deps import Gateway, GatewayDep, PrincipalDep, client_address
from orderflow.gateway.errors import error_responses, http_status
from orderflow.gateway.ports import Order
from orderflow.gateway.schemas import (
    OrderHistoryOut,
    OrderListOut,
    OrderOut,
    PlaceOrderIn,
    Status,
)

router = APIRouter(prefix="/api/v1/orders", tags=["orders"])

OrderId = Annotated[str, Path(min_length=1, max_length=ops.ID_MAX)]


def _order_json(gateway: Gateway, order: Order) -> dict[str, Any]:
    return OrderOut.of(order, gateway.common.currency).model_dump(mode="json")


def placed_response(gateway: Gateway, placement: ops.Placement) -> JSONResponse:
    """The reply for an order as it stands: the same order always gives the same reply."""
    body = _order_json(gateway, placement.order)
    error = placement.error
    if error is None:
        return JSONResponse(body, status_code=201)
    status = http_status(error.code)
    if status < 400:  # a failure code with no HTTP meaning of its own
        status = 409
    shape = {"code": error.code, "message": error.message, "details": error.details}
    return JSONResponse({"error": shape, "order": body}, status_code=status)


@router.post(
    "",
    status_code=201,
    response_model=OrderOut,
    responses=error_responses((401, 403, 409, 422, 429, 503)),
    summary="Place an order (reserve stock, apply loyalty, confirm)",
)
async def place_order(
    body: PlaceOrderIn,
    gateway: GatewayDep,
    principal: PrincipalDep,
    request: Request,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=255,
            description="Makes retries safe: the same key and body give the same order.",
        ),
    ] = None,
) -> JSONResponse:
    placement = await ops.place_order(
        gateway, principal, body, idempotency_key, client_address(request)
    )
    return placed_response(gateway, placement)


@router.get("/{order_id}", response_model=OrderOut, responses=error_responses((401, 404)))
async def get_order(
    order_id: OrderId, gateway: GatewayDep, principal: PrincipalDep
) -> dict[str, Any]:
    return _order_json(gateway, await ops.get_order(gateway, principal, order_id))


@router.get(
    "/{order_id}/history",
    response_model=OrderHistoryOut,
    responses=error_responses((401, 404)),
    summary="The order's saga step by step: what ran, when, how long, by whom, how it went",
)
async def get_order_history(
    order_id: OrderId, gateway: GatewayDep, principal: PrincipalDep
) -> dict[str, Any]:
    history = await ops.order_history(gateway, principal, order_id)
    return OrderHistoryOut.of(history).model_dump(mode="json")


@router.get("", response_model=OrderListOut, responses=error_responses((401, 403, 422)))
async def list_orders(
    gateway: GatewayDep,
    principal: PrincipalDep,
    customer_id: Annotated[str | None, Query(min_length=1, max_length=ops.ID_MAX)] = None,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=ops.ORDERS_PAGE[0], le=ops.ORDERS_PAGE[1])] = 20,
    cursor: Annotated[str | None, Query(min_length=1, max_length=ops.CURSOR_MAX)] = None,
) -> dict[str, Any]:
    page = await ops.list_orders(gateway, principal, customer_id, status, limit, cursor)
    return {
        "orders": [_order_json(gateway, o) for o in page.entries],
        "next_cursor": page.next_cursor,
    }


@router.post(
    "/{order_id}/cancel",
    response_model=OrderOut,
    responses=error_responses((401, 404, 409, 503)),
    summary="Cancel a confirmed order: stock back, points refunded and taken back",
)
async def cancel_order(
    order_id: OrderId, gateway: GatewayDep, principal: PrincipalDep
) -> dict[str, Any]:
    return _order_json(gateway, await ops.cancel_order(gateway, principal, order_id))
