"""Prometheus metrics of the gateway: HTTP traffic, saga outcomes and steps, recovery actions,
open WatchOrder streams, whether each service answers SERVING; and the last hour of outcomes and
step times, for the console's charts."""

from __future__ import annotations

import math
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from orderflow.gateway.saga import SagaObserver

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class StepLatency:
    step: str
    count: int
    p50: float
    p99: float


class RecentActivity:
    """What this gateway's sagas did in the last `minutes`: outcomes per minute, and the
    duration of each saga step (the newest `samples` per step). Prometheus keeps only
    totals since start; the console charts want the recent shape (ADR 30)."""

    def __init__(
        self,
        minutes: int = 60,
        samples: int = 2000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.minutes = minutes
        self.clock = clock
        self._outcomes: dict[int, Tally[str]] = {}
        self._samples = samples
        self._steps: dict[str, deque[tuple[float, float]]] = {}

    def outcome(self, outcome: str) -> None:
        minute = int(self.clock() // 60)
        tally = self._outcomes.get(minute)
        if tally is None:
            oldest = minute - self.minutes
            for old in [m for m in self._outcomes if m <= oldest]:
                del self._outcomes[old]
            tally = self._outcomes[minute] = Tally()
        tally[outcome] += 1

    def step(self, step: str, seconds: float) -> None:
        times = self._steps.get(step)
        if times is None:
            times = self._steps[step] = deque(maxlen=self._samples)
        times.append((self.clock(), seconds))

    def per_minute(self) -> list[tuple[int, dict[str, int]]]:
        """(minute start as epoch seconds, outcome -> count) for each of the last minutes,
        oldest first, the current minute last."""
        now = int(self.clock() // 60)
        return [
            (m * 60, dict(self._outcomes.get(m, {})))
            for m in range(now - self.minutes + 1, now + 1)
        ]

    def latency(self) -> list[StepLatency]:
        """p50 and p99 (nearest rank) of each step's durations within the last minutes."""
        since = self.clock() - self.minutes * 60
        found = []
        for step, times in sorted(self._steps.items()):
            values = sorted(seconds for at, seconds in times if at >= since)
            if values:
                found.append(
                    StepLatency(step, len(values), _rank(values, 0.50), _rank(values, 0.99))
                )
        return found


def _rank(ordered: list[float], q: float) -> float:
    """The nearest-rank q-quantile of a sorted, non-empty list."""
    index = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


class GatewayMetrics(SagaObserver):
    """Every metric on its own registry, so each app (and each test) has fresh counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.recent = RecentActivity()
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

        self.service_serving = Gauge(
            "orderflow_service_serving",
            "1 while the service's gRPC health check answers SERVING to this gateway, else 0.",
            ["service"],
            registry=self.registry,
        )

    def outcome(self, outcome: str, reason: str) -> None:
        self.saga_outcomes.labels(outcome, reason or "none").inc()
        self.recent.outcome(outcome)

    def step(self, step: str, seconds: float, ok: bool) -> None:
        child = self._steps.get((step, ok))
        if child is None:
            child = self._steps[(step, ok)] = self.saga_steps.labels(step, str(ok).lower())
        child.observe(seconds)
        self.recent.step(step, seconds)

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

    def serving(self, states: Mapping[str, str]) -> None:
        """Record each service's health as the gateway last saw it (readiness.check())."""
        for service, state in states.items():
            self.service_serving.labels(service).set(1 if state == "SERVING" else 0)
