"""The gateway's public gRPC API: a thin adapter of orderflow.api.v1.OrderingService over
gateway.operations, as the REST routes are (ADR 27).

Each RPC authenticates the `authorization` metadata, turns its request into the
operation's arguments (bodies through the same pydantic models as REST), runs the
operation within the gateway's request budget (and the call's own deadline), and turns
the result into its response. A refused call ends with a google.rpc.Status holding one
google.rpc.ErrorInfo (reason: the REST error code; domain: orderflow; metadata: the
error's details), the refused Order where REST's body has one, and a RetryInfo when
rate-limited; its status code comes from the table in gateway.errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import structlog
from google.protobuf import any_pb2, duration_pb2, message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from orderflow.api.v1 import ordering_pb2 as pb
from orderflow.api.v1 import ordering_pb2_grpc as pb_grpc
from orderflow.errors import OrderflowError, RateLimitedError
from orderflow.gateway import operations as ops
from orderflow.gateway.auth import Principal
from orderflow.gateway.budget import budget
from orderflow.gateway.deps import Gateway
from orderflow.gateway.errors import grpc_status
from orderflow.gateway.ports import Account, History, Item, Order
from orderflow.gateway.schemas import ItemIn, ItemPatchIn, PlaceOrderIn, PointsIn, TierIn
from orderflow.platform.logging import REQUEST_ID_KEY

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["OrderingService"].full_name
DOMAIN = "orderflow"
# How often a WatchOrder stream reads its order when no order events arrive (no bus).
RESYNC_SECONDS = 1.0
T = TypeVar("T")

log = structlog.get_logger("orderflow.gateway.grpc")


# -- messages ---------------------------------------------------------------------------


def _timestamp(value: Any) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _status_value(status: str) -> pb.OrderStatus:
    return pb.OrderStatus.Value(f"ORDER_STATUS_{status}")  # type: ignore[return-value]


def order_message(order: Order, currency: str) -> pb.Order:
    return pb.Order(
        id=order.id,
        customer_id=order.customer_id,
        status=_status_value(order.status),
        items=[
            pb.OrderLine(sku=x.sku, quantity=x.quantity, unit_price=x.unit_price)
            for x in order.lines
        ],
        currency=order.currency or currency,
        subtotal=order.subtotal,
        discount=order.discount,
        points_redeemed=order.points_redeemed,
        total=order.total,
        points_earned=order.points_earned,
        failure=pb.Failure(code=order.failure.code, message=order.failure.message)
        if order.failure
        else None,
        created_at=_timestamp(order.created_at),
        updated_at=_timestamp(order.updated_at),
        settled=order.settled,
        cancel_requested=order.cancel_requested,
    )


def item_message(item: Item) -> pb.Item:
    return pb.Item(
        sku=item.sku,
        name=item.name,
        price=item.price,
        currency=item.currency,
        available=item.available,
        reserved=item.reserved,
        sold=item.sold,
    )


def account_message(account: Account) -> pb.LoyaltyAccount:
    return pb.LoyaltyAccount(
        customer_id=account.customer_id,
        tier=account.tier,
        discount_percent=account.discount_percent,
        points=account.points,
    )


def history_message(history: History) -> pb.GetOrderHistoryResponse:
    return pb.GetOrderHistoryResponse(
        order_id=history.order.id,
        status=_status_value(history.order.status),
        settled=history.order.settled,
        steps=[
            pb.SagaStep(
                step=s.name,
                outcome=s.outcome,
                started_at=_timestamp(s.started_at),
                duration_ms=s.duration_us // 1000,
                driver=s.driver,
                error=pb.Failure(code=s.error.code, message=s.error.message) if s.error else None,
            )
            for s in history.steps
        ],
        truncated=history.truncated,
    )


def _status_name(value: int) -> str | None:
    """ListOrders' status filter: UNSPECIFIED is none; an unknown number is a bad value."""
    if value == pb.ORDER_STATUS_UNSPECIFIED:
        return None
    try:
        return pb.OrderStatus.Name(value).removeprefix("ORDER_STATUS_")
    except ValueError:
        return str(value)  # refused by the operation's own check


async def _same(principal: Principal) -> Principal:
    return principal


def _text(value: str) -> str | None:
    """proto3 has no None: an empty string is an absent value."""
    return value or None


# -- errors -----------------------------------------------------------------------------


def rich_status(error: OrderflowError, order: pb.Order | None = None) -> grpc.Status:
    """The google.rpc.Status of a refused call (what REST says in its error body)."""
    code = grpc_status(error.code)
    info = error_details_pb2.ErrorInfo(
        reason=error.code,
        domain=DOMAIN,
        metadata={
            key: value if isinstance(value, str) else json.dumps(value, default=str)
            for key, value in error.details.items()
        },
    )
    details = [_packed(info)]
    if isinstance(error, RateLimitedError):
        delay = duration_pb2.Duration(seconds=error.retry_after_seconds)
        details.append(_packed(error_details_pb2.RetryInfo(retry_delay=delay)))
    if order is not None:
        details.append(_packed(order))
    status = status_pb2.Status(code=code.value[0], message=error.message, details=details)
    converted: grpc.Status = rpc_status.to_status(status)
    return converted


def _packed(value: message.Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(value)
    return packed


async def _abort(context: grpc.aio.ServicerContext[Any, Any], status: grpc.Status) -> None:
    await context.abort(status.code, status.details, status.trailing_metadata)


def peer_address(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The client's address from the peer ("ipv4:1.2.3.4:5678", "ipv6:[::1]:5678")."""
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1 : rest.find("]")]
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return peer or "unknown"


# -- the servicer -----------------------------------------------------------------------


class OrderingServicer(pb_grpc.OrderingServiceServicer):
    """Each RPC: authenticate, run one operation, answer (or abort with its rich status)."""

    def __init__(self, gateway: Callable[[], Gateway]) -> None:
        # The gateway is built by the REST app's lifespan; both APIs share it (its limiter,
        # saga, clients), so it is looked up per call, once the app runs.
        self._gateway = gateway

    async def _run(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        operation: Callable[[Gateway, Principal], Awaitable[T]],
        *,
        first: bool = True,
    ) -> T:
        """Authenticate, then run operation within the budget; first: the call's first run
        (which sends the request id back, as REST's X-Request-ID)."""
        gateway = self._gateway()
        request_id = structlog.contextvars.get_contextvars().get("request_id")
        if first and request_id:
            await context.send_initial_metadata(((REQUEST_ID_KEY, str(request_id)),))
        seconds = gateway.settings.request_timeout_seconds
        left = context.time_remaining()
        if left is not None:
            seconds = min(seconds, max(left, 0.0))
        try:
            metadata = dict(context.invocation_metadata() or ())
            principal = gateway.auth.authenticate(
                metadata.get("authorization"), peer_address(context)
            )
            with budget(seconds):
                return await operation(gateway, principal)
        except OrderflowError as exc:
            await _abort(context, rich_status(exc))
            raise AssertionError("unreachable") from None  # abort always raises

    async def PlaceOrder(
        self, request: pb.PlaceOrderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PlaceOrderResponse:
        body = {
            "customer_id": request.customer_id,
            "items": [{"sku": x.sku, "quantity": x.quantity} for x in request.items],
            "redeem_points": request.redeem_points,
        }
        placement = await self._run(
            context,
            lambda gw, who: ops.place_order(
                gw,
                who,
                ops.validated(PlaceOrderIn, body),
                _text(request.request_id),
                peer_address(context),
            ),
        )
        currency = self._gateway().common.currency
        order = order_message(placement.order, currency)
        if placement.error is not None:
            await _abort(context, rich_status(placement.error, order))
        return pb.PlaceOrderResponse(order=order)

    async def GetOrder(
        self, request: pb.GetOrderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetOrderResponse:
        order = await self._run(context, lambda gw, who: ops.get_order(gw, who, request.order_id))
        return pb.GetOrderResponse(order=order_message(order, self._gateway().common.currency))

    async def GetOrderHistory(
        self, request: pb.GetOrderHistoryRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetOrderHistoryResponse:
        history = await self._run(
            context, lambda gw, who: ops.order_history(gw, who, request.order_id)
        )
        return history_message(history)

    async def ListOrders(
        self, request: pb.ListOrdersRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListOrdersResponse:
        page = await self._run(
            context,
            lambda gw, who: ops.list_orders(
                gw,
                who,
                _text(request.customer_id),
                _status_name(request.status),
                request.limit,
                _text(request.cursor),
            ),
        )
        currency = self._gateway().common.currency
        return pb.ListOrdersResponse(
            orders=[order_message(o, currency) for o in page.entries],
            next_cursor=page.next_cursor or "",
        )

    async def CancelOrder(
        self, request: pb.CancelOrderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CancelOrderResponse:
        order = await self._run(
            context, lambda gw, who: ops.cancel_order(gw, who, request.order_id)
        )
        currency = self._gateway().common.currency
        return pb.CancelOrderResponse(order=order_message(order, currency))

    async def WatchOrder(
        self, request: pb.WatchOrderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """The order now, then each change, until it is settled; the client's deadline (or
        the server's shutdown) ends it. Woken by the order's events (gateway.watch), each
        wake-up reads the order once; a stream costs no task of its own."""
        gateway = self._gateway()
        watch = gateway.watch
        currency = gateway.common.currency
        principal = await self._run(context, lambda _gw, who: _same(who))
        with watch.watching(request.order_id) as changed:
            # Watching before the first read: a change between the two is not lost.
            order = await self._run(
                context,
                lambda gw, _who: ops.get_order(gw, principal, request.order_id),
                first=False,
            )
            await context.write(pb.WatchOrderResponse(order=order_message(order, currency)))
            while not order.settled:
                resync = None if watch.live else RESYNC_SECONDS
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), resync)
                changed.clear()
                now = await self._run(
                    context,
                    lambda gw, _who: ops.get_order(gw, principal, request.order_id),
                    first=False,
                )
                if now != order:
                    await context.write(pb.WatchOrderResponse(order=order_message(now, currency)))
                order = now

    async def GetItem(
        self, request: pb.GetItemRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetItemResponse:
        item = await self._run(context, lambda gw, who: ops.get_item(gw, who, request.sku))
        return pb.GetItemResponse(item=item_message(item))

    async def ListItems(
        self, request: pb.ListItemsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ListItemsResponse:
        page = await self._run(
            context,
            lambda gw, who: ops.list_items(gw, who, request.limit, _text(request.cursor)),
        )
        return pb.ListItemsResponse(
            items=[item_message(i) for i in page.entries], next_cursor=page.next_cursor or ""
        )

    async def CreateItem(
        self, request: pb.CreateItemRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateItemResponse:
        body = {
            "sku": request.sku,
            "name": request.name,
            "price": request.price,
            "stock": request.stock,
        }
        item = await self._run(
            context,
            lambda gw, who: ops.create_item(
                gw, who, ops.validated(ItemIn, body), _text(request.request_id)
            ),
        )
        return pb.CreateItemResponse(item=item_message(item))

    async def UpdateItem(
        self, request: pb.UpdateItemRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.UpdateItemResponse:
        body = {f: getattr(request, f) for f in ("name", "price", "restock") if request.HasField(f)}
        item = await self._run(
            context,
            lambda gw, who: ops.update_item(
                gw, who, request.sku, ops.validated(ItemPatchIn, body), _text(request.request_id)
            ),
        )
        return pb.UpdateItemResponse(item=item_message(item))

    async def GetLoyaltyAccount(
        self, request: pb.GetLoyaltyAccountRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetLoyaltyAccountResponse:
        account = await self._run(
            context, lambda gw, who: ops.get_account(gw, who, request.customer_id)
        )
        return pb.GetLoyaltyAccountResponse(account=account_message(account))

    async def SetLoyaltyTier(
        self, request: pb.SetLoyaltyTierRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.SetLoyaltyTierResponse:
        account = await self._run(
            context,
            lambda gw, who: ops.set_tier(
                gw,
                who,
                request.customer_id,
                ops.validated(TierIn, {"tier": request.tier}),
                _text(request.request_id),
            ),
        )
        return pb.SetLoyaltyTierResponse(account=account_message(account))

    async def AdjustPoints(
        self, request: pb.AdjustPointsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.AdjustPointsResponse:
        body = {"delta": request.delta, "reason": request.reason}
        account = await self._run(
            context,
            lambda gw, who: ops.adjust_points(
                gw,
                who,
                request.customer_id,
                ops.validated(PointsIn, body),
                _text(request.request_id),
            ),
        )
        return pb.AdjustPointsResponse(account=account_message(account))
