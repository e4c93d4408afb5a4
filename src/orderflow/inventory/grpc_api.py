"""The InventoryService gRPC servicer: translates messages to use cases and back."""

from __future__ import annotations

import functools
from typing import Any

import grpc

from orderflow.events import backlog as event_backlog
from orderflow.events.backlog import BacklogReader
from orderflow.inventory.domain import Item, ReservationState
from orderflow.inventory.migrations import HEAD
from orderflow.inventory.service import InventoryService
from orderflow.inventory.v1 import inventory_pb2 as pb
from orderflow.inventory.v1 import inventory_pb2_grpc as pb_grpc
from orderflow.platform.db import Database
from orderflow.platform.grpc_server import ServiceSpec

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InventoryService"].full_name

_STATE = {
    ReservationState.RESERVED: pb.RESERVATION_STATE_RESERVED,
    ReservationState.RELEASED: pb.RESERVATION_STATE_RELEASED,
    ReservationState.COMMITTED: pb.RESERVATION_STATE_COMMITTED,
    ReservationState.RETURNED: pb.RESERVATION_STATE_RETURNED,
}


def item_pb(item: Item) -> pb.Item:
    return pb.Item(
        sku=item.sku,
        name=item.name,
        price=item.price,
        currency=item.currency,
        available=item.available,
        reserved=item.reserved,
        sold=item.sold,
        received=item.received,
    )


class InventoryServicer(pb_grpc.InventoryServiceServicer):
    def __init__(
        self, service: InventoryService, backlog: BacklogReader[Any] | None = None
    ) -> None:
        self.service = service
        self.backlog = backlog

    async def GetEventsBacklog(
        self, request: pb.GetEventsBacklogRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetEventsBacklogResponse:
        return await event_backlog.answer(
            self.backlog, request.limit, context, pb.GetEventsBacklogResponse(), pb.ParkedEvent
        )

    async def CreateItem(
        self, request: pb.CreateItemRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateItemResponse:
        item = await self.service.create_item(
            request.sku,
            request.name,
            request.price,
            request.stock,
            idempotency_key=request.idempotency_key,
            caller=request.idempotency_scope,
            owner=request.lease_owner,
        )
        return pb.CreateItemResponse(item=item_pb(item))

    async def GetItem(
        self, request: pb.GetItemRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetItemResponse:
        return pb.GetItemResponse(item=item_pb(await self.service.get_item(request.sku)))

    async def ListItems(
        self, request: pb.ListItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListItemsResponse:
        found, cursor = await self.service.list_items(request.limit, request.cursor)
        return pb.ListItemsResponse(items=[item_pb(i) for i in found], next_cursor=cursor)

    async def ListLowStockItems(
        self, request: pb.ListLowStockItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListLowStockItemsResponse:
        found, truncated = await self.service.list_low_stock(request.limit)
        return pb.ListLowStockItemsResponse(
            items=[item_pb(i) for i in found],
            threshold=self.service.low_stock_threshold,
            truncated=truncated,
        )

    async def UpdateItem(
        self, request: pb.UpdateItemRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateItemResponse:
        item = await self.service.update_item(
            request.sku,
            request.name if request.HasField("name") else None,
            request.price if request.HasField("price") else None,
            request.restock if request.HasField("restock") else None,
            idempotency_key=request.idempotency_key,
            caller=request.idempotency_scope,
            owner=request.lease_owner,
        )
        return pb.UpdateItemResponse(item=item_pb(item))

    async def ReserveStock(
        self, request: pb.ReserveStockRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReserveStockResponse:
        reservation = await self.service.reserve(
            request.order_id, [(x.sku, x.quantity) for x in request.lines]
        )
        return pb.ReserveStockResponse(
            lines=[
                pb.ReservedLine(sku=x.sku, quantity=x.quantity, unit_price=x.unit_price)
                for x in reservation.lines
            ],
            currency=reservation.currency,
            state=_STATE[reservation.state],
        )

    async def ReleaseStock(
        self, request: pb.ReleaseStockRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReleaseStockResponse:
        return pb.ReleaseStockResponse(state=_STATE[await self.service.release(request.order_id)])

    async def CommitStock(
        self, request: pb.CommitStockRequest, context: grpc.aio.ServicerContext
    ) -> pb.CommitStockResponse:
        return pb.CommitStockResponse(
            state=_STATE[await self.service.commit_stock(request.order_id)]
        )

    async def ReturnStock(
        self, request: pb.ReturnStockRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReturnStockResponse:
        state = await self.service.return_stock(request.order_id)
        return pb.ReturnStockResponse(state=_STATE[state])


def service_spec(
    service: InventoryService, database: Database, backlog: BacklogReader[Any] | None = None
) -> ServiceSpec:
    servicer = InventoryServicer(service, backlog)
    return ServiceSpec(
        name=SERVICE_NAME,
        servicer=servicer,
        add_to_server=pb_grpc.add_InventoryServiceServicer_to_server,
        # SERVING only once the database answers and is at the newest migration.
        probe=functools.partial(database.ping_schema, HEAD),
    )
