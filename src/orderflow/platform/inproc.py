"""In-process gRPC channels: a caller reaches the services of its own process through their
servicers and messages, without a socket (ADR 34).

`InProcessServer` registers the services as a gRPC server does: each servicer wrapped by
`ObservedServicer` (request and order ids from metadata, one log line, domain errors to
status codes with the error code in trailing metadata, RPC metrics) and added with its
generated `add_<Service>Servicer_to_server`, so the method handlers, their serializers and
the health servicer are the ones the socket server runs. `InProcessChannel` is a
`grpc.aio.Channel` whose unary calls serialize the request, hand the bytes to that handler
with a `ServicerContext` of this module, and give back the deserialized reply, or an
`AioRpcError` with the code, details and trailing metadata the handler aborted with (or
DEADLINE_EXCEEDED when the call's timeout ran out: the handler is cancelled, as gRPC
cancels a server's handler at its deadline). What the socket adds and this skips: HTTP/2
framing, the C core's queues, the loopback round trip, and mutual TLS (the caller is in
the same process).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from orderflow.platform.grpc_server import ObservedServicer, ServiceSpec
from orderflow.platform.metrics import ServiceMetrics

Serializer = Callable[[Any], bytes] | None


class _HandlerCollector:
    """Stands in for a grpc.aio.Server while the generated code adds a servicer to it."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        """The generated code also registers every method by name (below): nothing to do."""

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        for method, handler in handlers.items():
            self.handlers[f"/{service}/{method}"] = handler


class InProcessServer:
    """The method handlers of services hosted in this process, by full method name."""

    def __init__(
        self,
        specs: Sequence[ServiceSpec],
        metrics: ServiceMetrics,
        health_servicer: health.aio.HealthServicer,
    ) -> None:
        collector = _HandlerCollector()
        for spec in specs:
            # No client identity check: the caller is this process, not a network peer.
            spec.add_to_server(ObservedServicer(spec.servicer, spec.name, metrics), collector)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, collector)
        self.handlers = collector.handlers

    def channel(self) -> InProcessChannel:
        return InProcessChannel(self.handlers)


class _Context(grpc.aio.ServicerContext):
    """What a unary handler may ask of its call, for a call made in this process."""

    def __init__(self, metadata: Sequence[tuple[str, str]], deadline: float | None) -> None:
        self._metadata = tuple(metadata)
        self._deadline = deadline
        self._code = grpc.StatusCode.OK
        self._details = ""
        self._trailing: tuple[tuple[str, str], ...] = ()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return "in-process"

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def peer_identities(self) -> None:
        return None

    def peer_identity_key(self) -> None:
        return None

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(self._deadline - time.monotonic(), 0.0)

    def set_trailing_metadata(self, trailing_metadata: Sequence[tuple[str, str]]) -> None:
        self._trailing = tuple(trailing_metadata)

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailing

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def set_details(self, details: str) -> None:
        self._details = details

    def details(self) -> str:
        return self._details

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Sequence[tuple[str, str]] = (),
    ) -> NoReturn:
        self._code, self._details = code, details
        if trailing_metadata:
            self._trailing = tuple(trailing_metadata)
        raise grpc.aio.AbortError(f"aborted: {code.name}")

    async def abort_with_status(self, status: Any) -> NoReturn:
        await self.abort(status.code, status.details, status.trailing_metadata)

    def error(self) -> grpc.aio.AioRpcError:
        return rpc_error(self._code, self._details, self._trailing)

    # Unused by unary handlers here; present because the interface declares them.
    async def read(self) -> Any:
        raise NotImplementedError

    async def write(self, message: Any) -> None:
        raise NotImplementedError

    async def send_initial_metadata(self, initial_metadata: Any) -> None:
        """Initial metadata has nowhere to go in a call made in this process."""

    def set_compression(self, compression: Any) -> None:
        """Nothing is compressed in memory."""

    def disable_next_message_compression(self) -> None:
        """Nothing is compressed in memory."""

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return False

    def add_done_callback(self, callback: Any) -> None:
        raise NotImplementedError


def rpc_error(
    code: grpc.StatusCode, details: str, trailing: Sequence[tuple[str, str]] = ()
) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details=details
    )


def _unexpected(exc: Exception) -> grpc.aio.AioRpcError:
    return rpc_error(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc).__name__}: {exc}")


class _UnaryUnary:
    """One method of an InProcessChannel: called like a stub's multicallable."""

    __slots__ = ("_deserialize", "_handler", "_method", "_serialize")

    def __init__(
        self,
        method: str,
        handler: grpc.RpcMethodHandler | None,
        serialize: Serializer,
        deserialize: Callable[[bytes], Any] | None,
    ) -> None:
        self._method = method
        self._handler = handler
        self._serialize = serialize
        self._deserialize = deserialize

    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
        **_options: Any,
    ) -> Any:
        return self._call(request, timeout, metadata or ())

    async def _call(
        self,
        request: Any,
        seconds: float | None,  # the call's timeout
        metadata: Sequence[tuple[str, str]],
    ) -> Any:
        handler = self._handler
        if handler is None or handler.unary_unary is None:
            raise rpc_error(grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {self._method}")
        # Through bytes both ways, as over the wire: the service never shares a message
        # object with its caller.
        data = self._serialize(request) if self._serialize else request
        message = handler.request_deserializer(data) if handler.request_deserializer else data
        deadline = None if seconds is None else time.monotonic() + seconds
        context = _Context(metadata, deadline)
        limit = asyncio.timeout(seconds)
        try:
            async with limit:
                # The loop's turn passes, as when a call leaves on a socket and its reply
                # comes back: without it a request runs its whole saga in one go, and the
                # relays and consumers of the process wait for a turn behind every request
                # in flight (their events then lag by seconds under load).
                await asyncio.sleep(0)
                response = await handler.unary_unary(message, context)
                await asyncio.sleep(0)
        except grpc.aio.AbortError:
            raise context.error() from None
        except TimeoutError as exc:
            if limit.expired():
                raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
            raise _unexpected(exc) from exc
        except Exception as exc:  # as a gRPC server answers a handler's unexpected failure
            raise _unexpected(exc) from exc
        out = handler.response_serializer(response) if handler.response_serializer else response
        return self._deserialize(out) if self._deserialize else out


def _streaming(method: str) -> Callable[..., NoReturn]:
    def call(*args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError(f"{method}: in-process channels carry unary calls only")

    return call


class InProcessChannel(grpc.aio.Channel):
    """A channel to the services of this process (InProcessServer); unary calls only."""

    def __init__(self, handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        self._handlers = handlers

    def unary_unary(
        self,
        method: str,
        request_serializer: Serializer = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> Any:
        return _UnaryUnary(
            method, self._handlers.get(method), request_serializer, response_deserializer
        )

    # A stub makes every method at construction (the health stub's Watch streams): only a
    # call of a streaming method fails.
    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _streaming(method)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _streaming(method)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _streaming(method)

    async def __aenter__(self) -> InProcessChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self, grace: float | None = None) -> None:
        """Nothing to release: no connection, no thread."""

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return grpc.ChannelConnectivity.READY

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        raise NotImplementedError("an in-process channel never changes state")

    async def channel_ready(self) -> None:
        """Always ready."""
