"""OpenTelemetry tracing: on when an OTLP endpoint is configured, absent otherwise.

`configure_tracing()` runs once at start-up. With an endpoint (ORDERFLOW_OTLP_ENDPOINT,
or the standard OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) it
builds a tracer provider that batches spans to the OTLP/gRPC exporter; the gateway's
FastAPI app, every gRPC server and every gRPC channel then get the instrumentations'
interceptors, the trace context travels in gRPC metadata (W3C traceparent), and log
lines carry the trace and span ids.
Without one nothing is set up: no provider, no interceptors, and the OpenTelemetry SDK
is never imported. The provider is passed to the instrumentations explicitly (no global
monkeypatching), so tests can install one with an in-memory exporter.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.trace import TracerProvider

log = structlog.get_logger("orderflow.telemetry")

_STANDARD_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
# Calls never traced: health checks, reflection, and the recovery worker's polling (one
# root trace every few seconds per gateway would bury the traces of orders).
_UNTRACED_PREFIXES = ("/grpc.health.", "/grpc.reflection.")
_UNTRACED_METHODS = ("/orderflow.orders.v1.OrderService/ClaimStaleOrders",)
# Gateway routes never traced (comma-separated regexes matched against the URL).
_UNTRACED_URLS = "/healthz,/readyz,/metrics"

_provider: TracerProvider | None = None


def tracing_endpoint(configured: str = "") -> str | None:
    """The OTLP endpoint tracing should export to, or None when tracing is off."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if configured:
        return configured
    for name in _STANDARD_ENDPOINTS:
        if os.environ.get(name, "").strip():
            return os.environ[name].strip()
    return None


def configure_tracing(component: str, endpoint: str = "") -> bool:
    """Set up tracing for this process when an endpoint is configured; True if it is on.

    component names the process (orders, inventory, loyalty, gateway, or orderflow for
    the one-process mode); OTEL_SERVICE_NAME, when set, wins.
    """
    chosen = tracing_endpoint(endpoint)
    if chosen is None:
        return False
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes: dict[str, Any] = {}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes[SERVICE_NAME] = (
            f"orderflow-{component}" if component != "orderflow" else "orderflow"
        )
    provider = TracerProvider(resource=Resource.create(attributes))
    # The exporter reads the standard variables itself (headers, certificates, insecure);
    # an endpoint given as ORDERFLOW_OTLP_ENDPOINT overrides theirs.
    exporter = OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    use_tracer_provider(provider)
    _log_trace_ids()
    log.info("tracing_on", endpoint=chosen)
    return True


def _log_trace_ids() -> None:
    """Put the current trace and span ids on every log line, to go from a line to its trace."""
    from opentelemetry import trace

    def add_ids(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            event.setdefault("trace_id", format(context.trace_id, "032x"))
            event.setdefault("span_id", format(context.span_id, "016x"))
        return event

    processors = list(structlog.get_config()["processors"])
    processors.insert(max(len(processors) - 1, 0), add_ids)  # before the renderer
    structlog.configure(processors=processors)


def use_tracer_provider(provider: TracerProvider | None) -> TracerProvider | None:
    """Trace with provider from now on (None: tracing off); returns the previous one.

    Servers, channels and apps made after this call use it; ones made before do not.
    """
    global _provider
    previous, _provider = _provider, provider
    return previous


def tracer_provider() -> TracerProvider | None:
    return _provider


def _method_of(details: Any) -> str:
    method = getattr(details, "method", "")
    return method.decode() if isinstance(method, bytes) else str(method)


def _traced(details: Any) -> bool:
    method = _method_of(details)
    return not method.startswith(_UNTRACED_PREFIXES) and method not in _UNTRACED_METHODS


def server_interceptors() -> Sequence[Any]:
    """Interceptors a gRPC server needs for tracing (none when tracing is off)."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    interceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
        tracer_provider=_provider, filter_=_traced
    )
    return [interceptor]


def client_interceptors() -> Sequence[Any] | None:
    """Interceptors a gRPC channel needs for tracing (None when tracing is off)."""
    if _provider is None:
        return None
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    made = aio_client_interceptors(  # type: ignore[no-untyped-call]
        tracer_provider=_provider, filter_=_traced
    )
    return list(made)


def instrument_gateway(app: FastAPI) -> None:
    """Trace every request to the gateway app (nothing when tracing is off)."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.metrics import NoOpMeterProvider

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=_provider,
        meter_provider=NoOpMeterProvider(),  # metrics are Prometheus's job here
        excluded_urls=_UNTRACED_URLS,
        exclude_spans=["receive", "send"],
    )


@contextlib.contextmanager
def span(name: str, **attributes: str | int | bool) -> Iterator[None]:
    """A span around a block of work of our own (nothing when tracing is off)."""
    if _provider is None:
        yield
        return
    tracer = _provider.get_tracer("orderflow")
    with tracer.start_as_current_span(name, attributes=attributes):
        yield
