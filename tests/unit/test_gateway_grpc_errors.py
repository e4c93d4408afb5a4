"""The public gRPC API's one table: each REST error code gets the status its HTTP status says."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from orderflow.api.v1 import ordering_pb2 as pb
from orderflow.errors import OutOfStockError, RateLimitedError
from orderflow.gateway.errors import (
    GRPC_STATUS_BY_HTTP_STATUS,
    HTTP_STATUS_BY_CODE,
    grpc_status,
)
from orderflow.gateway.grpc_api import peer_address, rich_status

EXPECTED = {
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "OUT_OF_STOCK": grpc.StatusCode.FAILED_PRECONDITION,
    "INSUFFICIENT_POINTS": grpc.StatusCode.FAILED_PRECONDITION,
    "NOT_CANCELLABLE": grpc.StatusCode.FAILED_PRECONDITION,
    "REQUEST_IN_PROGRESS": grpc.StatusCode.ABORTED,
    "CONCURRENT_CHANGE": grpc.StatusCode.ABORTED,
    "VALIDATION_ERROR": grpc.StatusCode.INVALID_ARGUMENT,
    "UNKNOWN_SKU": grpc.StatusCode.INVALID_ARGUMENT,
    "IDEMPOTENCY_KEY_REUSED": grpc.StatusCode.INVALID_ARGUMENT,
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
    "FORBIDDEN": grpc.StatusCode.PERMISSION_DENIED,
    "RATE_LIMITED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "SERVICE_UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "ALREADY_EXISTS": grpc.StatusCode.ALREADY_EXISTS,
    "INTERNAL": grpc.StatusCode.INTERNAL,
}


@pytest.mark.parametrize("code", sorted(EXPECTED))
def test_the_status_of_each_code(code: str) -> None:
    assert grpc_status(code) == EXPECTED[code]


@pytest.mark.parametrize("code", sorted(HTTP_STATUS_BY_CODE))
def test_every_http_status_has_a_grpc_status(code: str) -> None:
    assert HTTP_STATUS_BY_CODE[code] in GRPC_STATUS_BY_HTTP_STATUS, code
    if HTTP_STATUS_BY_CODE[code] != 500:
        assert grpc_status(code) != grpc.StatusCode.INTERNAL


def _details(status: grpc.Status) -> list[object]:
    from grpc_status import rpc_status

    raw = dict(status.trailing_metadata)[rpc_status.GRPC_DETAILS_METADATA_KEY]
    from google.rpc import status_pb2

    return list(status_pb2.Status.FromString(raw).details)


def test_a_refusal_carries_one_error_info_and_the_order() -> None:
    error = OutOfStockError("not enough MUG-1", order_id="o-1", status="REJECTED")
    status = rich_status(error, pb.Order(id="o-1", status=pb.ORDER_STATUS_REJECTED))
    assert status.code == grpc.StatusCode.FAILED_PRECONDITION
    details = _details(status)
    infos = [d for d in details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]  # type: ignore[attr-defined]
    assert len(infos) == 1
    info = error_details_pb2.ErrorInfo()
    infos[0].Unpack(info)  # type: ignore[attr-defined]
    assert (info.reason, info.domain, info.metadata["order_id"]) == (
        "OUT_OF_STOCK",
        "orderflow",
        "o-1",
    )
    assert any(d.Is(pb.Order.DESCRIPTOR) for d in details)  # type: ignore[attr-defined]


def test_rate_limited_carries_retry_info() -> None:
    status = rich_status(RateLimitedError("slow down", retry_after_seconds=3))
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry = [d for d in _details(status) if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]  # type: ignore[attr-defined]
    info = error_details_pb2.RetryInfo()
    retry[0].Unpack(info)  # type: ignore[attr-defined]
    assert info.retry_delay.seconds == 3


class _Peer:
    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:10.1.2.3:5555", "10.1.2.3"),
        ("ipv6:[::1]:5555", "::1"),
        ("unix:/tmp/s", "unix:/tmp/s"),
    ],
)
def test_the_client_address_of_a_peer(peer: str, address: str) -> None:
    assert peer_address(_Peer(peer)) == address  # type: ignore[arg-type]
