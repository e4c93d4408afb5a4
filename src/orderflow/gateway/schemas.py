"""The REST API's request and response bodies (DESIGN.md shapes), strict about what comes in."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

from orderflow.gateway import ports

MAX_MONEY = 10**12
Sku = Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
CustomerId = Annotated[StrictStr, Field(min_length=1, max_length=64)]
Status = Literal["PENDING", "CONFIRMED", "REJECTED", "CANCELLED"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OrderLineIn(_In):
    sku: Sku
    quantity: Annotated[StrictInt, Field(ge=1, le=10_000)]


class PlaceOrderIn(_In):
    customer_id: CustomerId
    items: Annotated[list[OrderLineIn], Field(min_length=1, max_length=100)]
    redeem_points: Annotated[StrictInt, Field(ge=0, le=MAX_MONEY)] = 0

    @model_validator(mode="after")
    def _distinct_skus(self) -> PlaceOrderIn:
        skus = [line.sku for line in self.items]
        duplicates = sorted({s for s in skus if skus.count(s) > 1})
        if duplicates:
            raise ValueError(f"each sku may appear once per order; repeated: {duplicates}")
        return self


class ItemIn(_In):
    sku: Sku
    name: Annotated[StrictStr, Field(min_length=1, max_length=200)]
    price: Annotated[StrictInt, Field(ge=0, le=MAX_MONEY)]
    stock: Annotated[StrictInt, Field(ge=0, le=10**9)]


class ItemPatchIn(_In):
    name: Annotated[StrictStr, Field(min_length=1, max_length=200)] | None = None
    price: Annotated[StrictInt, Field(ge=0, le=MAX_MONEY)] | None = None
    restock: Annotated[StrictInt, Field(ge=1, le=10**9)] | None = None

    @model_validator(mode="after")
    def _something(self) -> ItemPatchIn:
        if self.name is None and self.price is None and self.restock is None:
            raise ValueError("give at least one of name, price, restock")
        return self


class TierIn(_In):
    # One of the configured tiers (ORDERFLOW_LOYALTY_TIERS); these are the default ones.
    tier: Annotated[
        StrictStr, Field(min_length=1, max_length=32, examples=["standard", "silver", "gold"])
    ]


class PointsIn(_In):
    delta: Annotated[StrictInt, Field(ge=-MAX_MONEY, le=MAX_MONEY)]
    reason: Annotated[StrictStr, Field(min_length=1, max_length=200)]

    @model_validator(mode="after")
    def _nonzero(self) -> PointsIn:
        if self.delta == 0:
            raise ValueError("delta must not be 0")
        return self


class OrderLineOut(BaseModel):
    sku: str
    quantity: int
    unit_price: int


class FailureOut(BaseModel):
    code: str
    message: str


class OrderOut(BaseModel):
    id: str
    customer_id: str
    status: Status
    items: list[OrderLineOut]
    currency: str
    subtotal: int
    discount: int
    points_redeemed: int
    total: int
    points_earned: int
    failure: FailureOut | None
    created_at: datetime | None
    updated_at: datetime | None

    @classmethod
    def of(cls, order: ports.Order, currency: str) -> OrderOut:
        return cls(
            id=order.id,
            customer_id=order.customer_id,
            status=order.status,
            items=[
                OrderLineOut(sku=x.sku, quantity=x.quantity, unit_price=x.unit_price)
                for x in order.lines
            ],
            currency=order.currency or currency,
            subtotal=order.subtotal,
            discount=order.discount,
            points_redeemed=order.points_redeemed,
            total=order.total,
            points_earned=order.points_earned,
            failure=FailureOut(code=order.failure.code, message=order.failure.message)
            if order.failure
            else None,
            created_at=order.created_at,
            updated_at=order.updated_at,
        )


class OrderListOut(BaseModel):
    orders: list[OrderOut]
    next_cursor: str | None


class StepOut(BaseModel):
    """One step of an order's saga, as it ran."""

    step: Annotated[
        str,
        Field(
            description="create, reserve, apply_discount, confirm, reject, release, "
            "void_discount, commit_stock, commit_discount, settle, claim, request_cancel, "
            "refund_discount, return_stock, cancel, withdraw_cancel",
            examples=["reserve"],
        ),
    ]
    outcome: Annotated[
        Literal["ok", "failed", "unknown"],
        Field(description="failed: refused, it did nothing; unknown: no answer, it may have acted"),
    ]
    started_at: datetime
    duration_ms: Annotated[int, Field(ge=0)]
    driver: Annotated[
        Literal["request", "recovery", "event"],
        Field(
            description="request: a gateway answering the client; recovery: a gateway's "
            "recovery worker; event: the orders service consuming a follow-up's event"
        ),
    ]
    error: Annotated[
        FailureOut | None, Field(description="why it failed; for reject, the order's reason")
    ]

    @classmethod
    def of(cls, step: ports.SagaStep) -> StepOut:
        return cls(
            step=step.name,
            outcome=step.outcome,
            started_at=step.started_at,
            duration_ms=step.duration_us // 1000,
            driver=step.driver,
            error=FailureOut(code=step.error.code, message=step.error.message)
            if step.error
            else None,
        )


class OrderHistoryOut(BaseModel):
    """An order's saga step by step, oldest first."""

    order_id: str
    status: Status
    settled: Annotated[bool, Field(description="false while the saga still has steps to run")]
    steps: list[StepOut]
    truncated: Annotated[bool, Field(description="true when only the newest 500 steps are listed")]

    @classmethod
    def of(cls, history: ports.History) -> OrderHistoryOut:
        return cls(
            order_id=history.order.id,
            status=history.order.status,
            settled=history.order.settled,
            steps=[StepOut.of(x) for x in history.steps],
            truncated=history.truncated,
        )


class ItemOut(BaseModel):
    sku: str
    name: str
    price: int
    currency: str
    available: int
    reserved: int
    sold: int

    @classmethod
    def of(cls, item: ports.Item) -> ItemOut:
        return cls(
            sku=item.sku,
            name=item.name,
            price=item.price,
            currency=item.currency,
            available=item.available,
            reserved=item.reserved,
            sold=item.sold,
        )


class ItemListOut(BaseModel):
    items: list[ItemOut]
    next_cursor: str | None


class AccountOut(BaseModel):
    customer_id: str
    tier: str
    discount_percent: int
    points: int

    @classmethod
    def of(cls, account: ports.Account) -> AccountOut:
        return cls(
            customer_id=account.customer_id,
            tier=account.tier,
            discount_percent=account.discount_percent,
            points=account.points,
        )


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorOut(BaseModel):
    error: ErrorBody
