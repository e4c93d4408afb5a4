"""Stock levels as Prometheus gauges: orderflow_stock{sku, state=available|reserved|sold},
and low stock: orderflow_stock_low_items (how many items, of all of them, have available at
or below the low-stock threshold) beside orderflow_stock_low_threshold (that threshold, so
rules and dashboards compare with the value the service applies, not a copy of it).

A small task reads the items table every few seconds (the first MAX_SKUS skus in sku
order, one short read-only query, and one count) and keeps the result as an immutable
snapshot; a scrape only reads the snapshot, so it never touches the database and is safe
from the metrics server's thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from orderflow.inventory.service import DEFAULT_LOW_STOCK_THRESHOLD
from orderflow.inventory.storage import SqlInventoryUnitOfWork
from orderflow.platform.db import Database

log = structlog.get_logger("orderflow.inventory.metrics")

MAX_SKUS = 1000

Levels = tuple[tuple[str, int, int, int], ...]  # (sku, available, reserved, sold)


class StockGauges(Collector):
    def __init__(
        self,
        database: Database,
        *,
        interval: float = 10.0,
        max_skus: int = MAX_SKUS,
        low_stock_threshold: int = DEFAULT_LOW_STOCK_THRESHOLD,
    ) -> None:
        self.database = database
        self.interval = interval
        self.max_skus = max_skus
        self.low_stock_threshold = low_stock_threshold
        self._levels: Levels = ()
        self._truncated = False
        self._low = 0
        self._refreshed = False

    async def refresh(self) -> None:
        """Read the stock of the first max_skus items (one more, to tell if there are more)
        and count the items at or below the low-stock threshold."""
        async with SqlInventoryUnitOfWork(self.database, readonly=True) as uow:
            found = await uow.items.page("", self.max_skus + 1)
            self._low = await uow.items.count_low(self.low_stock_threshold)
        self._truncated = len(found) > self.max_skus
        self._levels = tuple(
            (i.sku, i.available, i.reserved, i.sold) for i in found[: self.max_skus]
        )
        self._refreshed = True

    async def run(self, registry: CollectorRegistry) -> None:
        """Serve the gauges on registry, refreshing them until cancelled."""
        registry.register(self)
        try:
            while True:
                try:
                    await self.refresh()
                except Exception as exc:  # keep the last snapshot; try again next round
                    log.warning("stock_metrics_failed", error=str(exc))
                await asyncio.sleep(self.interval)
        finally:
            registry.unregister(self)

    def collect(self) -> Iterable[Metric]:
        if not self._refreshed:
            return []
        stock = GaugeMetricFamily(
            "orderflow_stock",
            f"Units of stock by sku and state (the first {self.max_skus} skus by sku).",
            labels=["sku", "state"],
        )
        for sku, available, reserved, sold in self._levels:
            stock.add_metric([sku, "available"], available)
            stock.add_metric([sku, "reserved"], reserved)
            stock.add_metric([sku, "sold"], sold)
        truncated = GaugeMetricFamily(
            "orderflow_stock_truncated",
            f"1 when the catalog has more than {self.max_skus} skus (the rest have no gauges).",
            value=1 if self._truncated else 0,
        )
        low = GaugeMetricFamily(
            "orderflow_stock_low_items",
            "Items whose available stock is at or below the low-stock threshold (all items).",
            value=self._low,
        )
        threshold = GaugeMetricFamily(
            "orderflow_stock_low_threshold",
            "The low-stock threshold: an item is low when available is at or below it.",
            value=self.low_stock_threshold,
        )
        return [stock, truncated, low, threshold]
