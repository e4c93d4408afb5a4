import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OrderStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORDER_STATUS_UNSPECIFIED: _ClassVar[OrderStatus]
    ORDER_STATUS_PENDING: _ClassVar[OrderStatus]
    ORDER_STATUS_CONFIRMED: _ClassVar[OrderStatus]
    ORDER_STATUS_REJECTED: _ClassVar[OrderStatus]
    ORDER_STATUS_CANCELLED: _ClassVar[OrderStatus]

class StepDriver(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STEP_DRIVER_UNSPECIFIED: _ClassVar[StepDriver]
    STEP_DRIVER_REQUEST: _ClassVar[StepDriver]
    STEP_DRIVER_RECOVERY: _ClassVar[StepDriver]
    STEP_DRIVER_EVENT: _ClassVar[StepDriver]

class StepOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STEP_OUTCOME_UNSPECIFIED: _ClassVar[StepOutcome]
    STEP_OUTCOME_OK: _ClassVar[StepOutcome]
    STEP_OUTCOME_FAILED: _ClassVar[StepOutcome]
    STEP_OUTCOME_UNKNOWN: _ClassVar[StepOutcome]
ORDER_STATUS_UNSPECIFIED: OrderStatus
ORDER_STATUS_PENDING: OrderStatus
ORDER_STATUS_CONFIRMED: OrderStatus
ORDER_STATUS_REJECTED: OrderStatus
ORDER_STATUS_CANCELLED: OrderStatus
STEP_DRIVER_UNSPECIFIED: StepDriver
STEP_DRIVER_REQUEST: StepDriver
STEP_DRIVER_RECOVERY: StepDriver
STEP_DRIVER_EVENT: StepDriver
STEP_OUTCOME_UNSPECIFIED: StepOutcome
STEP_OUTCOME_OK: StepOutcome
STEP_OUTCOME_FAILED: StepOutcome
STEP_OUTCOME_UNKNOWN: StepOutcome

class SagaStep(_message.Message):
    __slots__ = ("step_id", "name", "outcome", "driver", "started_at", "duration", "error")
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    step_id: str
    name: str
    outcome: StepOutcome
    driver: StepDriver
    started_at: _timestamp_pb2.Timestamp
    duration: _duration_pb2.Duration
    error: Failure
    def __init__(self, step_id: _Optional[str] = ..., name: _Optional[str] = ..., outcome: _Optional[_Union[StepOutcome, str]] = ..., driver: _Optional[_Union[StepDriver, str]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., error: _Optional[_Union[Failure, _Mapping]] = ...) -> None: ...

class OrderLine(_message.Message):
    __slots__ = ("sku", "quantity", "unit_price")
    SKU_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    sku: str
    quantity: int
    unit_price: int
    def __init__(self, sku: _Optional[str] = ..., quantity: _Optional[int] = ..., unit_price: _Optional[int] = ...) -> None: ...

class Failure(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Order(_message.Message):
    __slots__ = ("id", "customer_id", "status", "lines", "currency", "subtotal", "discount", "redeem_points", "points_redeemed", "total", "points_earned", "failure", "created_at", "updated_at", "idempotency_key", "settled", "cancel_requested", "lease_owner", "lease_expires_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    SUBTOTAL_FIELD_NUMBER: _ClassVar[int]
    DISCOUNT_FIELD_NUMBER: _ClassVar[int]
    REDEEM_POINTS_FIELD_NUMBER: _ClassVar[int]
    POINTS_REDEEMED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    POINTS_EARNED_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    SETTLED_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    LEASE_OWNER_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    customer_id: str
    status: OrderStatus
    lines: _containers.RepeatedCompositeFieldContainer[OrderLine]
    currency: str
    subtotal: int
    discount: int
    redeem_points: int
    points_redeemed: int
    total: int
    points_earned: int
    failure: Failure
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    idempotency_key: str
    settled: bool
    cancel_requested: bool
    lease_owner: str
    lease_expires_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., customer_id: _Optional[str] = ..., status: _Optional[_Union[OrderStatus, str]] = ..., lines: _Optional[_Iterable[_Union[OrderLine, _Mapping]]] = ..., currency: _Optional[str] = ..., subtotal: _Optional[int] = ..., discount: _Optional[int] = ..., redeem_points: _Optional[int] = ..., points_redeemed: _Optional[int] = ..., total: _Optional[int] = ..., points_earned: _Optional[int] = ..., failure: _Optional[_Union[Failure, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., settled: _Optional[bool] = ..., cancel_requested: _Optional[bool] = ..., lease_owner: _Optional[str] = ..., lease_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateOrderRequest(_message.Message):
    __slots__ = ("customer_id", "lines", "redeem_points", "idempotency_key", "request_fingerprint", "lease_owner", "lease_seconds", "driver")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    REDEEM_POINTS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    LEASE_OWNER_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    lines: _containers.RepeatedCompositeFieldContainer[OrderLine]
    redeem_points: int
    idempotency_key: str
    request_fingerprint: str
    lease_owner: str
    lease_seconds: float
    driver: StepDriver
    def __init__(self, customer_id: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[OrderLine, _Mapping]]] = ..., redeem_points: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., request_fingerprint: _Optional[str] = ..., lease_owner: _Optional[str] = ..., lease_seconds: _Optional[float] = ..., driver: _Optional[_Union[StepDriver, str]] = ...) -> None: ...

class CreateOrderResponse(_message.Message):
    __slots__ = ("order", "created")
    ORDER_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    order: Order
    created: bool
    def __init__(self, order: _Optional[_Union[Order, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetOrderRequest(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class GetOrderResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: Order
    def __init__(self, order: _Optional[_Union[Order, _Mapping]] = ...) -> None: ...

class ListOrdersRequest(_message.Message):
    __slots__ = ("customer_id", "status", "limit", "cursor")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    status: OrderStatus
    limit: int
    cursor: str
    def __init__(self, customer_id: _Optional[str] = ..., status: _Optional[_Union[OrderStatus, str]] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class ListOrdersResponse(_message.Message):
    __slots__ = ("orders", "next_cursor")
    ORDERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    orders: _containers.RepeatedCompositeFieldContainer[Order]
    next_cursor: str
    def __init__(self, orders: _Optional[_Iterable[_Union[Order, _Mapping]]] = ..., next_cursor: _Optional[str] = ...) -> None: ...

class AcquireOrderLeaseRequest(_message.Message):
    __slots__ = ("order_id", "lease_owner", "lease_seconds", "driver")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_OWNER_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    lease_owner: str
    lease_seconds: float
    driver: StepDriver
    def __init__(self, order_id: _Optional[str] = ..., lease_owner: _Optional[str] = ..., lease_seconds: _Optional[float] = ..., driver: _Optional[_Union[StepDriver, str]] = ...) -> None: ...

class AcquireOrderLeaseResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: Order
    def __init__(self, order: _Optional[_Union[Order, _Mapping]] = ...) -> None: ...

class ConfirmOrderRequest(_message.Message):
    __slots__ = ("order_id", "lease_owner", "lines", "currency", "subtotal", "discount", "points_redeemed", "total", "points_earned", "driver", "steps")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_OWNER_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    SUBTOTAL_FIELD_NUMBER: _ClassVar[int]
    DISCOUNT_FIELD_NUMBER: _ClassVar[int]
    POINTS_REDEEMED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    POINTS_EARNED_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    lease_owner: str
    lines: _containers.RepeatedCompositeFieldContainer[OrderLine]
    currency: str
    subtotal: int
    discount: int
    points_redeemed: int
    total: int
    points_earned: int
    driver: StepDriver
    steps: _containers.RepeatedCompositeFieldContainer[SagaStep]
    def __init__(self, order_id: _Optional[str] = ..., lease_owner: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[OrderLine, _Mapping]]] = ..., currency: _Optional[str] = ..., subtotal: _Optional[int] = ..., discount: _Optional[int] = ..., points_redeemed: _Optional[int] = ..., total: _Optional[int] = ..., points_earned: _Optional[int] = ..., driver: _Optional[_Union[StepDriver, str]] = ..., steps: _Optional[_Iterable[_Union[SagaStep, _Mapping]]] = ...) -> None: ...

class ConfirmOrderResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: Order
    def __init__(self, order: _Optional[_Union[Order, _Mapping]] = ...) -> None: ...

class RejectOrderRequest(_message.Message):
    __slots__ = ("order_id", "lease_owner", "failure", "driver", "steps")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_OWNER_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    lease_owner: str
    failure: Failure
    driver: StepDriver
    steps: _containers.RepeatedCompositeFieldContainer[SagaStep]
    def __init__(self, order_id: _Optional[str] = ..., lease_owner: _Optional[str] = ..., failure: _Optional[_Union[Failure, _Mapping]] = ..., driver: _Optional[_Union[StepDriver, str]] = ..., steps: _Optional[_Iterable[_Union[SagaStep, _Mapping]]] = ...) -> None: ...

class RejectOrderResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: Order
    def __init__(self, order: _Optional[_Union[Order, _Mapping]] = ...) -> None: ...

class RequestOrderCancelRequest(_message.Message):
    __slots__ = ("order_id", "lease_owner", "lease_seconds", "driver", "steps")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_OWNER_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    lease_owner: str
    lease_seconds: float
    driver: StepDriver
    steps: _containers.RepeatedCompositeFieldContainer[SagaStep]
    def __init__(self, order_id: _Optional[str] = ..., lease_owner: _Optional[str] = ..., lease_seconds: _Optional[float] = ..., driver: _Optional[_Union[StepDriver, str]] = ..., steps: _Optional[_Iterable[_Union[SagaStep, _Mapping]]] = ...) -> None: ...

class RequestOrderCancelResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: Order
    def __init__(self, order: _Optional[_Union[Order, _Mapping]] = ...) -> None: ...

class WithdrawOrderCancelRequest(_message.Message):
    __slots__ = ("order_id", "lease_owner", "driver", "steps")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_OWNER_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    lease_owner: str
    driver: StepDriver
    steps: _containers.RepeatedCompositeFieldContainer[SagaStep]
    def __init__(self, order_id: _Optional[str] = ..., lease_owner: _Optional[str] = ..., driver: _Optional[_Union[StepDriver, str]] = ..., steps: _Optional[_Iterable[_Union[SagaStep, _Mapping]]] = ...) -> None: ...

class WithdrawOrderCancelResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: Order
    def __init__(self, order: _Optional[_Union[Order, _Mapping]] = ...) -> None: ...

class CancelOrderRequest(_message.Message):
    __slots__ = ("order_id", "lease_owner", "driver", "steps")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_OWNER_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    lease_owner: str
    driver: StepDriver
    steps: _containers.RepeatedCompositeFieldContainer[SagaStep]
    def __init__(self, order_id: _Optional[str] = ..., lease_owner: _Optional[str] = ..., driver: _Optional[_Union[StepDriver, str]] = ..., steps: _Optional[_Iterable[_Union[SagaStep, _Mapping]]] = ...) -> None: ...

class CancelOrderResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: Order
    def __init__(self, order: _Optional[_Union[Order, _Mapping]] = ...) -> None: ...

class SettleOrderRequest(_message.Message):
    __slots__ = ("order_id", "lease_owner", "driver", "steps")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_OWNER_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    lease_owner: str
    driver: StepDriver
    steps: _containers.RepeatedCompositeFieldContainer[SagaStep]
    def __init__(self, order_id: _Optional[str] = ..., lease_owner: _Optional[str] = ..., driver: _Optional[_Union[StepDriver, str]] = ..., steps: _Optional[_Iterable[_Union[SagaStep, _Mapping]]] = ...) -> None: ...

class SettleOrderResponse(_message.Message):
    __slots__ = ("order",)
    ORDER_FIELD_NUMBER: _ClassVar[int]
    order: Order
    def __init__(self, order: _Optional[_Union[Order, _Mapping]] = ...) -> None: ...

class ClaimStaleOrdersRequest(_message.Message):
    __slots__ = ("lease_owner", "lease_seconds", "limit")
    LEASE_OWNER_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    lease_owner: str
    lease_seconds: float
    limit: int
    def __init__(self, lease_owner: _Optional[str] = ..., lease_seconds: _Optional[float] = ..., limit: _Optional[int] = ...) -> None: ...

class ClaimStaleOrdersResponse(_message.Message):
    __slots__ = ("orders",)
    ORDERS_FIELD_NUMBER: _ClassVar[int]
    orders: _containers.RepeatedCompositeFieldContainer[Order]
    def __init__(self, orders: _Optional[_Iterable[_Union[Order, _Mapping]]] = ...) -> None: ...

class RecordOrderStepsRequest(_message.Message):
    __slots__ = ("order_id", "steps")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    steps: _containers.RepeatedCompositeFieldContainer[SagaStep]
    def __init__(self, order_id: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[SagaStep, _Mapping]]] = ...) -> None: ...

class RecordOrderStepsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetOrderHistoryRequest(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class GetOrderHistoryResponse(_message.Message):
    __slots__ = ("order", "steps", "truncated")
    ORDER_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    order: Order
    steps: _containers.RepeatedCompositeFieldContainer[SagaStep]
    truncated: bool
    def __init__(self, order: _Optional[_Union[Order, _Mapping]] = ..., steps: _Optional[_Iterable[_Union[SagaStep, _Mapping]]] = ..., truncated: _Optional[bool] = ...) -> None: ...

class ListUnsettledOrdersRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListUnsettledOrdersResponse(_message.Message):
    __slots__ = ("orders", "truncated", "stuck_order_ids")
    ORDERS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    STUCK_ORDER_IDS_FIELD_NUMBER: _ClassVar[int]
    orders: _containers.RepeatedCompositeFieldContainer[Order]
    truncated: bool
    stuck_order_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, orders: _Optional[_Iterable[_Union[Order, _Mapping]]] = ..., truncated: _Optional[bool] = ..., stuck_order_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ParkedEvent(_message.Message):
    __slots__ = ("consumer", "event_id", "event_type", "subject", "attempts", "last_error", "parked_at", "redrive_requested", "aggregate")
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    PARKED_AT_FIELD_NUMBER: _ClassVar[int]
    REDRIVE_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    consumer: str
    event_id: str
    event_type: str
    subject: str
    attempts: int
    last_error: str
    parked_at: _timestamp_pb2.Timestamp
    redrive_requested: bool
    aggregate: str
    def __init__(self, consumer: _Optional[str] = ..., event_id: _Optional[str] = ..., event_type: _Optional[str] = ..., subject: _Optional[str] = ..., attempts: _Optional[int] = ..., last_error: _Optional[str] = ..., parked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., redrive_requested: _Optional[bool] = ..., aggregate: _Optional[str] = ...) -> None: ...

class GetEventsBacklogRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class GetEventsBacklogResponse(_message.Message):
    __slots__ = ("pending", "oldest_pending_at", "parked", "parked_count")
    PENDING_FIELD_NUMBER: _ClassVar[int]
    OLDEST_PENDING_AT_FIELD_NUMBER: _ClassVar[int]
    PARKED_FIELD_NUMBER: _ClassVar[int]
    PARKED_COUNT_FIELD_NUMBER: _ClassVar[int]
    pending: int
    oldest_pending_at: _timestamp_pb2.Timestamp
    parked: _containers.RepeatedCompositeFieldContainer[ParkedEvent]
    parked_count: int
    def __init__(self, pending: _Optional[int] = ..., oldest_pending_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., parked: _Optional[_Iterable[_Union[ParkedEvent, _Mapping]]] = ..., parked_count: _Optional[int] = ...) -> None: ...
