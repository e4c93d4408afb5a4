"""The gateway's application layer: every operation of its public APIs, once.

The REST routes (gateway/routes/) and the gRPC servicer (gateway/grpc_api.py) are thin
adapters over these functions: they turn their request into the arguments here and the
result (or the OrderflowError raised) into their reply. Validation of bodies (the
pydantic models of gateway/schemas.py), authorization (scopes and object rules),
idempotency keys, rate limits and the error code of a refused order live here and
nowhere else (ADR 27).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from orderflow.errors import ERRORS_BY_CODE, OrderflowError, RequestInvalidError
from orderflow.gateway.auth import Principal, as_if_missing
from orderflow.gateway.deps import Gateway
from orderflow.gateway.ports import (
    CANCELLED,
    CONFIRMED,
    PENDING,
    STATUSES,
    Account,
    EventsBacklog,
    History,
    Idempotency,
    InventoryPort,
    Item,
    Line,
    LowStock,
    LoyaltyPort,
    Order,
    OrdersPort,
    Page,
    PointsEntry,
    Unsettled,
)
from orderflow.gateway.schemas import ItemIn, ItemPatchIn, PlaceOrderIn, PointsIn, TierIn

# Limits of path and query values (REST declares them on its parameters from these).
ID_MAX = 64
CURSOR_MAX = 512
KEY_MAX = 255
ORDERS_PAGE = (1, 100, 20)  # min, max, default
ITEMS_PAGE = (1, 100, 50)

M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], data: dict[str, Any]) -> M:
    """data as model, or VALIDATION_ERROR with the first problem, worded as REST words it."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in exc.errors()
        ]
        raise validation_error(problems) from None


def validation_error(problems: list[dict[str, Any]]) -> RequestInvalidError:
    first = problems[0] if problems else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"] if p != "body") or "request"
    return RequestInvalidError(f"{where}: {first['msg']}", errors=problems)


def _check_text(name: str, value: str, maximum: int) -> None:
    if not 1 <= len(value) <= maximum:
        raise validation_error(
            [
                {
                    "loc": [name],
                    "msg": f"must have 1 to {maximum} characters",
                    "type": "string_length",
                }
            ]
        )


def _check_limit(value: int, bounds: tuple[int, int, int]) -> int:
    low, high, default = bounds
    if value == 0:
        return default
    if not low <= value <= high:
        raise validation_error(
            [{"loc": ["limit"], "msg": f"must be {low} to {high}", "type": "range"}]
        )
    return value


# -- who may do what --------------------------------------------------------------------


def rate_key(gateway: Gateway, principal: Principal, address: str) -> str:
    """Whose bucket a request spends: the caller's kind and subject with auth, else the
    client's address (every caller is the same local admin then)."""
    if gateway.auth.enabled:
        return principal.key
    return f"address:{address}"


def admin_idempotency(principal: Principal, key: str | None) -> Idempotency:
    """The key of an admin change (ADR 0023): the client's, or one of the gateway's own for
    this request alone, so that the gateway's own retries never double the effect."""
    if key is not None:
        _check_text("request_id", key, KEY_MAX)
    scope = principal.key
    if len(scope) > 128:  # a subject can be long; the service keeps 128 characters
        scope = "sha256:" + hashlib.sha256(scope.encode()).hexdigest()
    return Idempotency.generated(scope, key)


# -- orders -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """A placing request's outcome: the order, whether this call created it, and the error
    the caller gets instead of success (None when the order is CONFIRMED or CANCELLED)."""

    order: Order
    created: bool
    error: OrderflowError | None


def placement_error(order: Order, created: bool) -> OrderflowError | None:
    """The same order always gives the same answer: none for a finished order, else why."""
    if order.status in (CONFIRMED, CANCELLED):
        return None
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
    error = ERRORS_BY_CODE.get(code, OrderflowError)(
        message, order_id=order.id, status=order.status
    )
    error.code = code  # the order's own code (e.g. OUT_OF_STOCK), even one unknown here
    return error


async def place_order(
    gateway: Gateway,
    principal: Principal,
    body: PlaceOrderIn,
    idempotency_key: str | None,
    address: str,
) -> Placement:
    if idempotency_key is not None:
        _check_text("request_id", idempotency_key, KEY_MAX)
    principal.require_customer(body.customer_id)
    gateway.limiter.take(rate_key(gateway, principal, address))
    new = gateway.saga.new_order(
        body.customer_id,
        [Line(x.sku, x.quantity) for x in body.items],
        body.redeem_points,
        idempotency_key=idempotency_key,
        # The canonical request: the same over REST and gRPC, so one key is one order.
        request=body.model_dump_json(),
    )
    placed = await gateway.saga.place(new)
    gateway.watch.notify(placed.order.id)
    return Placement(placed.order, placed.created, placement_error(placed.order, placed.created))


async def get_order(gateway: Gateway, principal: Principal, order_id: str) -> Order:
    _check_text("order_id", order_id, ID_MAX)
    with as_if_missing("order"):
        order = await gateway.services.orders.get_order(order_id)
    principal.check_owner(order.customer_id, "order")
    return order


async def order_history(gateway: Gateway, principal: Principal, order_id: str) -> History:
    _check_text("order_id", order_id, ID_MAX)
    with as_if_missing("order"):
        history = await gateway.services.orders.order_history(order_id)
    principal.check_owner(history.order.customer_id, "order")
    return history


async def list_orders(
    gateway: Gateway,
    principal: Principal,
    customer_id: str | None,
    status: str | None,
    limit: int,
    cursor: str | None,
) -> Page[Order]:
    if customer_id is not None:
        _check_text("customer_id", customer_id, ID_MAX)
    if cursor is not None:
        _check_text("cursor", cursor, CURSOR_MAX)
    if status is not None and status not in STATUSES:
        raise validation_error(
            [{"loc": ["status"], "msg": f"must be one of {list(STATUSES)}", "type": "enum"}]
        )
    limit = _check_limit(limit, ORDERS_PAGE)
    if not principal.is_admin:
        # A customer lists its own orders: the filter defaults to, and must be, itself.
        principal.require_customer(customer_id or principal.subject)
        customer_id = principal.subject
    return await gateway.services.orders.list_orders(
        customer_id or "", status or "", limit, cursor or ""
    )


async def cancel_order(gateway: Gateway, principal: Principal, order_id: str) -> Order:
    _check_text("order_id", order_id, ID_MAX)
    with as_if_missing("order"):
        if not principal.is_admin:
            mine = await gateway.services.orders.get_order(order_id)
            principal.check_owner(mine.customer_id, "order")
        try:
            return await gateway.saga.cancel_order(order_id)
        finally:
            gateway.watch.notify(order_id)  # its streams see the change, or the attempt


# -- items ------------------------------------------------------------------------------


async def list_items(
    gateway: Gateway, _principal: Principal, limit: int, cursor: str | None
) -> Page[Item]:
    if cursor is not None:
        _check_text("cursor", cursor, CURSOR_MAX)
    limit = _check_limit(limit, ITEMS_PAGE)
    return await gateway.services.inventory.list_items(limit, cursor or "")


async def get_item(gateway: Gateway, _principal: Principal, sku: str) -> Item:
    _check_text("sku", sku, ID_MAX)
    return await gateway.services.inventory.get_item(sku)


async def create_item(
    gateway: Gateway, principal: Principal, body: ItemIn, key: str | None
) -> Item:
    principal.require_admin()
    idem = admin_idempotency(principal, key)
    return await gateway.services.inventory.create_item(
        body.sku, body.name, body.price, body.stock, idem
    )


async def update_item(
    gateway: Gateway, principal: Principal, sku: str, body: ItemPatchIn, key: str | None
) -> Item:
    _check_text("sku", sku, ID_MAX)
    principal.require_admin()
    idem = admin_idempotency(principal, key)
    return await gateway.services.inventory.update_item(
        sku, body.name, body.price, body.restock, idem
    )


# -- loyalty ----------------------------------------------------------------------------


async def get_account(gateway: Gateway, principal: Principal, customer_id: str) -> Account:
    _check_text("customer_id", customer_id, ID_MAX)
    principal.check_owner(customer_id, "loyalty account")
    return await gateway.services.loyalty.get_account(customer_id)


async def set_tier(
    gateway: Gateway, principal: Principal, customer_id: str, body: TierIn, key: str | None
) -> Account:
    _check_text("customer_id", customer_id, ID_MAX)
    principal.require_admin()
    idem = admin_idempotency(principal, key)
    return await gateway.services.loyalty.set_tier(customer_id, body.tier, idem)


async def adjust_points(
    gateway: Gateway, principal: Principal, customer_id: str, body: PointsIn, key: str | None
) -> Account:
    _check_text("customer_id", customer_id, ID_MAX)
    principal.require_admin()
    idem = admin_idempotency(principal, key)
    return await gateway.services.loyalty.adjust_points(customer_id, body.delta, body.reason, idem)


async def points_entries(
    gateway: Gateway, principal: Principal, customer_id: str, limit: int, cursor: str | None
) -> Page[PointsEntry]:
    _check_text("customer_id", customer_id, ID_MAX)
    if cursor is not None:
        _check_text("cursor", cursor, CURSOR_MAX)
    principal.check_owner(customer_id, "loyalty account")
    limit = _check_limit(limit, ORDERS_PAGE)
    return await gateway.services.loyalty.list_entries(customer_id, limit, cursor or "")


# -- what an operator watches (the console) ------------------------------------------------


async def unsettled_orders(gateway: Gateway, principal: Principal, limit: int) -> Unsettled:
    """Orders whose saga still has work to do, oldest first (admin only)."""
    principal.require_admin()
    return await gateway.services.orders.list_unsettled(_check_limit(limit, ORDERS_PAGE))


async def low_stock_items(gateway: Gateway, principal: Principal, limit: int) -> LowStock:
    """Items at or below inventory's low-stock threshold (admin only)."""
    principal.require_admin()
    return await gateway.services.inventory.list_low_stock(_check_limit(limit, ITEMS_PAGE))


async def events_backlog(
    gateway: Gateway, principal: Principal, service: str, limit: int
) -> EventsBacklog:
    """One service's outbox backlog and parked events (admin only)."""
    principal.require_admin()
    ports: dict[str, OrdersPort | InventoryPort | LoyaltyPort] = {
        "orders": gateway.services.orders,
        "inventory": gateway.services.inventory,
        "loyalty": gateway.services.loyalty,
    }
    return await ports[service].events_backlog(_check_limit(limit, ORDERS_PAGE))
