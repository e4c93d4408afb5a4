"""`orderflow run --workers`: how many workers `auto` means, how the services are spread over
them, and the one /metrics made of every process's registry (ADR 35)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.process_collector import ProcessCollector

from orderflow import supervisor
from orderflow.platform.metrics import MetricsEndpoint, ServiceMetrics, serve_metrics
from orderflow.registry import SERVICE_NAMES
from orderflow.supervisor import MergedMetrics, Supervisor, resolve_workers, workers_for


@pytest.mark.parametrize(("cores", "expected"), [(1, 0), (2, 3), (8, 3)])
def test_auto_uses_workers_only_with_more_than_one_core(
    monkeypatch: pytest.MonkeyPatch, cores: int, expected: int
) -> None:
    monkeypatch.setattr(supervisor, "cores", lambda: cores)
    assert resolve_workers("auto") == expected


def test_a_worker_count_is_a_number_from_0_to_3() -> None:
    assert [resolve_workers(str(n)) for n in range(4)] == [0, 1, 2, 3]
    for bad in ("4", "-1", "many", ""):
        with pytest.raises(ValueError):
            resolve_workers(bad)


@pytest.mark.parametrize("count", [1, 2, 3])
def test_every_service_is_in_exactly_one_worker(count: int) -> None:
    workers = workers_for(count, "/run/x")
    hosted = [service for w in workers for service in w.services]
    assert sorted(hosted) == sorted(SERVICE_NAMES)
    assert len(workers) == count
    assert len({w.listen for w in workers}) == count
    assert all(w.listen.startswith("unix:/run/x/") for w in workers)


@pytest.fixture
def worker_endpoints() -> Iterator[list[tuple[ServiceMetrics, MetricsEndpoint]]]:
    made = []
    for _ in range(2):
        metrics = ServiceMetrics()  # with process metrics, as a worker's
        made.append((metrics, serve_metrics(metrics.registry, "127.0.0.1", 0)))
    yield made
    for _, endpoint in made:
        endpoint.close()


def test_one_metrics_page_merges_every_process(
    worker_endpoints: list[tuple[ServiceMetrics, MetricsEndpoint]],
) -> None:
    workers = workers_for(2, "/run/x")
    for worker, (metrics, endpoint) in zip(workers, worker_endpoints, strict=True):
        worker.metrics_port = endpoint.port
        metrics.observe_rpc(f"/svc.{worker.name}/Call", "OK", 0.01)
    local = CollectorRegistry()
    ProcessCollector(registry=local)
    api_calls = Counter(
        "orderflow_rpc_requests", "calls", ["service", "method", "code"], registry=local
    )
    api_calls.labels("orderflow.api.v1.OrderingService", "PlaceOrder", "OK").inc(3)
    page = CollectorRegistry()
    page.register(MergedMetrics(local, Supervisor(workers, "/run/x/bus.sock", {})))
    text = generate_latest(page).decode()

    families = list(text_string_to_metric_families(text))
    names = [f.name for f in families]
    assert len(names) == len(set(names)), "a metric family appears twice"
    rpcs = next(f for f in families if f.name == "orderflow_rpc_requests")
    counted = {s.labels["service"]: s.value for s in rpcs.samples if s.name.endswith("_total")}
    assert counted == {
        "orderflow.api.v1.OrderingService": 3.0,
        "svc.orders": 1.0,
        "svc.inventory+loyalty": 1.0,
    }
    cpu = next(f for f in families if f.name == "process_cpu_seconds")
    assert {s.labels["process"] for s in cpu.samples} == {"gateway", "orders", "inventory+loyalty"}

    # A worker that is down (restarting) is left out; the page still answers.
    workers[1].metrics_port = worker_endpoints[1][1].port
    worker_endpoints[1][1].close()
    text = generate_latest(page).decode()
    assert 'service="svc.orders"' in text and 'service="svc.inventory+loyalty"' not in text
