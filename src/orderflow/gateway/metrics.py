"""Prometheus metrics of the gateway: HTTP traffic, saga outcomes and steps, recovery actions,
open WatchOrder streams."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from orderflow.gateway.saga import SagaObserver

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GatewayMetrics(SagaObserver):
    """Every metric on its own registry, so each app (and each test) has fresh counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "orderflow_http_requests",
            "HTTP requests by method, route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "orderflow_http_request_duration_seconds",
            "HTTP request latency by method and route.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.saga_outcomes = Counter(
            "orderflow_saga_outcomes",
            "Orders placed by outcome (confirmed, rejected, unfinished) and reason.",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.saga_steps = Histogram(
            "orderflow_saga_step_duration_seconds",
            "Saga step latency by step and result.",
            ["step", "ok"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.watch_streams = Gauge(
            "orderflow_grpc_watch_streams",
            "WatchOrder streams open on the gateway's gRPC API.",
            registry=self.registry,
        )
        self.recovery_actions = Counter(
            "orderflow_recovery_actions",
            "Orders the recovery worker acted on, by action.",
            ["action"],
            registry=self.registry,
        )
        # Children looked up once per label values (labels() costs a lock and a look-up).
        self._steps: dict[tuple[str, bool], Histogram] = {}
        self._requests: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def outcome(self, outcome: str, reason: str) -> None:
        self.saga_outcomes.labels(outcome, reason or "none").inc()

    def step(self, step: str, seconds: float, ok: bool) -> None:
        child = self._steps.get((step, ok))
        if child is None:
            child = self._steps[(step, ok)] = self.saga_steps.labels(step, str(ok).lower())
        child.observe(seconds)

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        """An HTTP request answered (route: its path template, or "unmatched")."""
        children = self._requests.get((method, route, status))
        if children is None:
            children = (
                self.http_requests.labels(method, route, str(status)),
                self.http_latency.labels(method, route),
            )
            self._requests[(method, route, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def recovery(self, action: str) -> None:
        self.recovery_actions.labels(action).inc()
