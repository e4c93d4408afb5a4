"""The one table mapping domain errors to gRPC status codes, and how the code travels.

A service aborts a call with the mapped status code and puts the error's own code
(e.g. OUT_OF_STOCK) and details in trailing metadata, so a client can tell apart
business failures that share a status code.
"""

from __future__ import annotations

import grpc

from orderflow.errors import (
    AccessError,
    AlreadyExistsError,
    BusinessRuleError,
    ConflictError,
    DependencyError,
    InvalidArgumentError,
    NotFoundError,
    OrderflowError,
    RateLimitedError,
    UnauthenticatedError,
)

ERROR_CODE_KEY = "orderflow-error-code"
ERROR_DETAILS_KEY = "orderflow-error-details"

# Checked in order: the first class the error is an instance of wins, so each family's
# base covers its subclasses (a subclass needs a line only if its status differs).
STATUS_BY_ERROR: tuple[tuple[type[OrderflowError], grpc.StatusCode], ...] = (
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (RateLimitedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (BusinessRuleError, grpc.StatusCode.FAILED_PRECONDITION),
    (ConflictError, grpc.StatusCode.ABORTED),
    (DependencyError, grpc.StatusCode.UNAVAILABLE),
    (AccessError, grpc.StatusCode.PERMISSION_DENIED),
    (OrderflowError, grpc.StatusCode.INTERNAL),
)


def status_for(error: OrderflowError) -> grpc.StatusCode:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(error, cls):
            return status
    return grpc.StatusCode.INTERNAL
