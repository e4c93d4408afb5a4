import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ApplicationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    APPLICATION_STATE_UNSPECIFIED: _ClassVar[ApplicationState]
    APPLICATION_STATE_APPLIED: _ClassVar[ApplicationState]
    APPLICATION_STATE_CANCELLED: _ClassVar[ApplicationState]
    APPLICATION_STATE_COMMITTED: _ClassVar[ApplicationState]
    APPLICATION_STATE_REFUNDED: _ClassVar[ApplicationState]
APPLICATION_STATE_UNSPECIFIED: ApplicationState
APPLICATION_STATE_APPLIED: ApplicationState
APPLICATION_STATE_CANCELLED: ApplicationState
APPLICATION_STATE_COMMITTED: ApplicationState
APPLICATION_STATE_REFUNDED: ApplicationState

class Account(_message.Message):
    __slots__ = ("customer_id", "tier", "discount_percent", "points")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    DISCOUNT_PERCENT_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    tier: str
    discount_percent: int
    points: int
    def __init__(self, customer_id: _Optional[str] = ..., tier: _Optional[str] = ..., discount_percent: _Optional[int] = ..., points: _Optional[int] = ...) -> None: ...

class GetAccountRequest(_message.Message):
    __slots__ = ("customer_id",)
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    def __init__(self, customer_id: _Optional[str] = ...) -> None: ...

class GetAccountResponse(_message.Message):
    __slots__ = ("account",)
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    account: Account
    def __init__(self, account: _Optional[_Union[Account, _Mapping]] = ...) -> None: ...

class SetTierRequest(_message.Message):
    __slots__ = ("customer_id", "tier", "idempotency_key", "idempotency_scope", "lease_owner")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_SCOPE_FIELD_NUMBER: _ClassVar[int]
    LEASE_OWNER_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    tier: str
    idempotency_key: str
    idempotency_scope: str
    lease_owner: str
    def __init__(self, customer_id: _Optional[str] = ..., tier: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., idempotency_scope: _Optional[str] = ..., lease_owner: _Optional[str] = ...) -> None: ...

class SetTierResponse(_message.Message):
    __slots__ = ("account",)
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    account: Account
    def __init__(self, account: _Optional[_Union[Account, _Mapping]] = ...) -> None: ...

class AdjustPointsRequest(_message.Message):
    __slots__ = ("customer_id", "delta", "reason", "idempotency_key", "idempotency_scope", "lease_owner")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_SCOPE_FIELD_NUMBER: _ClassVar[int]
    LEASE_OWNER_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    delta: int
    reason: str
    idempotency_key: str
    idempotency_scope: str
    lease_owner: str
    def __init__(self, customer_id: _Optional[str] = ..., delta: _Optional[int] = ..., reason: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., idempotency_scope: _Optional[str] = ..., lease_owner: _Optional[str] = ...) -> None: ...

class AdjustPointsResponse(_message.Message):
    __slots__ = ("account",)
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    account: Account
    def __init__(self, account: _Optional[_Union[Account, _Mapping]] = ...) -> None: ...

class ApplyDiscountRequest(_message.Message):
    __slots__ = ("order_id", "customer_id", "subtotal", "redeem_points")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    SUBTOTAL_FIELD_NUMBER: _ClassVar[int]
    REDEEM_POINTS_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    customer_id: str
    subtotal: int
    redeem_points: int
    def __init__(self, order_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., subtotal: _Optional[int] = ..., redeem_points: _Optional[int] = ...) -> None: ...

class ApplyDiscountResponse(_message.Message):
    __slots__ = ("tier", "discount_percent", "discount", "points_redeemed", "total", "points_earned", "state")
    TIER_FIELD_NUMBER: _ClassVar[int]
    DISCOUNT_PERCENT_FIELD_NUMBER: _ClassVar[int]
    DISCOUNT_FIELD_NUMBER: _ClassVar[int]
    POINTS_REDEEMED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    POINTS_EARNED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    tier: str
    discount_percent: int
    discount: int
    points_redeemed: int
    total: int
    points_earned: int
    state: ApplicationState
    def __init__(self, tier: _Optional[str] = ..., discount_percent: _Optional[int] = ..., discount: _Optional[int] = ..., points_redeemed: _Optional[int] = ..., total: _Optional[int] = ..., points_earned: _Optional[int] = ..., state: _Optional[_Union[ApplicationState, str]] = ...) -> None: ...

class CancelDiscountRequest(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class CancelDiscountResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: ApplicationState
    def __init__(self, state: _Optional[_Union[ApplicationState, str]] = ...) -> None: ...

class CommitDiscountRequest(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class CommitDiscountResponse(_message.Message):
    __slots__ = ("state", "points_earned")
    STATE_FIELD_NUMBER: _ClassVar[int]
    POINTS_EARNED_FIELD_NUMBER: _ClassVar[int]
    state: ApplicationState
    points_earned: int
    def __init__(self, state: _Optional[_Union[ApplicationState, str]] = ..., points_earned: _Optional[int] = ...) -> None: ...

class RefundDiscountRequest(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class RefundDiscountResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: ApplicationState
    def __init__(self, state: _Optional[_Union[ApplicationState, str]] = ...) -> None: ...

class PointsEntry(_message.Message):
    __slots__ = ("kind", "delta", "reason", "order_id", "created_at")
    KIND_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    kind: str
    delta: int
    reason: str
    order_id: str
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, kind: _Optional[str] = ..., delta: _Optional[int] = ..., reason: _Optional[str] = ..., order_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListPointsEntriesRequest(_message.Message):
    __slots__ = ("customer_id", "limit", "cursor")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    limit: int
    cursor: str
    def __init__(self, customer_id: _Optional[str] = ..., limit: _Optional[int] = ..., cursor: _Optional[str] = ...) -> None: ...

class ListPointsEntriesResponse(_message.Message):
    __slots__ = ("entries", "next_cursor")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_CURSOR_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[PointsEntry]
    next_cursor: str
    def __init__(self, entries: _Optional[_Iterable[_Union[PointsEntry, _Mapping]]] = ..., next_cursor: _Optional[str] = ...) -> None: ...

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
