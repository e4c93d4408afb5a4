"""The gateway's ports over gRPC: one adapter per service, and the protobuf <-> port mapping.

Each adapter turns a port call into a request message, makes it through a `Caller`
(deadline, retry, error translation: orderflow.gateway.rpc) and maps the reply back to
the gateway's own types (orderflow.gateway.ports). Nothing else here knows protobuf.

Every call is marked `safe` to repeat, and is: reads change nothing; each saga RPC is
idempotent on the order id (CreateOrder on its idempotency key); each admin change
(CreateItem, UpdateItem, SetTier, AdjustPoints) carries an idempotency key, the client's
or one generated here for the one request, which the service stores with its result in
the transaction of the effect (ADR 0023) — so a retry after a lost reply has no second
effect.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from orderflow.gateway.ports import (
    DRIVERS,
    OUTCOMES,
    REQUEST,
    Account,
    Discount,
    EventsBacklog,
    Failure,
    History,
    Idempotency,
    Item,
    Line,
    LowStock,
    NewOrder,
    Order,
    Page,
    Parked,
    PointsEntry,
    Reservation,
    SagaStep,
    Unsettled,
)
from orderflow.gateway.rpc import Caller
from orderflow.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from orderflow.loyalty.v1 import loyalty_pb2, loyalty_pb2_grpc
from orderflow.orders.v1 import orders_pb2, orders_pb2_grpc
from orderflow.settings import GatewaySettings


def _dt(ts: Timestamp) -> datetime | None:
    if not ts.seconds and not ts.nanos:
        return None
    return ts.ToDatetime(tzinfo=UTC)


def backlog_from_pb(service: str, msg: Any) -> EventsBacklog:
    """A GetEventsBacklogResponse (each service's proto has one of the same shape)."""
    return EventsBacklog(
        service=service,
        pending=msg.pending,
        oldest_pending_at=_dt(msg.oldest_pending_at) if msg.HasField("oldest_pending_at") else None,
        parked=[
            Parked(
                consumer=p.consumer,
                event_id=p.event_id,
                event_type=p.event_type,
                subject=p.subject,
                attempts=p.attempts,
                last_error=p.last_error,
                parked_at=_dt(p.parked_at),
                redrive_requested=p.redrive_requested,
                aggregate=p.aggregate,
            )
            for p in msg.parked
        ],
        parked_count=msg.parked_count,
    )


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


_DRIVER_PREFIX = "STEP_DRIVER_"
_OUTCOME_PREFIX = "STEP_OUTCOME_"
# Built once: a step is mapped on the order path (ConfirmOrder carries two).
_DRIVER_PB = {d: orders_pb2.StepDriver.Value(_DRIVER_PREFIX + d.upper()) for d in DRIVERS}
_OUTCOME_PB = {o: orders_pb2.StepOutcome.Value(_OUTCOME_PREFIX + o.upper()) for o in OUTCOMES}


def driver_to_pb(driver: str) -> orders_pb2.StepDriver:
    return _DRIVER_PB[driver]  # type: ignore[return-value]


def step_to_pb(step: SagaStep) -> orders_pb2.SagaStep:
    msg = orders_pb2.SagaStep(
        step_id=step.step_id,
        name=step.name,
        outcome=_OUTCOME_PB[step.outcome],  # type: ignore[arg-type]
        driver=driver_to_pb(step.driver),
    )
    msg.started_at.FromDatetime(step.started_at)
    msg.duration.FromMicroseconds(step.duration_us)
    if step.error is not None:
        msg.error.CopyFrom(
            orders_pb2.Failure(code=step.error.code, message=step.error.message[:500])
        )
    return msg


def step_from_pb(msg: orders_pb2.SagaStep) -> SagaStep:
    return SagaStep(
        step_id=msg.step_id,
        name=msg.name,
        outcome=orders_pb2.StepOutcome.Name(msg.outcome).removeprefix(_OUTCOME_PREFIX).lower(),
        driver=orders_pb2.StepDriver.Name(msg.driver).removeprefix(_DRIVER_PREFIX).lower(),
        started_at=msg.started_at.ToDatetime(tzinfo=UTC),
        duration_us=msg.duration.ToMicroseconds(),
        error=Failure(msg.error.code, msg.error.message) if msg.HasField("error") else None,
    )


def status_to_pb(status: str) -> orders_pb2.OrderStatus:
    if not status:
        return orders_pb2.ORDER_STATUS_UNSPECIFIED
    return orders_pb2.OrderStatus.Value(_STATUS_PREFIX + status)  # type: ignore[return-value]


class GrpcOrders:
    def __init__(self, channel: grpc.aio.Channel, settings: GatewaySettings) -> None:
        self.stub = orders_pb2_grpc.OrderServiceStub(channel)
        self.call = Caller("orders", settings)

    async def events_backlog(self, limit: int) -> EventsBacklog:
        request = orders_pb2.GetEventsBacklogRequest(limit=limit)
        response = await self.call(self.stub.GetEventsBacklog, request, safe=True)
        return backlog_from_pb("orders", response)

    async def create_order(self, new: NewOrder) -> tuple[Order, bool]:
        request = orders_pb2.CreateOrderRequest(
            customer_id=new.customer_id,
            lines=[orders_pb2.OrderLine(sku=x.sku, quantity=x.quantity) for x in new.lines],
            redeem_points=new.redeem_points,
            idempotency_key=new.idempotency_key,
            request_fingerprint=new.fingerprint,
            lease_owner=new.lease_owner,
            lease_seconds=new.lease_seconds,
            driver=driver_to_pb(REQUEST),
        )
        response = await self.call(self.stub.CreateOrder, request, safe=True)
        return order_from_pb(response.order), response.created

    async def get_order(self, order_id: str) -> Order:
        response = await self.call(
            self.stub.GetOrder, orders_pb2.GetOrderRequest(order_id=order_id), order_id, safe=True
        )
        return order_from_pb(response.order)

    async def list_orders(
        self, customer_id: str, status: str, limit: int, cursor: str
    ) -> Page[Order]:
        request = orders_pb2.ListOrdersRequest(
            customer_id=customer_id, status=status_to_pb(status), limit=limit, cursor=cursor
        )
        response = await self.call(self.stub.ListOrders, request, safe=True)
        return Page([order_from_pb(o) for o in response.orders], response.next_cursor or None)

    async def confirm_order(
        self,
        order_id: str,
        owner: str,
        reservation: Reservation,
        subtotal: int,
        discount: Discount,
        *,
        driver: str = REQUEST,
        steps: Sequence[SagaStep] = (),
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
            driver=driver_to_pb(driver),
            steps=[step_to_pb(x) for x in steps],
        )
        return order_from_pb(
            (await self.call(self.stub.ConfirmOrder, request, order_id, safe=True)).order
        )

    async def reject_order(
        self,
        order_id: str,
        owner: str,
        failure: Failure,
        *,
        driver: str = REQUEST,
        steps: Sequence[SagaStep] = (),
    ) -> Order:
        request = orders_pb2.RejectOrderRequest(
            order_id=order_id,
            lease_owner=owner,
            failure=orders_pb2.Failure(code=failure.code, message=failure.message[:500]),
            driver=driver_to_pb(driver),
            steps=[step_to_pb(x) for x in steps],
        )
        return order_from_pb(
            (await self.call(self.stub.RejectOrder, request, order_id, safe=True)).order
        )

    async def request_cancel(
        self,
        order_id: str,
        owner: str,
        seconds: float,
        *,
        driver: str = REQUEST,
        steps: Sequence[SagaStep] = (),
    ) -> Order:
        request = orders_pb2.RequestOrderCancelRequest(
            order_id=order_id,
            lease_owner=owner,
            lease_seconds=seconds,
            driver=driver_to_pb(driver),
            steps=[step_to_pb(x) for x in steps],
        )
        response = await self.call(self.stub.RequestOrderCancel, request, order_id, safe=True)
        return order_from_pb(response.order)

    async def withdraw_cancel(
        self, order_id: str, owner: str, *, driver: str = REQUEST, steps: Sequence[SagaStep] = ()
    ) -> Order:
        request = orders_pb2.WithdrawOrderCancelRequest(
            order_id=order_id,
            lease_owner=owner,
            driver=driver_to_pb(driver),
            steps=[step_to_pb(x) for x in steps],
        )
        response = await self.call(self.stub.WithdrawOrderCancel, request, order_id, safe=True)
        return order_from_pb(response.order)

    async def cancel_order(
        self, order_id: str, owner: str, *, driver: str = REQUEST, steps: Sequence[SagaStep] = ()
    ) -> Order:
        request = orders_pb2.CancelOrderRequest(
            order_id=order_id,
            lease_owner=owner,
            driver=driver_to_pb(driver),
            steps=[step_to_pb(x) for x in steps],
        )
        return order_from_pb(
            (await self.call(self.stub.CancelOrder, request, order_id, safe=True)).order
        )

    async def settle_order(
        self, order_id: str, owner: str, *, driver: str = REQUEST, steps: Sequence[SagaStep] = ()
    ) -> Order:
        request = orders_pb2.SettleOrderRequest(
            order_id=order_id,
            lease_owner=owner,
            driver=driver_to_pb(driver),
            steps=[step_to_pb(x) for x in steps],
        )
        return order_from_pb(
            (await self.call(self.stub.SettleOrder, request, order_id, safe=True)).order
        )

    async def claim_stale(self, owner: str, seconds: float, limit: int) -> list[Order]:
        request = orders_pb2.ClaimStaleOrdersRequest(
            lease_owner=owner, lease_seconds=seconds, limit=limit
        )
        response = await self.call(self.stub.ClaimStaleOrders, request, safe=True)
        return [order_from_pb(o) for o in response.orders]

    async def record_steps(self, order_id: str, steps: Sequence[SagaStep]) -> None:
        request = orders_pb2.RecordOrderStepsRequest(
            order_id=order_id, steps=[step_to_pb(x) for x in steps]
        )
        # Safe to repeat: orders records a step once per (order id, step id).
        await self.call(self.stub.RecordOrderSteps, request, order_id, safe=True)

    async def order_history(self, order_id: str) -> History:
        request = orders_pb2.GetOrderHistoryRequest(order_id=order_id)
        response = await self.call(self.stub.GetOrderHistory, request, order_id, safe=True)
        return History(
            order=order_from_pb(response.order),
            steps=tuple(step_from_pb(x) for x in response.steps),
            truncated=response.truncated,
        )

    async def list_unsettled(self, limit: int) -> Unsettled:
        request = orders_pb2.ListUnsettledOrdersRequest(limit=limit)
        response = await self.call(self.stub.ListUnsettledOrders, request, safe=True)
        return Unsettled(
            [order_from_pb(o) for o in response.orders],
            frozenset(response.stuck_order_ids),
            response.truncated,
        )


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

    async def events_backlog(self, limit: int) -> EventsBacklog:
        request = inventory_pb2.GetEventsBacklogRequest(limit=limit)
        response = await self.call(self.stub.GetEventsBacklog, request, safe=True)
        return backlog_from_pb("inventory", response)

    async def reserve(self, order_id: str, lines: Sequence[Line]) -> Reservation:
        request = inventory_pb2.ReserveStockRequest(
            order_id=order_id,
            lines=[inventory_pb2.StockLine(sku=x.sku, quantity=x.quantity) for x in lines],
        )
        response = await self.call(self.stub.ReserveStock, request, order_id, safe=True)
        return Reservation(
            tuple(Line(x.sku, x.quantity, x.unit_price) for x in response.lines),
            response.currency,
        )

    async def release(self, order_id: str) -> None:
        request = inventory_pb2.ReleaseStockRequest(order_id=order_id)
        await self.call(self.stub.ReleaseStock, request, order_id, safe=True)

    async def commit_stock(self, order_id: str) -> None:
        request = inventory_pb2.CommitStockRequest(order_id=order_id)
        await self.call(self.stub.CommitStock, request, order_id, safe=True)

    async def return_stock(self, order_id: str) -> None:
        request = inventory_pb2.ReturnStockRequest(order_id=order_id)
        await self.call(self.stub.ReturnStock, request, order_id, safe=True)

    async def create_item(
        self, sku: str, name: str, price: int, stock: int, idem: Idempotency | None = None
    ) -> Item:
        idem = idem or Idempotency.generated()
        request = inventory_pb2.CreateItemRequest(
            sku=sku,
            name=name,
            price=price,
            stock=stock,
            idempotency_key=idem.key,
            idempotency_scope=idem.scope,
            lease_owner=idem.owner,
        )
        # Keyed: a repeat after a lost reply gives the first result (ADR 0023).
        return item_from_pb((await self.call(self.stub.CreateItem, request, safe=True)).item)

    async def get_item(self, sku: str) -> Item:
        request = inventory_pb2.GetItemRequest(sku=sku)
        return item_from_pb((await self.call(self.stub.GetItem, request, safe=True)).item)

    async def list_items(self, limit: int, cursor: str) -> Page[Item]:
        request = inventory_pb2.ListItemsRequest(limit=limit, cursor=cursor)
        response = await self.call(self.stub.ListItems, request, safe=True)
        return Page([item_from_pb(i) for i in response.items], response.next_cursor or None)

    async def list_low_stock(self, limit: int) -> LowStock:
        request = inventory_pb2.ListLowStockItemsRequest(limit=limit)
        response = await self.call(self.stub.ListLowStockItems, request, safe=True)
        return LowStock(
            [item_from_pb(i) for i in response.items], response.threshold, response.truncated
        )

    async def update_item(
        self,
        sku: str,
        name: str | None,
        price: int | None,
        restock: int | None,
        idem: Idempotency | None = None,
    ) -> Item:
        idem = idem or Idempotency.generated()
        request = inventory_pb2.UpdateItemRequest(
            sku=sku,
            name=name,
            price=price,
            restock=restock,
            idempotency_key=idem.key,
            idempotency_scope=idem.scope,
            lease_owner=idem.owner,
        )
        # Keyed: a restock repeated after a lost reply adds nothing more (ADR 0023).
        return item_from_pb((await self.call(self.stub.UpdateItem, request, safe=True)).item)


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

    async def events_backlog(self, limit: int) -> EventsBacklog:
        request = loyalty_pb2.GetEventsBacklogRequest(limit=limit)
        response = await self.call(self.stub.GetEventsBacklog, request, safe=True)
        return backlog_from_pb("loyalty", response)

    async def apply_discount(
        self, order_id: str, customer_id: str, subtotal: int, redeem_points: int
    ) -> Discount:
        request = loyalty_pb2.ApplyDiscountRequest(
            order_id=order_id,
            customer_id=customer_id,
            subtotal=subtotal,
            redeem_points=redeem_points,
        )
        r = await self.call(self.stub.ApplyDiscount, request, order_id, safe=True)
        return Discount(
            discount=r.discount,
            points_redeemed=r.points_redeemed,
            total=r.total,
            points_earned=r.points_earned,
            discount_percent=r.discount_percent,
            tier=r.tier,
        )

    async def void_discount(self, order_id: str) -> None:
        request = loyalty_pb2.CancelDiscountRequest(order_id=order_id)
        await self.call(self.stub.CancelDiscount, request, order_id, safe=True)

    async def commit_discount(self, order_id: str) -> None:
        request = loyalty_pb2.CommitDiscountRequest(order_id=order_id)
        await self.call(self.stub.CommitDiscount, request, order_id, safe=True)

    async def refund_discount(self, order_id: str) -> None:
        request = loyalty_pb2.RefundDiscountRequest(order_id=order_id)
        await self.call(self.stub.RefundDiscount, request, order_id, safe=True)

    async def get_account(self, customer_id: str) -> Account:
        request = loyalty_pb2.GetAccountRequest(customer_id=customer_id)
        return account_from_pb((await self.call(self.stub.GetAccount, request, safe=True)).account)

    async def list_entries(self, customer_id: str, limit: int, cursor: str) -> Page[PointsEntry]:
        request = loyalty_pb2.ListPointsEntriesRequest(
            customer_id=customer_id, limit=limit, cursor=cursor
        )
        response = await self.call(self.stub.ListPointsEntries, request, safe=True)
        entries = [
            PointsEntry(x.kind, x.delta, x.reason, x.order_id, _dt(x.created_at))
            for x in response.entries
        ]
        return Page(entries, response.next_cursor or None)

    async def set_tier(
        self, customer_id: str, tier: str, idem: Idempotency | None = None
    ) -> Account:
        idem = idem or Idempotency.generated()
        request = loyalty_pb2.SetTierRequest(
            customer_id=customer_id,
            tier=tier,
            idempotency_key=idem.key,
            idempotency_scope=idem.scope,
            lease_owner=idem.owner,
        )
        # Keyed (ADR 0023), so safe to repeat.
        return account_from_pb((await self.call(self.stub.SetTier, request, safe=True)).account)

    async def adjust_points(
        self, customer_id: str, delta: int, reason: str, idem: Idempotency | None = None
    ) -> Account:
        idem = idem or Idempotency.generated()
        request = loyalty_pb2.AdjustPointsRequest(
            customer_id=customer_id,
            delta=delta,
            reason=reason,
            idempotency_key=idem.key,
            idempotency_scope=idem.scope,
            lease_owner=idem.owner,
        )
        # Keyed: repeated after a lost reply, it books nothing more (ADR 0023).
        response = await self.call(self.stub.AdjustPoints, request, safe=True)
        return account_from_pb(response.account)
