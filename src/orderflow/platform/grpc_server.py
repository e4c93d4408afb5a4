"""gRPC server bootstrap shared by every service: health, reflection, errors, ids, shutdown.

`create_server()` builds and binds a server (port 0 picks a free port, for tests) and
returns it with the bound port; `serve()` runs it until SIGTERM/SIGINT, then reports
NOT_SERVING and lets running calls finish within the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from orderflow.errors import OrderflowError
from orderflow.platform.grpc_errors import ERROR_CODE_KEY, ERROR_DETAILS_KEY, status_for
from orderflow.platform.grpc_identity import allowed_clients, refusal
from orderflow.platform.logging import ORDER_ID_KEY, REQUEST_ID_KEY, sampled
from orderflow.platform.metrics import ServiceMetrics
from orderflow.platform.telemetry import server_interceptors

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = structlog.get_logger("orderflow.grpc")

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
SERVER_OPTIONS: Sequence[tuple[str, Any]] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    # Clients reconnect (and so resolve names again) at least every ~30 s: replicas added
    # by scaling get their share of calls instead of waiting for a connection to fail.
    ("grpc.max_connection_age_ms", 30_000),
    ("grpc.max_connection_age_grace_ms", 10_000),
)


@dataclass(frozen=True)
class ServiceSpec:
    """One gRPC service to host: its full name, how to add it, how to tell it is healthy."""

    name: str
    servicer: object
    # The generated add_<Service>Servicer_to_server function.
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    probe: Callable[[], Awaitable[None]]
    # Runs while the server runs: keeps the service's own metrics on the server's registry.
    metrics: Callable[[CollectorRegistry], Coroutine[Any, Any, None]] | None = None


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    specs: Sequence[ServiceSpec]
    monitor: asyncio.Task[None] | None = field(default=None)
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def stop(self, grace: float = 1.0) -> None:
        for task in [self.monitor, *self.tasks]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


class ObservedServicer:
    """A servicer whose RPC methods bind request and order ids from metadata, log each call,
    map domain errors to status codes, and count each call by method and status code.

    A call is logged at INFO when it failed or its request is sampled
    (platform.logging.sampled), else at DEBUG (ADR 33); the recovery worker's polling
    (ClaimStaleOrders, every few seconds) only at DEBUG unless it failed.

    The wrapping happens once per method, when the service is added to the server, not
    per call as a grpc interceptor would (which costs a handler object and an extra
    coroutine on every call).
    """

    def __init__(
        self,
        servicer: object,
        service_name: str,
        metrics: ServiceMetrics,
        allowed: frozenset[str] | None = None,
    ) -> None:
        self._servicer = servicer
        self._service_name = service_name
        self._metrics = metrics
        # Client identities admitted under mutual TLS (platform.grpc_identity); None: any.
        self._allowed = allowed

    def __getattr__(self, name: str) -> Any:
        inner = getattr(self._servicer, name)
        if not name[:1].isupper() or not callable(inner):
            return inner
        wrapped = _observed(inner, f"/{self._service_name}/{name}", self._metrics, self._allowed)
        setattr(self, name, wrapped)  # later look-ups skip __getattr__
        return wrapped


def _observed(
    inner: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
    method: str,
    metrics: ServiceMetrics,
    allowed: frozenset[str] | None = None,
) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    polled = method.endswith(POLLED_METHODS)

    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if allowed is not None and (refused := refusal(context, allowed)) is not None:
            metrics.observe_rpc(method, "PERMISSION_DENIED", 0.0)
            log.warning("rpc_refused", method=method, peer=context.peer(), reason=refused)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refused)
        request_id = order_id = None
        for key, value in context.invocation_metadata() or ():
            if key == REQUEST_ID_KEY:
                request_id = value
            elif key == ORDER_ID_KEY:
                order_id = value
        request_id = request_id or uuid.uuid4().hex
        ids = {"request_id": request_id}
        if order_id:
            ids["order_id"] = order_id
        start = time.perf_counter()
        outcome = code = "OK"
        with structlog.contextvars.bound_contextvars(**ids):
            try:
                return await inner(request, context)
            except OrderflowError as exc:
                outcome, code = exc.code, status_for(exc).name
                context.set_trailing_metadata(
                    (
                        (ERROR_CODE_KEY, exc.code),
                        (ERROR_DETAILS_KEY, json.dumps(exc.details, default=str)),
                    )
                )
                await context.abort(status_for(exc), exc.message)
            except grpc.aio.AbortError:
                outcome, code = "ABORTED_BY_HANDLER", _code_of(context)
                raise
            except asyncio.CancelledError:  # the client went away or ran out of time
                outcome = code = "CANCELLED"
                raise
            except Exception:
                outcome = code = "INTERNAL"
                log.exception("rpc_failed", method=method)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            finally:
                elapsed = time.perf_counter() - start
                metrics.observe_rpc(method, code, elapsed)
                loud = outcome != "OK" or (not polled and sampled(request_id))
                (log.info if loud else log.debug)(
                    "rpc", method=method, outcome=outcome, ms=round(elapsed * 1000, 2)
                )

    return wrapped


# Reads made every few seconds by a poller (the recovery worker, the console's home page).
POLLED_METHODS = (
    "/ClaimStaleOrders",
    "/ListUnsettledOrders",
    "/ListLowStockItems",
    "/GetEventsBacklog",
)


def _code_of(context: grpc.aio.ServicerContext) -> str:
    try:
        code = context.code()
    except Exception:
        return "UNKNOWN"
    return code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"


async def create_server(
    specs: Sequence[ServiceSpec],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    max_concurrent_rpcs: int | None = None,
    health_interval: float = 2.0,
    credentials: grpc.ServerCredentials | None = None,
    metrics: ServiceMetrics | None = None,
    address: str | None = None,
    reflection: bool = True,
) -> RunningServer:
    """Build, bind and start a server hosting specs plus health and reflection.

    With credentials (mutual TLS, see platform.tls) the port accepts only TLS clients
    whose certificate the configured CA signed, and the services answer only the client
    identities the credentials allow (platform.grpc_identity).
    metrics: where calls are counted (default: fresh metrics of this server's own).
    address: where to listen instead of host:port (`unix:PATH`: a Unix socket; the port
    then reported is 0).
    reflection: serve reflection (off only behind a front that serves it instead).
    """
    if metrics is None:
        metrics = ServiceMetrics()
    server = grpc.aio.server(
        # Tracing (when on) wraps the call, so the call's log lines fall inside its span.
        interceptors=server_interceptors(),
        options=SERVER_OPTIONS,
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    for spec in specs:
        observed = ObservedServicer(spec.servicer, spec.name, metrics, allowed_clients(credentials))
        spec.add_to_server(observed, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [spec.name for spec in specs]
    if reflection:
        from grpc_reflection.v1alpha import reflection as server_reflection

        server_reflection.enable_server_reflection(
            [*names, health.SERVICE_NAME, server_reflection.SERVICE_NAME], server
        )
    where = address or f"{host}:{port}"
    if credentials is None:
        bound = server.add_insecure_port(where)
    else:
        bound = server.add_secure_port(where, credentials)
    if bound == 0:
        raise OSError(f"could not bind gRPC server to {where}")
    if address is not None:
        bound = 0
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    running = RunningServer(server, bound, health_servicer, specs, metrics=metrics)
    await check_health(running)
    running.monitor = asyncio.create_task(_monitor(running, health_interval))
    for spec in specs:
        if spec.metrics is not None:
            running.tasks.append(asyncio.create_task(spec.metrics(metrics.registry)))
    return running


async def check_health(running: RunningServer, probe_seconds: float = 2.0) -> bool:
    """Probe each service's database once and publish SERVING or NOT_SERVING."""
    all_ok = True
    for spec in running.specs:
        try:
            await asyncio.wait_for(spec.probe(), probe_seconds)
            status = health_pb2.HealthCheckResponse.SERVING
        except Exception as exc:
            all_ok = False
            status = health_pb2.HealthCheckResponse.NOT_SERVING
            log.warning("health_probe_failed", service=spec.name, error=str(exc))
        await running.health.set(spec.name, status)
    overall = (
        health_pb2.HealthCheckResponse.SERVING
        if all_ok
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    await running.health.set("", overall)
    return all_ok


async def _monitor(running: RunningServer, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        await check_health(running, probe_seconds=interval)


async def wait_for_signal() -> None:
    """Return when the process receives SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
