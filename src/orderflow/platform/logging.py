"""Structured logging: JSON in containers, readable on a terminal, request and order ids bound.

Every line a process writes goes through structlog: its own loggers and the standard
library's (uvicorn, alembic, asyncio, warnings), so with JSON output each line is one
JSON object.

A request's per-call lines (each service's `rpc` line for a call that went through) are
logged at INFO only for a sample of requests (`log_sample_rate`, ADR 33), chosen by the
request id so that every process picks the same requests; the others' are DEBUG. A call
that failed is always logged at INFO, and so is the gateway's access line of every request.
"""

from __future__ import annotations

import logging
import sys
import zlib
from typing import Any

import structlog

# gRPC metadata keys that carry the ids from the gateway into every service.
REQUEST_ID_KEY = "x-request-id"
ORDER_ID_KEY = "x-order-id"

# The share of requests whose per-call lines are logged at INFO (ORDERFLOW_LOG_SAMPLE_RATE).
DEFAULT_SAMPLE_RATE = 0.01
_SCALE = 2**32
_sampled_below = int(DEFAULT_SAMPLE_RATE * _SCALE)


def wants_json(fmt: str) -> bool:
    """JSON for "json", and for "auto" when standard error is not a terminal."""
    return fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())


def sample_requests(rate: float) -> None:
    """Log the per-call lines of this share of requests (0 to 1) at INFO from now on."""
    global _sampled_below
    _sampled_below = round(min(max(rate, 0.0), 1.0) * _SCALE)


def sampled(request_id: str) -> bool:
    """Whether the request's per-call lines are logged at INFO: the same answer in every
    process for the same request id (a hash of it), so a sampled request is whole."""
    return zlib.crc32(request_id.encode()) < _sampled_below


def configure_logging(
    level: str = "INFO",
    fmt: str = "auto",
    *,
    component: str = "",
    sample_rate: float = DEFAULT_SAMPLE_RATE,
) -> None:
    """Set up structlog, and send the standard library's records through it, once at start-up.

    sample_rate: the share of requests whose per-call lines are logged at INFO (`sampled`).
    """
    sample_requests(sample_rate)
    json_output = wants_json(fmt)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if component:
        shared.append(_add_component(component))
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        # One write per line: a PrintLogger writes the line and its newline apart, which an
        # unbuffered stream (PYTHONUNBUFFERED, as the image sets) turns into two system
        # calls, and processes sharing one stream then interleave their lines.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    # Alembic announces each of its plugins at INFO on every start; only its upgrades matter.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def _add_component(component: str) -> Any:
    def processor(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        event.setdefault("component", component)
        return event

    return processor
