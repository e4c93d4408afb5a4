"""The OrderService gRPC servicer: translates messages to use cases and back."""

from __future__ import annotations

import functools

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from orderflow.orders.domain import Failure, Order, OrderLine, OrderStatus, Totals
from orderflow.orders.migrations import HEAD
from orderflow.orders.service import OrdersService
from orderflow.orders.v1 import orders_pb2 as pb
from orderflow.orders.v1 import orders_pb2_grpc as pb_grpc
from orderflow.platform.db import Database
from orderflow.platform.grpc_server import ServiceSpec

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["OrderService"].full_name

_STATUS_PREFIX = "ORDER_STATUS_"
_STATUS = {
    OrderStatus.PENDING: pb.ORDER_STATUS_PENDING,
    OrderStatus.CONFIRMED: pb.ORDER_STATUS_CONFIRMED,
    OrderStatus.REJECTED: pb.ORDER_STATUS_REJECTED,
    OrderStatus.CANCELLED: pb.ORDER_STATUS_CANCELLED,
}


def _ts(us: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMicroseconds(us)
    return ts


def order_pb(order: Order) -> pb.Order:
    msg = pb.Order(
        id=order.id,
        customer_id=order.customer_id,
        status=_STATUS[order.status],
        lines=[
            pb.OrderLine(sku=x.sku, quantity=x.quantity, unit_price=x.unit_price)
            for x in order.lines
        ],
        currency=order.currency,
        subtotal=order.subtotal,
        discount=order.discount,
        redeem_points=order.redeem_points,
        points_redeemed=order.points_redeemed,
        total=order.total,
        points_earned=order.points_earned,
        created_at=_ts(order.created_us),
        updated_at=_ts(order.updated_us),
        idempotency_key=order.idempotency_key,
        settled=order.settled,
        cancel_requested=order.cancel_requested,
        lease_owner=order.lease_owner,
    )
    if order.failure is not None:
        msg.failure.CopyFrom(pb.Failure(code=order.failure.code, message=order.failure.message))
    if order.lease_owner:
        msg.lease_expires_at.CopyFrom(_ts(order.lease_expires_us))
    return msg


def _status_name(status: int) -> str:
    if status == pb.ORDER_STATUS_UNSPECIFIED:
        return ""
    return OrderStatus(pb.OrderStatus.Name(status).removeprefix(_STATUS_PREFIX)).value


class OrdersServicer(pb_grpc.OrderServiceServicer):
    def __init__(self, service: OrdersService) -> None:
        self.service = service

    async def CreateOrder(
        self, request: pb.CreateOrderRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateOrderResponse:
        order, created = await self.service.create_order(
            request.customer_id,
            [(x.sku, x.quantity) for x in request.lines],
            request.redeem_points,
            request.idempotency_key,
            request.request_fingerprint,
            request.lease_owner,
            request.lease_seconds,
        )
        return pb.CreateOrderResponse(order=order_pb(order), created=created)

    async def GetOrder(
        self, request: pb.GetOrderRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetOrderResponse:
        return pb.GetOrderResponse(order=order_pb(await self.service.get_order(request.order_id)))

    async def ListOrders(
        self, request: pb.ListOrdersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListOrdersResponse:
        try:
            status = _status_name(request.status)
        except ValueError:
            status = "UNKNOWN"  # refused by the service with a clear message
        found, cursor = await self.service.list_orders(
            request.customer_id, status, request.limit, request.cursor
        )
        return pb.ListOrdersResponse(orders=[order_pb(o) for o in found], next_cursor=cursor)

    async def AcquireOrderLease(
        self, request: pb.AcquireOrderLeaseRequest, context: grpc.aio.ServicerContext
    ) -> pb.AcquireOrderLeaseResponse:
        order = await self.service.acquire_lease(
            request.order_id, request.lease_owner, request.lease_seconds
        )
        return pb.AcquireOrderLeaseResponse(order=order_pb(order))

    async def ConfirmOrder(
        self, request: pb.ConfirmOrderRequest, context: grpc.aio.ServicerContext
    ) -> pb.ConfirmOrderResponse:
        totals = Totals(
            lines=tuple(OrderLine(x.sku, x.quantity, x.unit_price) for x in request.lines),
            currency=request.currency,
            subtotal=request.subtotal,
            discount=request.discount,
            points_redeemed=request.points_redeemed,
            total=request.total,
            points_earned=request.points_earned,
        )
        order = await self.service.confirm_order(request.order_id, request.lease_owner, totals)
        return pb.ConfirmOrderResponse(order=order_pb(order))

    async def RejectOrder(
        self, request: pb.RejectOrderRequest, context: grpc.aio.ServicerContext
    ) -> pb.RejectOrderResponse:
        failure = Failure(request.failure.code, request.failure.message)
        order = await self.service.reject_order(request.order_id, request.lease_owner, failure)
        return pb.RejectOrderResponse(order=order_pb(order))

    async def RequestOrderCancel(
        self, request: pb.RequestOrderCancelRequest, context: grpc.aio.ServicerContext
    ) -> pb.RequestOrderCancelResponse:
        order = await self.service.request_cancel(
            request.order_id, request.lease_owner, request.lease_seconds
        )
        return pb.RequestOrderCancelResponse(order=order_pb(order))

    async def WithdrawOrderCancel(
        self, request: pb.WithdrawOrderCancelRequest, context: grpc.aio.ServicerContext
    ) -> pb.WithdrawOrderCancelResponse:
        order = await self.service.withdraw_cancel(request.order_id, request.lease_owner)
        return pb.WithdrawOrderCancelResponse(order=order_pb(order))

    async def CancelOrder(
        self, request: pb.CancelOrderRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelOrderResponse:
        order = await self.service.cancel_order(request.order_id, request.lease_owner)
        return pb.CancelOrderResponse(order=order_pb(order))

    async def SettleOrder(
        self, request: pb.SettleOrderRequest, context: grpc.aio.ServicerContext
    ) -> pb.SettleOrderResponse:
        order = await self.service.settle_order(request.order_id, request.lease_owner)
        return pb.SettleOrderResponse(order=order_pb(order))

    async def ClaimStaleOrders(
        self, request: pb.ClaimStaleOrdersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClaimStaleOrdersResponse:
        claimed = await self.service.claim_stale(
            request.lease_owner, request.lease_seconds, request.limit
        )
        return pb.ClaimStaleOrdersResponse(orders=[order_pb(o) for o in claimed])


def service_spec(service: OrdersService, database: Database) -> ServiceSpec:
    servicer = OrdersServicer(service)
    return ServiceSpec(
        name=SERVICE_NAME,
        servicer=servicer,
        add_to_server=pb_grpc.add_OrderServiceServicer_to_server,
        # SERVING only once the database answers and is at the newest migration.
        probe=functools.partial(database.ping_schema, HEAD),
    )
