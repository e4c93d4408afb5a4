"""The LoyaltyService gRPC servicer: translates messages to use cases and back."""

from __future__ import annotations

import functools
from typing import Any

import grpc

from orderflow.events import backlog as event_backlog
from orderflow.events.backlog import BacklogReader
from orderflow.loyalty.domain import Account, ApplicationState, BookedEntry
from orderflow.loyalty.migrations import HEAD
from orderflow.loyalty.service import LoyaltyService
from orderflow.loyalty.v1 import loyalty_pb2 as pb
from orderflow.loyalty.v1 import loyalty_pb2_grpc as pb_grpc
from orderflow.platform.db import Database
from orderflow.platform.grpc_server import ServiceSpec

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["LoyaltyService"].full_name

_STATE = {
    ApplicationState.APPLIED: pb.APPLICATION_STATE_APPLIED,
    ApplicationState.CANCELLED: pb.APPLICATION_STATE_CANCELLED,
    ApplicationState.COMMITTED: pb.APPLICATION_STATE_COMMITTED,
    ApplicationState.REFUNDED: pb.APPLICATION_STATE_REFUNDED,
}


def account_pb(account: Account) -> pb.Account:
    return pb.Account(
        customer_id=account.customer_id,
        tier=account.tier,
        discount_percent=account.discount_percent,
        points=account.points,
    )


def entry_pb(booked: BookedEntry) -> pb.PointsEntry:
    msg = pb.PointsEntry(
        kind=booked.entry.kind.value.lower(),
        delta=booked.entry.delta,
        reason=booked.entry.reason,
        order_id=booked.entry.order_id or "",
    )
    msg.created_at.FromMicroseconds(booked.created_us)
    return msg


class LoyaltyServicer(pb_grpc.LoyaltyServiceServicer):
    def __init__(self, service: LoyaltyService, backlog: BacklogReader[Any] | None = None) -> None:
        self.service = service
        self.backlog = backlog

    async def GetEventsBacklog(
        self, request: pb.GetEventsBacklogRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetEventsBacklogResponse:
        return await event_backlog.answer(
            self.backlog, request.limit, context, pb.GetEventsBacklogResponse(), pb.ParkedEvent
        )

    async def ListPointsEntries(
        self, request: pb.ListPointsEntriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListPointsEntriesResponse:
        entries, cursor = await self.service.list_entries(
            request.customer_id, request.limit, request.cursor
        )
        return pb.ListPointsEntriesResponse(
            entries=[entry_pb(x) for x in entries], next_cursor=cursor
        )

    async def GetAccount(
        self, request: pb.GetAccountRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAccountResponse:
        account = await self.service.get_account(request.customer_id)
        return pb.GetAccountResponse(account=account_pb(account))

    async def SetTier(
        self, request: pb.SetTierRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetTierResponse:
        account = await self.service.set_tier(
            request.customer_id,
            request.tier,
            idempotency_key=request.idempotency_key,
            caller=request.idempotency_scope,
            owner=request.lease_owner,
        )
        return pb.SetTierResponse(account=account_pb(account))

    async def AdjustPoints(
        self, request: pb.AdjustPointsRequest, context: grpc.aio.ServicerContext
    ) -> pb.AdjustPointsResponse:
        account = await self.service.adjust_points(
            request.customer_id,
            request.delta,
            request.reason,
            request.idempotency_key,
            caller=request.idempotency_scope,
            owner=request.lease_owner,
        )
        return pb.AdjustPointsResponse(account=account_pb(account))

    async def ApplyDiscount(
        self, request: pb.ApplyDiscountRequest, context: grpc.aio.ServicerContext
    ) -> pb.ApplyDiscountResponse:
        app = await self.service.apply_discount(
            request.order_id, request.customer_id, request.subtotal, request.redeem_points
        )
        return pb.ApplyDiscountResponse(
            tier=app.tier,
            discount_percent=app.discount_percent,
            discount=app.discount,
            points_redeemed=app.points_redeemed,
            total=app.total,
            points_earned=app.points_earned,
            state=_STATE[app.state],
        )

    async def CancelDiscount(
        self, request: pb.CancelDiscountRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelDiscountResponse:
        state = await self.service.void_discount(request.order_id)
        return pb.CancelDiscountResponse(state=_STATE[state])

    async def CommitDiscount(
        self, request: pb.CommitDiscountRequest, context: grpc.aio.ServicerContext
    ) -> pb.CommitDiscountResponse:
        state, earned = await self.service.commit_discount(request.order_id)
        return pb.CommitDiscountResponse(state=_STATE[state], points_earned=earned)

    async def RefundDiscount(
        self, request: pb.RefundDiscountRequest, context: grpc.aio.ServicerContext
    ) -> pb.RefundDiscountResponse:
        state = await self.service.refund_discount(request.order_id)
        return pb.RefundDiscountResponse(state=_STATE[state])


def service_spec(
    service: LoyaltyService, database: Database, backlog: BacklogReader[Any] | None = None
) -> ServiceSpec:
    servicer = LoyaltyServicer(service, backlog)
    return ServiceSpec(
        name=SERVICE_NAME,
        servicer=servicer,
        add_to_server=pb_grpc.add_LoyaltyServiceServicer_to_server,
        # SERVING only once the database answers and is at the newest migration.
        probe=functools.partial(database.ping_schema, HEAD),
    )
