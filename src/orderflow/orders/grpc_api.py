"""The OrderService gRPC servicer: translates messages to use cases and back."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from orderflow.events import backlog as event_backlog
from orderflow.events.backlog import BacklogReader
from orderflow.orders.domain import (
    Driver,
    Failure,
    Order,
    OrderLine,
    OrderStatus,
    Step,
    StepOutcome,
    Totals,
)
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

# UNSPECIFIED is read as REQUEST: a caller that says nothing is answering a request.
_DRIVER: dict[int, Driver] = {
    pb.STEP_DRIVER_UNSPECIFIED: Driver.REQUEST,
    pb.STEP_DRIVER_REQUEST: Driver.REQUEST,
    pb.STEP_DRIVER_RECOVERY: Driver.RECOVERY,
    pb.STEP_DRIVER_EVENT: Driver.EVENT,
}
_DRIVER_PB = {
    Driver.REQUEST: pb.STEP_DRIVER_REQUEST,
    Driver.RECOVERY: pb.STEP_DRIVER_RECOVERY,
    Driver.EVENT: pb.STEP_DRIVER_EVENT,
}
_OUTCOME: dict[int, StepOutcome] = {
    pb.STEP_OUTCOME_OK: StepOutcome.OK,
    pb.STEP_OUTCOME_FAILED: StepOutcome.FAILED,
    pb.STEP_OUTCOME_UNKNOWN: StepOutcome.UNKNOWN,
}
_OUTCOME_PB = {
    StepOutcome.OK: pb.STEP_OUTCOME_OK,
    StepOutcome.FAILED: pb.STEP_OUTCOME_FAILED,
    StepOutcome.UNKNOWN: pb.STEP_OUTCOME_UNKNOWN,
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


def step_pb(step: Step) -> pb.SagaStep:
    msg = pb.SagaStep(
        step_id=step.step_id,
        name=step.name,
        outcome=_OUTCOME_PB[step.outcome],
        driver=_DRIVER_PB[step.driver],
        started_at=_ts(step.started_us),
    )
    msg.duration.FromMicroseconds(step.duration_us)
    if step.error is not None:
        msg.error.CopyFrom(pb.Failure(code=step.error.code, message=step.error.message))
    return msg


def driver_of(driver: int) -> Driver:
    """The driver a request names (an unknown number is read as REQUEST)."""
    return _DRIVER.get(driver, Driver.REQUEST)


def steps_of(messages: Iterable[pb.SagaStep]) -> list[Step]:
    """The reported steps; domain.check_steps refuses the bad ones with a clear message.
    An unknown outcome is read as UNKNOWN (it went some way nobody here knows)."""
    steps = []
    for msg in messages:
        error = Failure(msg.error.code, msg.error.message) if msg.HasField("error") else None
        steps.append(
            Step(
                step_id=msg.step_id,
                name=msg.name,
                outcome=_OUTCOME.get(msg.outcome, StepOutcome.UNKNOWN),
                driver=driver_of(msg.driver),
                started_us=msg.started_at.ToMicroseconds(),
                duration_us=Duration.ToMicroseconds(msg.duration),
                error=error if error is not None and error.code else None,
            )
        )
    return steps


def _status_name(status: int) -> str:
    if status == pb.ORDER_STATUS_UNSPECIFIED:
        return ""
    return OrderStatus(pb.OrderStatus.Name(status).removeprefix(_STATUS_PREFIX)).value


class OrdersServicer(pb_grpc.OrderServiceServicer):
    def __init__(self, service: OrdersService, backlog: BacklogReader[Any] | None = None) -> None:
        self.service = service
        self.backlog = backlog

    async def GetEventsBacklog(
        self, request: pb.GetEventsBacklogRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetEventsBacklogResponse:
        return await event_backlog.answer(
            self.backlog, request.limit, context, pb.GetEventsBacklogResponse(), pb.ParkedEvent
        )

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
            driver_of(request.driver),
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
            request.order_id, request.lease_owner, request.lease_seconds, driver_of(request.driver)
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
        order = await self.service.confirm_order(
            request.order_id,
            request.lease_owner,
            totals,
            driver_of(request.driver),
            steps_of(request.steps),
        )
        return pb.ConfirmOrderResponse(order=order_pb(order))

    async def RejectOrder(
        self, request: pb.RejectOrderRequest, context: grpc.aio.ServicerContext
    ) -> pb.RejectOrderResponse:
        failure = Failure(request.failure.code, request.failure.message)
        order = await self.service.reject_order(
            request.order_id,
            request.lease_owner,
            failure,
            driver_of(request.driver),
            steps_of(request.steps),
        )
        return pb.RejectOrderResponse(order=order_pb(order))

    async def RequestOrderCancel(
        self, request: pb.RequestOrderCancelRequest, context: grpc.aio.ServicerContext
    ) -> pb.RequestOrderCancelResponse:
        order = await self.service.request_cancel(
            request.order_id,
            request.lease_owner,
            request.lease_seconds,
            driver_of(request.driver),
            steps_of(request.steps),
        )
        return pb.RequestOrderCancelResponse(order=order_pb(order))

    async def WithdrawOrderCancel(
        self, request: pb.WithdrawOrderCancelRequest, context: grpc.aio.ServicerContext
    ) -> pb.WithdrawOrderCancelResponse:
        order = await self.service.withdraw_cancel(
            request.order_id,
            request.lease_owner,
            driver_of(request.driver),
            steps_of(request.steps),
        )
        return pb.WithdrawOrderCancelResponse(order=order_pb(order))

    async def CancelOrder(
        self, request: pb.CancelOrderRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelOrderResponse:
        order = await self.service.cancel_order(
            request.order_id,
            request.lease_owner,
            driver_of(request.driver),
            steps_of(request.steps),
        )
        return pb.CancelOrderResponse(order=order_pb(order))

    async def SettleOrder(
        self, request: pb.SettleOrderRequest, context: grpc.aio.ServicerContext
    ) -> pb.SettleOrderResponse:
        order = await self.service.settle_order(
            request.order_id,
            request.lease_owner,
            driver_of(request.driver),
            steps_of(request.steps),
        )
        return pb.SettleOrderResponse(order=order_pb(order))

    async def ClaimStaleOrders(
        self, request: pb.ClaimStaleOrdersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClaimStaleOrdersResponse:
        claimed = await self.service.claim_stale(
            request.lease_owner, request.lease_seconds, request.limit
        )
        return pb.ClaimStaleOrdersResponse(orders=[order_pb(o) for o in claimed])

    async def ListUnsettledOrders(
        self, request: pb.ListUnsettledOrdersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListUnsettledOrdersResponse:
        found, truncated, stuck = await self.service.list_unsettled(request.limit)
        return pb.ListUnsettledOrdersResponse(
            orders=[order_pb(o) for o in found], truncated=truncated, stuck_order_ids=stuck
        )

    async def RecordOrderSteps(
        self, request: pb.RecordOrderStepsRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordOrderStepsResponse:
        await self.service.record_steps(request.order_id, steps_of(request.steps))
        return pb.RecordOrderStepsResponse()

    async def GetOrderHistory(
        self, request: pb.GetOrderHistoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetOrderHistoryResponse:
        order, steps, truncated = await self.service.order_history(request.order_id)
        return pb.GetOrderHistoryResponse(
            order=order_pb(order), steps=[step_pb(s) for s in steps], truncated=truncated
        )


def service_spec(
    service: OrdersService, database: Database, backlog: BacklogReader[Any] | None = None
) -> ServiceSpec:
    servicer = OrdersServicer(service, backlog)
    return ServiceSpec(
        name=SERVICE_NAME,
        servicer=servicer,
        add_to_server=pb_grpc.add_OrderServiceServicer_to_server,
        # SERVING only once the database answers and is at the newest migration.
        probe=functools.partial(database.ping_schema, HEAD),
    )
