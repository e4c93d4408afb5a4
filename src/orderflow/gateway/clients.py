"""gRPC clients behind the gateway's ports: deadlines from the budget, retries, status -> error.

Every call gets a deadline: what is left of the current budget, capped by the per-call
timeout. Only UNAVAILABLE is retried (with exponential backoff, within the budget);
every saga RPC is idempotent on the order id, and CreateOrder always carries an
idempotency key, so a retry never doubles an effect. A failure comes back as the
domain error the service raised (its code travels in trailing metadata), or as
ServiceUnavailableError / UpstreamError when the service gave no usable answer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from orderflow.errors import (
    ERRORS_BY_CODE,
    OrderflowError,
    ServiceUnavailableError,
    UpstreamError,
)
from orderflow.gateway.budget import remaining
from orderflow.gateway.ports import (
    Account,
    Discount,
    Failure,
    Item,
    Line,
    NewOrder,
    Order,
    Page,
    Reservation,
)
from orderflow.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from orderflow.loyalty.v1 import loyalty_pb2, loyalty_pb2_grpc
from orderflow.orders.v1 import orders_pb2, orders_pb2_grpc
from orderflow.platform.grpc_errors import ERROR_CODE_KEY, ERROR_DETAILS_KEY
from orderflow.platform.logging import ORDER_ID_KEY, REQUEST_ID_KEY
from orderflow.platform.telemetry import client_interceptors
from orderflow.settings import GatewaySettings

CHANNEL_OPTIONS: Sequence[tuple[str, Any]] = (
    # Spread calls over every address a (headless) service name resolves to.
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    ("grpc.max_send_message_length", 4 * 1024 * 1024),
    # Retries are ours (budget-aware); reconnect quickly once a service is back.
    ("grpc.enable_retries", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)

_NO_ANSWER = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def translate(exc: grpc.aio.AioRpcError, service: str) -> OrderflowError:
    """The domain error behind a failed call."""
    code = exc.code()
    if code in _NO_ANSWER:
        return ServiceUnavailableError(
            f"the {service} service did not answer ({code.name.lower()})", service=service
        )
    trailing = dict(exc.trailing_metadata() or ())
    error_cls = ERRORS_BY_CODE.get(str(trailing.get(ERROR_CODE_KEY, "")))
    if error_cls is not None and error_cls.code not in ("INTERNAL",):
        try:
            details = json.loads(str(trailing.get(ERROR_DETAILS_KEY, "{}")))
        except ValueError:
            details = {}
        return error_cls(exc.details() or error_cls.code, **details)
    return UpstreamError(
        f"the {service} service failed ({code.name}): {exc.details()}", service=service
    )


def metadata_value(value: str) -> str:
    """value as gRPC metadata may carry it (printable ASCII), percent-encoded if need be:
    an id from a URL can be any text, and anything else would fail the call."""
    if value.isascii() and value.isprintable():
        return value
    return quote(value, safe="")


class Caller:
    """Calls one service's RPCs with deadlines, id metadata and retries."""

    def __init__(self, service: str, settings: GatewaySettings) -> None:
        self.service = service
        self.timeout = settings.rpc_timeout_seconds
        self.attempts = settings.rpc_attempts
        self.backoff = settings.rpc_backoff_seconds

    async def __call__(
        self, method: Callable[..., Awaitable[Any]], request: Any, order_id: str = ""
    ) -> Any:
        ids = structlog.contextvars.get_contextvars()
        metadata: list[tuple[str, str]] = []
        if ids.get("request_id"):
            metadata.append((REQUEST_ID_KEY, metadata_value(str(ids["request_id"]))))
        if order_id or ids.get("order_id"):
            metadata.append((ORDER_ID_KEY, metadata_value(order_id or str(ids["order_id"]))))
        for attempt in range(self.attempts):
            timeout = remaining(self.timeout)
            if timeout <= 0.001:
                raise ServiceUnavailableError(
                    f"no time left to call the {self.service} service", service=self.service
                )
            try:
                return await method(request, timeout=timeout, metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                delay = self.backoff * (2**attempt)
                retry = (
                    exc.code() == grpc.StatusCode.UNAVAILABLE
                    and attempt + 1 < self.attempts
                    and remaining(self.timeout) > delay
                )
                if not retry:
                    raise translate(exc, self.service) from None
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")


def _dt(ts: Timestamp) -> datetime | None:
    if not ts.seconds and not ts.nanos:
        return None
    return ts.ToDatetime(tzinfo=UTC)


_STATUS_PREFIX = "ORDER_STATUS_"


def order_from_pb(msg: orders_pb2.Order) -> Order:
    status = orders_pb2.OrderStatus.Name(msg.status).removeprefix(_STATUS_PREFIX)
    failure = Failure(msg.failure.code, msg.failure.message) if msg.HasField("failure") else None
    return Order(
        id=msg.id,
        customer_id=msg.customer_id,
        status=status,
        lines=tuple(Line(x.sku, x.quantity, x.unit_price) for x in msg.lines),
        currency=msg.currency,
        subtotal=msg.subtotal,
        discount=msg.discount,
        redeem_points=msg.redeem_points,
        points_redeemed=msg.points_redeemed,
        total=msg.total,
        points_earned=msg.points_earned,
        failure=failure if failure and failure.code else None,
        created_at=_dt(msg.created_at),
        updated_at=_dt(msg.updated_at),
        idempotency_key=msg.idempotency_key,
        settled=msg.settled,
        cancel_requested=msg.cancel_requested,
        lease_owner=msg.lease_owner,
    )


def status_to_pb(status: str) -> orders_pb2.OrderStatus:
    if not status:
        return orders_pb2.ORDER_STATUS_UNSPECIFIED
    return orders_pb2.OrderStatus.Value(_STATUS_PREFIX + status)  # type: ignore[return-value]


class GrpcOrders:
    def __init__(self, channel: grpc.aio.Channel, settings: GatewaySettings) -> None:
        self.stub = orders_pb2_grpc.OrderServiceStub(channel)
        self.call = Caller("orders", settings)

    async def create_order(self, new: NewOrder) -> tuple[Order, bool]:
        request = orders_pb2.CreateOrderRequest(
            customer_id=new.customer_id,
            lines=[orders_pb2.OrderLine(sku=x.sku, quantity=x.quantity) for x in new.lines],
            redeem_points=new.redeem_points,
            idempotency_key=new.idempotency_key,
            request_fingerprint=new.fingerprint,
            lease_owner=new.lease_owner,
            lease_seconds=new.lease_seconds,
        )
        response = await self.call(self.stub.CreateOrder, request)
        return order_from_pb(response.order), response.created

    async def get_order(self, order_id: str) -> Order:
        response = await self.call(
            self.stub.GetOrder, orders_pb2.GetOrderRequest(order_id=order_id), order_id
        )
        return order_from_pb(response.order)

    async def list_orders(
        self, customer_id: str, status: str, limit: int, cursor: str
    ) -> Page[Order]:
        request = orders_pb2.ListOrdersRequest(
            customer_id=customer_id, status=status_to_pb(status), limit=limit, cursor=cursor
        )
        response = await self.call(self.stub.ListOrders, request)
        return Page([order_from_pb(o) for o in response.orders], response.next_cursor or None)

    async def acquire_lease(self, order_id: str, owner: str, seconds: float) -> Order:
        request = orders_pb2.AcquireOrderLeaseRequest(
            order_id=order_id, lease_owner=owner, lease_seconds=seconds
        )
        return order_from_pb(
            (await self.call(self.stub.AcquireOrderLease, request, order_id)).order
        )

    async def confirm_order(
        self, order_id: str, owner: str, reservation: Reservation, subtotal: int, discount: Discount
    ) -> Order:
        request = orders_pb2.ConfirmOrderRequest(
            order_id=order_id,
            lease_owner=owner,
            lines=[
                orders_pb2.OrderLine(sku=x.sku, quantity=x.quantity, unit_price=x.unit_price)
                for x in reservation.lines
            ],
            currency=reservation.currency,
            subtotal=subtotal,
            discount=discount.discount,
            points_redeemed=discount.points_redeemed,
            total=discount.total,
            points_earned=discount.points_earned,
        )
        return order_from_pb((await self.call(self.stub.ConfirmOrder, request, order_id)).order)

    async def reject_order(self, order_id: str, owner: str, failure: Failure) -> Order:
        request = orders_pb2.RejectOrderRequest(
            order_id=order_id,
            lease_owner=owner,
            failure=orders_pb2.Failure(code=failure.code, message=failure.message[:500]),
        )
        return order_from_pb((await self.call(self.stub.RejectOrder, request, order_id)).order)

    async def request_cancel(self, order_id: str, owner: str, seconds: float) -> Order:
        request = orders_pb2.RequestOrderCancelRequest(
            order_id=order_id, lease_owner=owner, lease_seconds=seconds
        )
        response = await self.call(self.stub.RequestOrderCancel, request, order_id)
        return order_from_pb(response.order)

    async def withdraw_cancel(self, order_id: str, owner: str) -> Order:
        request = orders_pb2.WithdrawOrderCancelRequest(order_id=order_id, lease_owner=owner)
        response = await self.call(self.stub.WithdrawOrderCancel, request, order_id)
        return order_from_pb(response.order)

    async def cancel_order(self, order_id: str, owner: str) -> Order:
        request = orders_pb2.CancelOrderRequest(order_id=order_id, lease_owner=owner)
        return order_from_pb((await self.call(self.stub.CancelOrder, request, order_id)).order)

    async def settle_order(self, order_id: str, owner: str) -> Order:
        request = orders_pb2.SettleOrderRequest(order_id=order_id, lease_owner=owner)
        return order_from_pb((await self.call(self.stub.SettleOrder, request, order_id)).order)

    async def claim_stale(self, owner: str, seconds: float, limit: int) -> list[Order]:
        request = orders_pb2.ClaimStaleOrdersRequest(
            lease_owner=owner, lease_seconds=seconds, limit=limit
        )
        response = await self.call(self.stub.ClaimStaleOrders, request)
        return [order_from_pb(o) for o in response.orders]


def item_from_pb(msg: inventory_pb2.Item) -> Item:
    return Item(
        sku=msg.sku,
        name=msg.name,
        price=msg.price,
        currency=msg.currency,
        available=msg.available,
        reserved=msg.reserved,
        sold=msg.sold,
    )


class GrpcInventory:
    def __init__(self, channel: grpc.aio.Channel, settings: GatewaySettings) -> None:
        self.stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        self.call = Caller("inventory", settings)

    async def reserve(self, order_id: str, lines: Sequence[Line]) -> Reservation:
        request = inventory_pb2.ReserveStockRequest(
            order_id=order_id,
            lines=[inventory_pb2.StockLine(sku=x.sku, quantity=x.quantity) for x in lines],
        )
        response = await self.call(self.stub.ReserveStock, request, order_id)
        return Reservation(
            tuple(Line(x.sku, x.quantity, x.unit_price) for x in response.lines),
            response.currency,
        )

    async def release(self, order_id: str) -> None:
        request = inventory_pb2.ReleaseStockRequest(order_id=order_id)
        await self.call(self.stub.ReleaseStock, request, order_id)

    async def commit(self, order_id: str) -> None:
        request = inventory_pb2.CommitStockRequest(order_id=order_id)
        await self.call(self.stub.CommitStock, request, order_id)

    async def return_stock(self, order_id: str) -> None:
        request = inventory_pb2.ReturnStockRequest(order_id=order_id)
        await self.call(self.stub.ReturnStock, request, order_id)

    async def create_item(self, sku: str, name: str, price: int, stock: int) -> Item:
        request = inventory_pb2.CreateItemRequest(sku=sku, name=name, price=price, stock=stock)
        return item_from_pb((await self.call(self.stub.CreateItem, request)).item)

    async def get_item(self, sku: str) -> Item:
        request = inventory_pb2.GetItemRequest(sku=sku)
        return item_from_pb((await self.call(self.stub.GetItem, request)).item)

    async def list_items(self, limit: int, cursor: str) -> Page[Item]:
        request = inventory_pb2.ListItemsRequest(limit=limit, cursor=cursor)
        response = await self.call(self.stub.ListItems, request)
        return Page([item_from_pb(i) for i in response.items], response.next_cursor or None)

    async def update_item(
        self, sku: str, name: str | None, price: int | None, restock: int | None
    ) -> Item:
        request = inventory_pb2.UpdateItemRequest(sku=sku, name=name, price=price, restock=restock)
        return item_from_pb((await self.call(self.stub.UpdateItem, request)).item)


def account_from_pb(msg: loyalty_pb2.Account) -> Account:
    return Account(
        customer_id=msg.customer_id,
        tier=msg.tier,
        discount_percent=msg.discount_percent,
        points=msg.points,
    )


class GrpcLoyalty:
    def __init__(self, channel: grpc.aio.Channel, settings: GatewaySettings) -> None:
        self.stub = loyalty_pb2_grpc.LoyaltyServiceStub(channel)
        self.call = Caller("loyalty", settings)

    async def apply(
        self, order_id: str, customer_id: str, subtotal: int, redeem_points: int
    ) -> Discount:
        request = loyalty_pb2.ApplyDiscountRequest(
            order_id=order_id,
            customer_id=customer_id,
            subtotal=subtotal,
            redeem_points=redeem_points,
        )
        r = await self.call(self.stub.ApplyDiscount, request, order_id)
        return Discount(
            discount=r.discount,
            points_redeemed=r.points_redeemed,
            total=r.total,
            points_earned=r.points_earned,
            discount_percent=r.discount_percent,
            tier=r.tier,
        )

    async def cancel(self, order_id: str) -> None:
        request = loyalty_pb2.CancelDiscountRequest(order_id=order_id)
        await self.call(self.stub.CancelDiscount, request, order_id)

    async def commit(self, order_id: str) -> None:
        request = loyalty_pb2.CommitDiscountRequest(order_id=order_id)
        await self.call(self.stub.CommitDiscount, request, order_id)

    async def refund(self, order_id: str) -> None:
        request = loyalty_pb2.RefundDiscountRequest(order_id=order_id)
        await self.call(self.stub.RefundDiscount, request, order_id)

    async def get_account(self, customer_id: str) -> Account:
        request = loyalty_pb2.GetAccountRequest(customer_id=customer_id)
        return account_from_pb((await self.call(self.stub.GetAccount, request)).account)

    async def set_tier(self, customer_id: str, tier: str) -> Account:
        request = loyalty_pb2.SetTierRequest(customer_id=customer_id, tier=tier)
        return account_from_pb((await self.call(self.stub.SetTier, request)).account)

    async def adjust_points(self, customer_id: str, delta: int, reason: str) -> Account:
        request = loyalty_pb2.AdjustPointsRequest(
            customer_id=customer_id, delta=delta, reason=reason
        )
        return account_from_pb((await self.call(self.stub.AdjustPoints, request)).account)


class Channels:
    """One channel per distinct target (in one-process mode the three services share one)."""

    def __init__(self, credentials: grpc.ChannelCredentials | None = None) -> None:
        """With credentials (mutual TLS, see platform.tls) every channel is a TLS channel."""
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._credentials = credentials

    def get(self, target: str) -> grpc.aio.Channel:
        if target not in self._channels:
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(
                    target, options=CHANNEL_OPTIONS, interceptors=client_interceptors()
                )
            else:
                channel = grpc.aio.secure_channel(
                    target,
                    self._credentials,
                    options=CHANNEL_OPTIONS,
                    interceptors=client_interceptors(),
                )
            self._channels[target] = channel
        return self._channels[target]

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
