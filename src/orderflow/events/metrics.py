"""Prometheus metrics of the outbox, the relay and the consumers, on a registry passed in.

One `EventMetrics` per registry; every relay and consumer runner on it labels its series
(`service`, `consumer`), so one process with three services exposes them side by side.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge


class EventMetrics:
    """orderflow_outbox_pending, orderflow_outbox_oldest_age_seconds,
    orderflow_events_published_total, orderflow_events_publish_failures_total,
    orderflow_events_consumed_total{consumer,outcome} and orderflow_events_parked."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.outbox_pending = Gauge(
            "orderflow_outbox_pending",
            "Outbox rows not yet published, by service.",
            ["service"],
            registry=registry,
        )
        self.outbox_oldest_age = Gauge(
            "orderflow_outbox_oldest_age_seconds",
            "Age of the oldest unpublished outbox row (0 when none), by service.",
            ["service"],
            registry=registry,
        )
        self.published = Counter(
            "orderflow_events_published",
            "Events the broker acknowledged, by service and event type.",
            ["service", "type"],
            registry=registry,
        )
        self.publish_failures = Counter(
            "orderflow_events_publish_failures",
            "Relay batches the broker did not take in full, by service.",
            ["service"],
            registry=registry,
        )
        self.consumed = Counter(
            "orderflow_events_consumed",
            "Events a consumer received, by consumer and outcome "
            "(handled, duplicate, ignored, retried, parked, redriven).",
            ["consumer", "outcome"],
            registry=registry,
        )
        self.parked = Gauge(
            "orderflow_events_parked",
            "Events parked by a consumer after failing too often, by consumer.",
            ["consumer"],
            registry=registry,
        )
        self._oldest_us: dict[str, int | None] = {}

    def set_outbox(self, service: str, pending: int, oldest_created_us: int | None) -> None:
        """Record the backlog; the oldest row's age keeps growing between refreshes."""
        self.outbox_pending.labels(service).set(pending)
        if service not in self._oldest_us:
            self.outbox_oldest_age.labels(service).set_function(lambda: self._age(service))
        self._oldest_us[service] = oldest_created_us

    def _age(self, service: str) -> float:
        oldest = self._oldest_us.get(service)
        if oldest is None:
            return 0.0
        return max(time.time() - oldest / 1_000_000, 0.0)
