from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OrderLine(_message.Message):
    __slots__ = ("sku", "quantity", "unit_price")
    SKU_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    sku: str
    quantity: int
    unit_price: int
    def __init__(self, sku: _Optional[str] = ..., quantity: _Optional[int] = ..., unit_price: _Optional[int] = ...) -> None: ...

class StockLine(_message.Message):
    __slots__ = ("sku", "quantity")
    SKU_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    sku: str
    quantity: int
    def __init__(self, sku: _Optional[str] = ..., quantity: _Optional[int] = ...) -> None: ...

class OrderConfirmed(_message.Message):
    __slots__ = ("order_id", "customer_id", "lines", "currency", "subtotal", "discount", "points_redeemed", "total", "points_earned")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    SUBTOTAL_FIELD_NUMBER: _ClassVar[int]
    DISCOUNT_FIELD_NUMBER: _ClassVar[int]
    POINTS_REDEEMED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    POINTS_EARNED_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    customer_id: str
    lines: _containers.RepeatedCompositeFieldContainer[OrderLine]
    currency: str
    subtotal: int
    discount: int
    points_redeemed: int
    total: int
    points_earned: int
    def __init__(self, order_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[OrderLine, _Mapping]]] = ..., currency: _Optional[str] = ..., subtotal: _Optional[int] = ..., discount: _Optional[int] = ..., points_redeemed: _Optional[int] = ..., total: _Optional[int] = ..., points_earned: _Optional[int] = ...) -> None: ...

class OrderRejected(_message.Message):
    __slots__ = ("order_id", "customer_id", "failure_code", "failure_message")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    FAILURE_CODE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    customer_id: str
    failure_code: str
    failure_message: str
    def __init__(self, order_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., failure_code: _Optional[str] = ..., failure_message: _Optional[str] = ...) -> None: ...

class OrderCancelRequested(_message.Message):
    __slots__ = ("order_id", "customer_id")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    customer_id: str
    def __init__(self, order_id: _Optional[str] = ..., customer_id: _Optional[str] = ...) -> None: ...

class OrderCancelled(_message.Message):
    __slots__ = ("order_id", "customer_id", "lines", "currency", "total", "points_redeemed", "points_earned")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    POINTS_REDEEMED_FIELD_NUMBER: _ClassVar[int]
    POINTS_EARNED_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    customer_id: str
    lines: _containers.RepeatedCompositeFieldContainer[OrderLine]
    currency: str
    total: int
    points_redeemed: int
    points_earned: int
    def __init__(self, order_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[OrderLine, _Mapping]]] = ..., currency: _Optional[str] = ..., total: _Optional[int] = ..., points_redeemed: _Optional[int] = ..., points_earned: _Optional[int] = ...) -> None: ...

class OrderSettled(_message.Message):
    __slots__ = ("order_id", "customer_id", "status")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    customer_id: str
    status: str
    def __init__(self, order_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., status: _Optional[str] = ...) -> None: ...

class StockCommitted(_message.Message):
    __slots__ = ("order_id", "lines")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    lines: _containers.RepeatedCompositeFieldContainer[StockLine]
    def __init__(self, order_id: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[StockLine, _Mapping]]] = ...) -> None: ...

class StockReturned(_message.Message):
    __slots__ = ("order_id", "lines")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    lines: _containers.RepeatedCompositeFieldContainer[StockLine]
    def __init__(self, order_id: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[StockLine, _Mapping]]] = ...) -> None: ...

class ItemChanged(_message.Message):
    __slots__ = ("sku", "name", "price", "currency", "available", "reserved", "sold", "created")
    SKU_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    SOLD_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    sku: str
    name: str
    price: int
    currency: str
    available: int
    reserved: int
    sold: int
    created: bool
    def __init__(self, sku: _Optional[str] = ..., name: _Optional[str] = ..., price: _Optional[int] = ..., currency: _Optional[str] = ..., available: _Optional[int] = ..., reserved: _Optional[int] = ..., sold: _Optional[int] = ..., created: _Optional[bool] = ...) -> None: ...

class ItemLowStock(_message.Message):
    __slots__ = ("sku", "available", "threshold")
    SKU_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    sku: str
    available: int
    threshold: int
    def __init__(self, sku: _Optional[str] = ..., available: _Optional[int] = ..., threshold: _Optional[int] = ...) -> None: ...

class LoyaltyCommitted(_message.Message):
    __slots__ = ("order_id", "customer_id", "points_earned", "points_redeemed", "balance")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    POINTS_EARNED_FIELD_NUMBER: _ClassVar[int]
    POINTS_REDEEMED_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    customer_id: str
    points_earned: int
    points_redeemed: int
    balance: int
    def __init__(self, order_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., points_earned: _Optional[int] = ..., points_redeemed: _Optional[int] = ..., balance: _Optional[int] = ...) -> None: ...

class PointsChanged(_message.Message):
    __slots__ = ("customer_id", "delta", "balance", "reason", "order_id")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    delta: int
    balance: int
    reason: str
    order_id: str
    def __init__(self, customer_id: _Optional[str] = ..., delta: _Optional[int] = ..., balance: _Optional[int] = ..., reason: _Optional[str] = ..., order_id: _Optional[str] = ...) -> None: ...

class TierChanged(_message.Message):
    __slots__ = ("customer_id", "tier", "previous_tier", "discount_percent")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_TIER_FIELD_NUMBER: _ClassVar[int]
    DISCOUNT_PERCENT_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    tier: str
    previous_tier: str
    discount_percent: int
    def __init__(self, customer_id: _Optional[str] = ..., tier: _Optional[str] = ..., previous_tier: _Optional[str] = ..., discount_percent: _Optional[int] = ...) -> None: ...
