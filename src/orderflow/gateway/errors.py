"""The one table mapping error codes to HTTP statuses, and the JSON error shape of every reply;
and the one table taking an HTTP status to the public gRPC API's status code (ADR 27).

Every code of orderflow.errors has a line (tests/unit/test_errors.py checks it), and so
do the codes only the HTTP edge gives (VALIDATION_ERROR, MALFORMED_REQUEST, ...). An
unknown code (say, a failure code stored on an order by a newer version) is a 500.
"""

from __future__ import annotations

from typing import Any

import grpc
from fastapi.responses import JSONResponse

from orderflow.errors import OrderflowError, RateLimitedError, UnauthenticatedError

HTTP_STATUS_BY_CODE: dict[str, int] = {
    "INVALID_ARGUMENT": 422,
    "VALIDATION_ERROR": 422,
    "UNKNOWN_SKU": 422,
    "IDEMPOTENCY_KEY_REUSED": 422,
    "MALFORMED_REQUEST": 400,
    "REQUEST_TIMEOUT": 408,
    "URI_TOO_LONG": 414,
    "HEADERS_TOO_LARGE": 431,
    "TOO_MANY_CONNECTIONS": 503,
    "NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "PAYLOAD_TOO_LARGE": 413,
    "UNSUPPORTED_MEDIA_TYPE": 415,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 409,
    "OUT_OF_STOCK": 409,
    "INSUFFICIENT_POINTS": 409,
    "NEGATIVE_BALANCE": 409,
    "NOT_CANCELLABLE": 409,
    "INVALID_STATE": 409,
    "CONFLICT": 409,
    "ALREADY_COMPENSATED": 409,
    "LEASE_HELD": 409,
    "CONCURRENT_CHANGE": 409,
    "REQUEST_IN_PROGRESS": 409,
    "DEPENDENCY_FAILED": 503,
    "SERVICE_UNAVAILABLE": 503,
    "UPSTREAM_ERROR": 502,
    "ACCESS_DENIED": 403,
    "UNAUTHENTICATED": 401,
    "FORBIDDEN": 403,
    "RATE_LIMITED": 429,
    "INTERNAL": 500,
}


def http_status(code: str) -> int:
    return HTTP_STATUS_BY_CODE.get(code, 500)


# The public gRPC API answers an error with the status code matching its HTTP status.
GRPC_STATUS_BY_HTTP_STATUS: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.FAILED_PRECONDITION,  # valid, but refused (out of stock, ...)
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    414: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    431: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
}
# ...except these 409s, where gRPC tells more: a retry of the same call may succeed (a
# request in flight, a lease held, a record changed), or the thing exists already.
GRPC_STATUS_BY_CODE: dict[str, grpc.StatusCode] = {
    "REQUEST_IN_PROGRESS": grpc.StatusCode.ABORTED,
    "LEASE_HELD": grpc.StatusCode.ABORTED,
    "CONCURRENT_CHANGE": grpc.StatusCode.ABORTED,
    "CONFLICT": grpc.StatusCode.ABORTED,
    "ALREADY_COMPENSATED": grpc.StatusCode.ABORTED,
    "ALREADY_EXISTS": grpc.StatusCode.ALREADY_EXISTS,
}


def grpc_status(code: str) -> grpc.StatusCode:
    """The gRPC status of an error code: its own line, else its HTTP status's."""
    if code in GRPC_STATUS_BY_CODE:
        return GRPC_STATUS_BY_CODE[code]
    status = http_status(code)
    return GRPC_STATUS_BY_HTTP_STATUS.get(status, grpc.StatusCode.INTERNAL)


def error_response(
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return JSONResponse(body, status_code=http_status(code), headers=headers)


def from_exception(exc: OrderflowError) -> JSONResponse:
    headers = None
    if isinstance(exc, UnauthenticatedError):
        headers = {"WWW-Authenticate": 'Bearer realm="orderflow"'}
    elif isinstance(exc, RateLimitedError):
        headers = {"Retry-After": str(exc.retry_after_seconds)}
    return error_response(exc.code, exc.message, exc.details, headers)


def error_responses(statuses: tuple[int, ...]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries documenting the error shape for these statuses."""
    from orderflow.gateway.schemas import ErrorOut

    return {status: {"model": ErrorOut, "description": "error"} for status in statuses}
