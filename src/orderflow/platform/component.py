"""A gRPC service built from settings, ready to host, and how to run a set of them in one server."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from orderflow.platform.db import Database, create_database
from orderflow.platform.grpc_server import ServiceSpec, create_server, wait_for_signal
from orderflow.platform.metrics import MetricsEndpoint, serve_metrics

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from orderflow.events.service import ServiceEvents

log = structlog.get_logger("orderflow.serve")


@dataclass
class Component:
    """One service with its own database: what `build()` of every service package returns."""

    spec: ServiceSpec
    database: Database
    # Its outbox relay and event consumer, run while it serves (start_events / close).
    events: ServiceEvents[Any] | None = None

    async def close(self) -> None:
        if self.events is not None:
            await self.events.stop()
        await self.database.dispose()


async def start_events(components: Sequence[Component], registry: CollectorRegistry) -> None:
    """Start the relays and consumers of components served together, their metrics on the
    server's registry: every consumer subscribes before any relay publishes (the in-process
    bus delivers only to consumers already there)."""
    from orderflow.events.metrics import EventMetrics

    with_events = [c.events for c in components if c.events is not None]
    if not with_events:
        return
    metrics = EventMetrics(registry)
    for events in with_events:
        await events.subscribe()
    for events in with_events:
        await events.start(metrics)


async def open_database(url: str, pool_size: int, service: str, *, migrate: bool) -> Database:
    """The service's database; with migrate, brought to the newest revision first.

    `orderflow serve` migrates in a child process instead, so alembic stays out of memory.
    """
    database = create_database(url, pool_size=pool_size)
    if migrate:
        from orderflow.platform import migrations

        try:
            await migrations.upgrade(database, service)
        except BaseException:
            await database.dispose()
            raise
    return database


async def serve_components(
    components: Sequence[Component],
    host: str,
    port: int,
    *,
    grace_seconds: float = 5.0,
    health_interval: float = 2.0,
    max_concurrent_rpcs: int | None = None,
    metrics_port: int = 0,
    credentials: grpc.ServerCredentials | None = None,
) -> None:
    """Host components on one gRPC server until SIGTERM/SIGINT, then shut down gracefully.

    With a metrics_port, the server's Prometheus metrics are served at /metrics on it.
    """
    running = await create_server(
        [c.spec for c in components],
        host,
        port,
        max_concurrent_rpcs=max_concurrent_rpcs,
        health_interval=health_interval,
        credentials=credentials,
    )
    names = [c.spec.name for c in components]
    log.info("grpc_serving", address=f"{host}:{running.port}", services=names)
    endpoint: MetricsEndpoint | None = None
    try:
        await start_events(components, running.metrics.registry)
        if metrics_port:
            endpoint = serve_metrics(running.metrics.registry, host, metrics_port)
            log.info("metrics_serving", address=f"http://{host}:{endpoint.port}/metrics")
        await wait_for_signal()
        log.info("grpc_stopping", grace_seconds=grace_seconds)
    finally:
        if endpoint is not None:
            endpoint.close()
        await running.stop(grace_seconds)
        for component in components:  # their relays and consumers first, then databases
            if component.events is not None:
                await component.events.stop()
        for component in components:
            await component.close()
