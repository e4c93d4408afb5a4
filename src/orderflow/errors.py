"""The one tree of domain errors shared by every orderflow service (no framework imports).

    OrderflowError                    INTERNAL          a failure nobody named (a bug)
    ├── InvalidArgumentError          INVALID_ARGUMENT  malformed or out-of-range input
    │   ├── UnknownSkuError           UNKNOWN_SKU       an order line names no catalog item
    │   └── RequestInvalidError       VALIDATION_ERROR  a public API request broke a rule
    ├── NotFoundError                 NOT_FOUND         the thing asked for does not exist
    ├── AlreadyExistsError            ALREADY_EXISTS    a create collided with an existing key
    │   └── IdempotencyKeyReusedError IDEMPOTENCY_KEY_REUSED  same key, different request
    ├── BusinessRuleError             FAILED_PRECONDITION  (base) valid, but refused
    │   ├── OutOfStockError           OUT_OF_STOCK
    │   ├── InsufficientPointsError   INSUFFICIENT_POINTS
    │   ├── NegativeBalanceError      NEGATIVE_BALANCE  an adjustment would go below zero
    │   ├── NotCancellableError       NOT_CANCELLABLE
    │   └── InvalidStateError         INVALID_STATE     a transition not allowed from here
    ├── ConflictError                 CONFLICT          (base) a retry may succeed, or never will
    │   ├── CompensatedError          ALREADY_COMPENSATED  the step was undone (tombstone)
    │   ├── LeaseHeldError            LEASE_HELD        another driver holds the order's lease
    │   ├── ConcurrentChangeError     CONCURRENT_CHANGE  the record changed between read and write
    │   └── RequestInProgressError    REQUEST_IN_PROGRESS  the same idempotent request is running
    ├── DependencyError               DEPENDENCY_FAILED  (base) a needed service did not answer well
    │   ├── ServiceUnavailableError   SERVICE_UNAVAILABLE  no answer in time: it may have acted
    │   └── UpstreamError             UPSTREAM_ERROR    it answered with an unexpected failure
    └── AccessError                   ACCESS_DENIED     (base) the caller may not do this (gateway)
        ├── UnauthenticatedError      UNAUTHENTICATED   no valid bearer token
        ├── ForbiddenError            FORBIDDEN         the token's scope does not allow it
        └── RateLimitedError          RATE_LIMITED      too many requests; retry after a while

A (base) class is raised only through a subclass; it still has a code, a gRPC status and
an HTTP status, so an error from a newer peer is never a bare 500. The gRPC layer maps
the classes to status codes in one table (orderflow.platform.grpc_errors); the gateway
maps codes to HTTP statuses in one table of its own (orderflow.gateway.errors).
"""

from __future__ import annotations

from typing import Any


class OrderflowError(Exception):
    """Base of every error orderflow raises on purpose."""

    code = "INTERNAL"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidArgumentError(OrderflowError):
    code = "INVALID_ARGUMENT"


class UnknownSkuError(InvalidArgumentError):
    code = "UNKNOWN_SKU"


class RequestInvalidError(InvalidArgumentError):
    """Raised by the gateway's application layer, for REST and gRPC alike."""

    code = "VALIDATION_ERROR"


class NotFoundError(OrderflowError):
    code = "NOT_FOUND"


class AlreadyExistsError(OrderflowError):
    code = "ALREADY_EXISTS"


class IdempotencyKeyReusedError(AlreadyExistsError):
    code = "IDEMPOTENCY_KEY_REUSED"


class BusinessRuleError(OrderflowError):
    code = "FAILED_PRECONDITION"


class OutOfStockError(BusinessRuleError):
    code = "OUT_OF_STOCK"


class InsufficientPointsError(BusinessRuleError):
    code = "INSUFFICIENT_POINTS"


class NegativeBalanceError(BusinessRuleError):
    code = "NEGATIVE_BALANCE"


class NotCancellableError(BusinessRuleError):
    code = "NOT_CANCELLABLE"


class InvalidStateError(BusinessRuleError):
    code = "INVALID_STATE"


class ConflictError(OrderflowError):
    code = "CONFLICT"


class CompensatedError(ConflictError):
    code = "ALREADY_COMPENSATED"


class LeaseHeldError(ConflictError):
    code = "LEASE_HELD"


class ConcurrentChangeError(ConflictError):
    code = "CONCURRENT_CHANGE"


class RequestInProgressError(ConflictError):
    code = "REQUEST_IN_PROGRESS"


class DependencyError(OrderflowError):
    code = "DEPENDENCY_FAILED"


class ServiceUnavailableError(DependencyError):
    code = "SERVICE_UNAVAILABLE"


class UpstreamError(DependencyError):
    code = "UPSTREAM_ERROR"


class AccessError(OrderflowError):
    code = "ACCESS_DENIED"


class UnauthenticatedError(AccessError):
    code = "UNAUTHENTICATED"


class ForbiddenError(AccessError):
    code = "FORBIDDEN"


class RateLimitedError(AccessError):
    code = "RATE_LIMITED"

    def __init__(self, message: str, retry_after_seconds: int, **details: Any) -> None:
        super().__init__(message, retry_after_seconds=retry_after_seconds, **details)
        self.retry_after_seconds = retry_after_seconds


def error_classes() -> list[type[OrderflowError]]:
    """OrderflowError and every subclass of it, parents before children."""
    found: list[type[OrderflowError]] = []
    todo = [OrderflowError]
    while todo:
        cls = todo.pop(0)
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


# Every error by its code, so a client can rebuild the error it was sent. Read from the
# tree itself, so a new subclass is in it at once; tests/unit/test_errors.py checks that
# codes are unique and that each has a gRPC status and an HTTP status.
ERRORS_BY_CODE: dict[str, type[OrderflowError]] = {cls.code: cls for cls in error_classes()}
