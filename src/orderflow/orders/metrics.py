"""Stuck orders as a Prometheus gauge: orderflow_orders_stuck{status}.

An order is stuck when its saga outlived its driver (orders.domain.is_stuck): nobody holds
a live lease on it and it is not settled, or a recovery worker holds it because of that.
The recovery worker finishes such orders within a round when the services answer, so a
count that stays above zero means it cannot (a service down, a step failing every time).
The orders service counts them itself, from its own database, so the signal does not
depend on the gateway whose worker should clear them.

As with inventory's stock gauges, a small task counts every few seconds (one read-only
query over the unsettled orders) and keeps the result; a scrape only reads it, so it never
touches the database and is safe from the metrics server's thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from orderflow.orders.service import OrdersService

log = structlog.get_logger("orderflow.orders.metrics")


class StuckOrderGauges(Collector):
    def __init__(self, service: OrdersService, *, interval: float = 10.0) -> None:
        self.service = service
        self.interval = interval
        self._counts: tuple[tuple[str, int], ...] = ()
        self._refreshed = False

    async def refresh(self) -> None:
        counted = await self.service.count_stuck()
        self._counts = tuple((status.value, n) for status, n in counted.items())
        self._refreshed = True

    async def run(self, registry: CollectorRegistry) -> None:
        """Serve the gauge on registry, refreshing it until cancelled."""
        registry.register(self)
        try:
            while True:
                try:
                    await self.refresh()
                except Exception as exc:  # keep the last count; try again next round
                    log.warning("stuck_order_metrics_failed", error=str(exc))
                await asyncio.sleep(self.interval)
        finally:
            registry.unregister(self)

    def collect(self) -> Iterable[Metric]:
        if not self._refreshed:
            return []
        stuck = GaugeMetricFamily(
            "orderflow_orders_stuck",
            "Orders whose saga outlived its driver's lease and is not settled, by status "
            "(left for, or held by, a recovery worker).",
            labels=["status"],
        )
        for status, count in self._counts:
            stuck.add_metric([status], count)
        return [stuck]
