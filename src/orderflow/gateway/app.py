"""The gateway app: routes, middleware, error handlers, and the lifespan that wires the clients."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orderflow.errors import OrderflowError
from orderflow.events.bus import EventTap
from orderflow.gateway import contract
from orderflow.gateway.auth import Authenticator
from orderflow.gateway.budget import budget
from orderflow.gateway.clients import GrpcInventory, GrpcLoyalty, GrpcOrders
from orderflow.gateway.console import install_console
from orderflow.gateway.deps import Gateway, Services
from orderflow.gateway.docs import install_docs
from orderflow.gateway.errors import error_response, from_exception
from orderflow.gateway.http_limits import REPLIED_STATUS
from orderflow.gateway.metrics import GatewayMetrics
from orderflow.gateway.operations import validation_error
from orderflow.gateway.ratelimit import RateLimiter
from orderflow.gateway.readiness import Readiness
from orderflow.gateway.recovery import RecoveryWorker
from orderflow.gateway.routes import health, items, loyalty, orders
from orderflow.gateway.rpc import Channels
from orderflow.gateway.saga import OrderSaga
from orderflow.gateway.watch import OrderWatch
from orderflow.platform.telemetry import instrument_gateway
from orderflow.platform.tls import channel_credentials
from orderflow.settings import AuthSettings, CommonSettings, GatewaySettings

log = structlog.get_logger("orderflow.gateway")

# Counted and logged for a request whose client went away before any reply was sent.
CLIENT_CLOSED = 499

_STATUS_CODES = {
    400: "MALFORMED_REQUEST",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
}


def create_app(
    settings: GatewaySettings,
    common: CommonSettings,
    *,
    services: Services | None = None,
    readiness: Readiness | None = None,
    recovery: bool = True,
    metrics: GatewayMetrics | None = None,
    auth: AuthSettings | None = None,
    events: EventTap | None = None,
) -> FastAPI:
    """Build the gateway. Without `services`, gRPC clients are made from settings at start-up.

    metrics: where to count (default: fresh metrics; one-process mode adds the services').
    events: the bus whose order events wake WatchOrder streams (gateway.watch).
    """
    if metrics is None:
        metrics = GatewayMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        channels = Channels(channel_credentials(common))
        wired = services
        ready = readiness
        if wired is None:
            by_name = {
                "orders": channels.get(settings.orders_target),
                "inventory": channels.get(settings.inventory_target),
                "loyalty": channels.get(settings.loyalty_target),
            }
            wired = Services(
                orders=GrpcOrders(by_name["orders"], settings),
                inventory=GrpcInventory(by_name["inventory"], settings),
                loyalty=GrpcLoyalty(by_name["loyalty"], settings),
            )
            ready = ready or Readiness.over_grpc(by_name, timeout=1.0)
        saga = OrderSaga(
            wired.orders,
            wired.inventory,
            wired.loyalty,
            lease_seconds=settings.lease_seconds,
            observer=metrics,
        )
        watch = OrderWatch(events)
        await watch.start()
        metrics.watch_streams.set_function(lambda: watch.watchers)
        app.state.gateway = Gateway(
            settings=settings,
            common=common,
            services=wired,
            saga=saga,
            metrics=metrics,
            readiness=ready or Readiness({}),
            auth=Authenticator(auth if auth is not None else AuthSettings()),
            limiter=RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst),
            watch=watch,
        )
        worker = RecoveryWorker(
            saga,
            wired.orders,
            interval=settings.recovery_interval_seconds,
            batch=settings.recovery_batch,
            lease_seconds=settings.lease_seconds,
            step_seconds=settings.request_timeout_seconds,
        )
        app.state.recovery = worker
        if recovery:
            worker.start()
        health = asyncio.create_task(
            app.state.gateway.readiness.watch(
                metrics.serving, settings.service_health_interval_seconds
            ),
            name="orderflow-service-health",
        )
        try:
            yield
        finally:
            # The gRPC API first (its streams end while the clients still work).
            for hook in app.state.before_shutdown:
                await hook()
            health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await health
            await worker.stop()
            await watch.stop()
            await channels.close()

    app = FastAPI(
        title="orderflow",
        version="1",
        summary="Order placement over gRPC services: stock, loyalty, and a saga that undoes.",
        lifespan=lifespan,
        docs_url=None,  # served by install_docs, from files of its own instead of a CDN
        redoc_url=None,  # ReDoc loads from a CDN: /docs is the one documentation page
        # Traces are orderflow's own (platform.telemetry, when an endpoint is configured);
        # FastAPI's native telemetry would otherwise look for global providers per request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_docs(app)
    install_console(app)
    # What must stop before the gateway's clients close (gateway.server: the gRPC API).
    app.state.before_shutdown = []
    app.include_router(orders.router)
    app.include_router(items.router)
    app.include_router(loyalty.router)
    app.include_router(health.router)
    if not settings.metrics_port:  # else served on a port of its own (gateway.server)
        app.include_router(health.metrics_router)
    _install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:  # closed unless origins are configured
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(
        RequestContextMiddleware, metrics=metrics, budget_seconds=settings.request_timeout_seconds
    )
    instrument_gateway(app)  # tracing, when on
    contract.document(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OrderflowError)
    async def _domain(_request: Request, exc: OrderflowError) -> JSONResponse:
        return from_exception(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in exc.errors()
        ]
        return from_exception(validation_error(problems))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "INTERNAL")
        headers = dict(exc.headers or {})
        allowed = contract.allowed_methods(app, request.url.path)
        if exc.status_code == 405 and allowed:
            headers["Allow"] = allowed
        response = error_response(code, str(exc.detail), headers=headers)
        response.status_code = exc.status_code
        return response

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled_error", error=str(exc))
        return error_response("INTERNAL", "internal error")


class RequestContextMiddleware:
    """Binds a request id (X-Request-ID, or a new one) to logs and replies; records metrics;
    runs the request within its time budget (budget_seconds, gateway.budget), so the
    deadline of every gRPC call it makes is bounded by what is left of it. A middleware
    rather than a FastAPI dependency: every route has it, none has to ask for it, and it
    costs no dependency resolution per request."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics, budget_seconds: float) -> None:
        self.app = app
        self.metrics = metrics
        self.budget_seconds = budget_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        raw = headers.get(b"x-request-id", b"").decode("latin-1")
        valid = 0 < len(raw) <= 128 and raw.isascii() and raw.isprintable()  # gRPC metadata
        request_id = raw if valid else uuid.uuid4().hex
        start = time.perf_counter()
        status = 500
        started = gone = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        async def receive_noting_disconnect() -> Message:
            nonlocal gone
            message = await receive()
            gone = gone or message["type"] == "http.disconnect"
            return message

        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            with budget(self.budget_seconds):
                await self.app(scope, receive_noting_disconnect, send_with_id)
        finally:
            if gone and not started:
                # Nothing was sent by the app: the client left (499, as nginx counts it),
                # or the server timed the body out and answered itself (gateway.http_limits).
                status = scope.get(REPLIED_STATUS, CLIENT_CLOSED)
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            elapsed = time.perf_counter() - start
            self.metrics.request(scope["method"], path, status, elapsed)
            log.info(
                "http",
                method=scope["method"],
                path=scope["path"],
                status=status,
                ms=round(elapsed * 1000, 2),
            )
            structlog.contextvars.clear_contextvars()


class BodyLimitMiddleware:
    """Refuses request bodies over max_bytes with 413, before anything parses them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers") or ():
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.max_bytes + 1
                if declared > self.max_bytes:
                    await self._too_large(scope, receive, send)
                    return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        reply = error_response(
            "PAYLOAD_TOO_LARGE", f"request bodies are limited to {self.max_bytes} bytes"
        )
        await reply(scope, receive, send)


__all__ = ["create_app"]
