"""Structured logging: JSON in containers, readable on a terminal, request and order ids bound."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

# gRPC metadata keys that carry the ids from the gateway into every service.
REQUEST_ID_KEY = "x-request-id"
ORDER_ID_KEY = "x-order-id"


def configure_logging(level: str = "INFO", fmt: str = "auto", *, component: str = "") -> None:
    """Set up structlog (and the stdlib root logger) once, at start-up."""
    json_output = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if component:
        processors.append(_add_component(component))
    processors += [structlog.processors.format_exc_info, renderer]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    # Alembic announces each of its plugins at INFO on every start; only its upgrades matter.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def _add_component(component: str) -> Any:
    def processor(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        event.setdefault("component", component)
        return event

    return processor
