"""Prometheus metrics of a gRPC server: calls by method and status code, and how to serve them.

Every server gets its own `ServiceMetrics` (its own registry): nothing is created at
import time, and servers in one process (or one test) never share counters. A service
with metrics of its own (inventory's stock levels) adds them to that registry while the
server runs. `serve_metrics()` exposes a registry over HTTP on a port of its own
(per-service mode); in one-process mode the gateway's /metrics includes the registry.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def split_method(full_method: str) -> tuple[str, str]:
    """'/pkg.Service/Method' -> ('pkg.Service', 'Method')."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service or "unknown", method or full_method


class ServiceMetrics:
    """RPCs handled by one gRPC server, on a registry of its own."""

    def __init__(self, *, process: bool = True) -> None:
        self.registry = CollectorRegistry()
        self.rpcs = Counter(
            "orderflow_rpc_requests",
            "gRPC calls handled, by service, method and status code.",
            ["service", "method", "code"],
            registry=self.registry,
        )
        self.rpc_latency = Histogram(
            "orderflow_rpc_duration_seconds",
            "Time to handle a gRPC call, by service, method and status code.",
            ["service", "method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        if process:
            ProcessCollector(registry=self.registry)
        # Each (method, code)'s children, looked up once: labels() costs a lock and a
        # dict look-up per metric on every call otherwise.
        self._children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}

    def observe_rpc(self, full_method: str, code: str, seconds: float) -> None:
        children = self._children.get((full_method, code))
        if children is None:
            service, method = split_method(full_method)
            children = (
                self.rpcs.labels(service, method, code),
                self.rpc_latency.labels(service, method, code),
            )
            self._children[(full_method, code)] = children
        children[0].inc()
        children[1].observe(seconds)


class RegistryCollector(Collector):
    """Another registry's metrics, as one collector (to merge registries in one exposition)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()


@dataclass
class MetricsEndpoint:
    """A registry served over HTTP (prometheus_client's server, in a thread of its own)."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> MetricsEndpoint:
    """Serve registry at http://host:port/metrics (port 0 picks a free port)."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsEndpoint(server, thread)
