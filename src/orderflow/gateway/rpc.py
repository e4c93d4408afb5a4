"""How the gateway calls a service: deadlines from the budget, retries, ids, status -> error.

Every call gets a deadline: what is left of the current budget, capped by the per-call
timeout. Only UNAVAILABLE is retried (with exponential backoff, within the budget), and
only for a call its caller marked `safe` to repeat: a read; a saga RPC (idempotent on the
order id; CreateOrder always carries an idempotency key); an admin change sent with an
idempotency key (ADR 0023). UNAVAILABLE can come after the service committed (the
connection reset before the reply arrived), so an unmarked call is never repeated and a
marked one never doubles an effect. A failure comes back as the
domain error the service raised (its code travels in trailing metadata), or as
ServiceUnavailableError / UpstreamError when the service gave no usable answer.

`Channels` holds one channel per target. The adapters that speak each service's
protobuf sit on top of this, in orderflow.gateway.clients.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import quote

import grpc
import structlog

from orderflow.errors import (
    ERRORS_BY_CODE,
    OrderflowError,
    ServiceUnavailableError,
    UpstreamError,
)
from orderflow.gateway.budget import remaining
from orderflow.platform.grpc_errors import ERROR_CODE_KEY, ERROR_DETAILS_KEY
from orderflow.platform.logging import ORDER_ID_KEY, REQUEST_ID_KEY
from orderflow.platform.telemetry import client_interceptors
from orderflow.settings import GatewaySettings

CHANNEL_OPTIONS: Sequence[tuple[str, Any]] = (
    # Spread calls over every address a (headless) service name resolves to.
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    ("grpc.max_send_message_length", 4 * 1024 * 1024),
    # Retries are ours (budget-aware); reconnect quickly once a service is back.
    ("grpc.enable_retries", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)

_NO_ANSWER = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def translate(exc: grpc.aio.AioRpcError, service: str) -> OrderflowError:
    """The domain error behind a failed call."""
    code = exc.code()
    if code in _NO_ANSWER:
        return ServiceUnavailableError(
            f"the {service} service did not answer ({code.name.lower()})", service=service
        )
    trailing = dict(exc.trailing_metadata() or ())
    error_cls = ERRORS_BY_CODE.get(str(trailing.get(ERROR_CODE_KEY, "")))
    if error_cls is not None and error_cls.code not in ("INTERNAL",):
        try:
            details = json.loads(str(trailing.get(ERROR_DETAILS_KEY, "{}")))
        except ValueError:
            details = {}
        return error_cls(exc.details() or error_cls.code, **details)
    return UpstreamError(
        f"the {service} service failed ({code.name}): {exc.details()}", service=service
    )


def metadata_value(value: str) -> str:
    """value as gRPC metadata may carry it (printable ASCII), percent-encoded if need be:
    an id from a URL can be any text, and anything else would fail the call."""
    if value.isascii() and value.isprintable():
        return value
    return quote(value, safe="")


class Caller:
    """Calls one service's RPCs with deadlines, id metadata and retries."""

    def __init__(self, service: str, settings: GatewaySettings) -> None:
        self.service = service
        self.timeout = settings.rpc_timeout_seconds
        self.attempts = settings.rpc_attempts
        self.backoff = settings.rpc_backoff_seconds

    async def __call__(
        self,
        method: Callable[..., Awaitable[Any]],
        request: Any,
        order_id: str = "",
        *,
        safe: bool,
    ) -> Any:
        """method(request) with a deadline; on UNAVAILABLE called again only if safe (the
        call is safe to repeat: it cannot have a second effect)."""
        ids = structlog.contextvars.get_contextvars()
        metadata: list[tuple[str, str]] = []
        if ids.get("request_id"):
            metadata.append((REQUEST_ID_KEY, metadata_value(str(ids["request_id"]))))
        if order_id or ids.get("order_id"):
            metadata.append((ORDER_ID_KEY, metadata_value(order_id or str(ids["order_id"]))))
        for attempt in range(self.attempts):
            timeout = remaining(self.timeout)
            if timeout <= 0.001:
                raise ServiceUnavailableError(
                    f"no time left to call the {self.service} service", service=self.service
                )
            try:
                return await method(request, timeout=timeout, metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                delay = self.backoff * (2**attempt)
                retry = (
                    safe
                    and exc.code() == grpc.StatusCode.UNAVAILABLE
                    and attempt + 1 < self.attempts
                    and remaining(self.timeout) > delay
                )
                if not retry:
                    raise translate(exc, self.service) from None
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")


class Channels:
    """One channel per distinct target (in one-process mode the three services share one)."""

    def __init__(self, credentials: grpc.ChannelCredentials | None = None) -> None:
        """With credentials (mutual TLS, see platform.tls) every channel is a TLS channel."""
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._credentials = credentials

    def get(self, target: str) -> grpc.aio.Channel:
        if target not in self._channels:
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(
                    target, options=CHANNEL_OPTIONS, interceptors=client_interceptors()
                )
            else:
                channel = grpc.aio.secure_channel(
                    target,
                    self._credentials,
                    options=CHANNEL_OPTIONS,
                    interceptors=client_interceptors(),
                )
            self._channels[target] = channel
        return self._channels[target]

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
