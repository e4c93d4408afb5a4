"""Orders: place (the saga), read, list, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import JSONResponse

from orderflow.gateway.auth import as_if_missing
from orderflow.gateway.deps import Gateway, GatewayDep, PrincipalDep, rate_key
from orderflow.gateway.errors import error_responses, http_status
from orderflow.gateway.ports import CANCELLED, CONFIRMED, PENDING, Line, Order
from orderflow.gateway.schemas import (
    OrderHistoryOut,
    OrderListOut,
    OrderOut,
    PlaceOrderIn,
    Status,
)

router = APIRouter(prefix="/api/v1/orders", tags=["orders"])

OrderId = Annotated[str, Path(min_length=1, max_length=64)]


def _order_json(gateway: Gateway, order: Order) -> dict[str, Any]:
    return OrderOut.of(order, gateway.common.currency).model_dump(mode="json")


def placed_response(gateway: Gateway, order: Order, created: bool) -> JSONResponse:
    """The reply for an order as it stands: the same order always gives the same reply."""
    body = _order_json(gateway, order)
    if order.status in (CONFIRMED, CANCELLED):
        return JSONResponse(body, status_code=201)
    if order.status == PENDING:
        code, message = (
            ("SERVICE_UNAVAILABLE", "the order could not be completed now; it will be finished")
            if created
            else ("REQUEST_IN_PROGRESS", "a request with this Idempotency-Key is still running")
        )
    else:
        failure = order.failure
        code = failure.code if failure else "REJECTED"
        message = failure.message if failure else "the order was rejected"
    error = {
        "code": code,
        "message": message,
        "details": {"order_id": order.id, "status": order.status},
    }
    status = http_status(code)
    if status < 400:  # a failure code with no HTTP meaning of its own
        status = 409
    return JSONResponse({"error": error, "order": body}, status_code=status)


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
    principal.require_customer(body.customer_id)
    gateway.limiter.take(rate_key(gateway, principal, request))
    new = gateway.saga.new_order(
        body.customer_id,
        [Line(x.sku, x.quantity) for x in body.items],
        body.redeem_points,
        idempotency_key=idempotency_key,
        request=body.model_dump_json(),
    )
    placed = await gateway.saga.place(new)
    return placed_response(gateway, placed.order, placed.created)


@router.get("/{order_id}", response_model=OrderOut, responses=error_responses((401, 404)))
async def get_order(
    order_id: OrderId, gateway: GatewayDep, principal: PrincipalDep
) -> dict[str, Any]:
    with as_if_missing("order"):
        order = await gateway.services.orders.get_order(order_id)
    principal.check_owner(order.customer_id, "order")
    return _order_json(gateway, order)


@router.get(
    "/{order_id}/history",
    response_model=OrderHistoryOut,
    responses=error_responses((401, 404)),
    summary="The order's saga step by step: what ran, when, how long, by whom, how it went",
)
async def get_order_history(
    order_id: OrderId, gateway: GatewayDep, principal: PrincipalDep
) -> dict[str, Any]:
    with as_if_missing("order"):
        history = await gateway.services.orders.order_history(order_id)
    principal.check_owner(history.order.customer_id, "order")
    return OrderHistoryOut.of(history).model_dump(mode="json")


@router.get("", response_model=OrderListOut, responses=error_responses((401, 403, 422)))
async def list_orders(
    gateway: GatewayDep,
    principal: PrincipalDep,
    customer_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(min_length=1, max_length=512)] = None,
) -> dict[str, Any]:
    if not principal.is_admin:
        # A customer lists its own orders: the filter defaults to, and must be, itself.
        principal.require_customer(customer_id or principal.subject)
        customer_id = principal.subject
    page = await gateway.services.orders.list_orders(
        customer_id or "", status or "", limit, cursor or ""
    )
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
    with as_if_missing("order"):
        if not principal.is_admin:
            mine = await gateway.services.orders.get_order(order_id)
            principal.check_owner(mine.customer_id, "order")
        order = await gateway.saga.cancel_order(order_id)
    return _order_json(gateway, order)
