"""The gateway's Caller repeats a call that failed with UNAVAILABLE only when it is marked
safe: UNAVAILABLE can come after the service committed (a reply lost with its connection)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from orderflow.errors import ServiceUnavailableError
from orderflow.gateway.rpc import Caller
from orderflow.settings import GatewaySettings


class Flaky:
    """An RPC whose first `failures` calls fail with UNAVAILABLE."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self, request: Any, *, timeout: float, metadata: Any) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details="connection reset",
            )
        return "reply"


def caller() -> Caller:
    return Caller("inventory", GatewaySettings(rpc_attempts=3, rpc_backoff_seconds=0.001))


async def test_a_safe_call_is_repeated_after_unavailable() -> None:
    rpc = Flaky(failures=2)
    assert await caller()(rpc, object(), safe=True) == "reply"
    assert rpc.calls == 3


async def test_an_unsafe_call_is_not_repeated() -> None:
    rpc = Flaky(failures=1)
    with pytest.raises(ServiceUnavailableError):
        await caller()(rpc, object(), safe=False)
    assert rpc.calls == 1
