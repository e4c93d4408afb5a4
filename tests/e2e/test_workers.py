"""`orderflow run --workers N` (ADR 35): the gateway in the command's process, the services
in child processes. What a user sees is the one-process mode's: an order confirmed and
finished by its events, every service on --grpc-port, one /metrics; and what an operator
checks: a worker that dies comes back, and stopping the command leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import psutil  # type: ignore[import-untyped]  # no stubs pinned
import pytest

from orderflow.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from tests.e2e.conftest import eventually, item, new_customer, new_item, points, start
from tests.system import System, one_process


def workers_system(workdir: Path, count: int, env: dict[str, str] | None = None) -> System:
    system = one_process(workdir, {"ORDERFLOW_LOG_LEVEL": "INFO", **(env or {})})
    system.processes["onebox"].argv += ["--workers", str(count)]
    return system


def workers_of(system: System) -> dict[str, psutil.Process]:
    """The command's worker processes, by worker name."""
    popen = system.processes["onebox"].popen
    assert popen is not None
    found = {}
    for child in psutil.Process(popen.pid).children():
        args = child.cmdline()
        if "orderflow.worker" in args:
            found[args[args.index("orderflow.worker") + 1]] = child
    return found


def log_events(system: System) -> list[dict[str, object]]:
    lines = system.processes["onebox"].log_path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def run_dirs(children: list[psutil.Process]) -> set[Path]:
    """The command's private directory of sockets, from its workers' arguments."""
    return {
        Path(arg.split(":", 1)[1]).parent
        for child in children
        for arg in child.cmdline()
        if arg.startswith("unix:")
    }


def gone(processes: list[psutil.Process], within: float) -> bool:
    _, alive = psutil.wait_procs(processes, timeout=within)
    return not alive


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    env = {"ORDERFLOW_INVENTORY_STOCK_METRICS_INTERVAL_SECONDS": "0.1"}
    system = start(workers_system(tmp_path_factory.mktemp("workers"), 2, env))
    yield system
    system.stop()


async def test_an_order_is_confirmed_and_finished_by_its_events(two_workers: System) -> None:
    assert sorted(workers_of(two_workers)) == ["inventory+loyalty", "orders"]
    async with httpx.AsyncClient(base_url=two_workers.base_url, timeout=30) as api:
        sku = await new_item(api, price=1250, stock=10)
        customer = await new_customer(api, tier="gold", points=500)
        order = {"customer_id": customer, "items": [{"sku": sku, "quantity": 2}]}
        placed = await api.post("/api/v1/orders", json={**order, "redeem_points": 100})
        assert placed.status_code == 201, placed.text
        body = placed.json()
        assert (body["status"], body["total"], body["points_earned"]) == ("CONFIRMED", 2150, 21)

        # Finished by its events, across the processes: stock sold, points earned, settled.
        async def sold() -> tuple[int, int, int]:
            now = await item(api, sku)
            return now["available"], now["reserved"], now["sold"]

        await eventually(sold, (8, 0, 2), timeout=10)
        await eventually(lambda: points(api, customer), 500 - 100 + 21, timeout=10)

        async def settled() -> bool:
            history = await api.get(f"/api/v1/orders/{body['id']}/history")
            return bool(history.json()["settled"])

        await eventually(settled, True, timeout=10)

        # One /metrics for every process: the services' calls and stock levels are there.
        page = (await api.get("/metrics")).text
        assert 'method="ReserveStock"' in page
        assert 'process_cpu_seconds_total{process="orders"}' in page

        async def sold_on_metrics() -> bool:
            page = (await api.get("/metrics")).text
            return f'orderflow_stock{{sku="{sku}",state="sold"}} 2.0' in page

        await eventually(sold_on_metrics, True, timeout=10)


async def test_every_service_answers_on_the_grpc_port(two_workers: System) -> None:
    argv = two_workers.processes["onebox"].argv
    target = f"127.0.0.1:{argv[argv.index('--grpc-port') + 1]}"
    async with grpc.aio.insecure_channel(target) as channel:
        stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        created = await stub.CreateItem(
            inventory_pb2.CreateItemRequest(sku="FRONT-1", name="Front", price=5, stock=3),
            timeout=10,
        )
        assert created.item.available == 3
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetItem(inventory_pb2.GetItemRequest(sku="NO-SUCH"), timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        # The service's error code travels in the trailing metadata, as from the service.
        assert dict(missing.value.trailing_metadata() or ()).get("orderflow-error-code") == (
            "NOT_FOUND"
        )


async def test_a_worker_that_dies_is_started_again(two_workers: System) -> None:
    before = workers_of(two_workers)["inventory+loyalty"]
    before.kill()
    async with httpx.AsyncClient(base_url=two_workers.base_url, timeout=30) as api:
        deadline = time.monotonic() + 30
        while (await api.get("/readyz")).status_code != 200 or not (
            (after := workers_of(two_workers).get("inventory+loyalty")) and after.pid != before.pid
        ):
            assert time.monotonic() < deadline, "the worker did not come back"
            time.sleep(0.2)
        died = [e for e in log_events(two_workers) if e.get("event") == "worker_died"]
        assert died and died[-1]["worker"] == "inventory+loyalty"
        assert died[-1]["status"] == "killed by SIGKILL"

        sku = await new_item(api, price=100, stock=5)
        customer = await new_customer(api)
        order = {"customer_id": customer, "items": [{"sku": sku, "quantity": 1}]}
        placed = await api.post("/api/v1/orders", json=order)
        assert placed.status_code == 201, placed.text

        async def sold() -> int:
            return int((await item(api, sku))["sold"])

        await eventually(sold, 1, timeout=10)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stopping_the_command_stops_every_worker(tmp_path: Path, sig: signal.Signals) -> None:
    system = start(workers_system(tmp_path, 3))
    process = system.processes["onebox"]
    assert process.popen is not None
    children = list(workers_of(system).values())
    assert len(children) == 3
    sockets = run_dirs(children)
    assert len(sockets) == 1
    process.popen.send_signal(sig)
    assert process.popen.wait(30) == 0
    assert gone(children, within=1), "a worker outlived the command"
    assert not any(d.exists() for d in sockets), "the command left its sockets behind"
    stopping = [e for e in log_events(system) if e.get("event") == "worker_stopping"]
    assert len(stopping) == 3  # each stopped when told, not orphaned


def test_workers_of_a_killed_command_stop_by_themselves(tmp_path: Path) -> None:
    system = start(workers_system(tmp_path, 2))
    children = list(workers_of(system).values())
    sockets = run_dirs(children)
    system.processes["onebox"].kill()
    assert gone(children, within=30), "a worker outlived its command"
    assert not any(d.exists() for d in sockets), "the workers left the sockets behind"
    orphaned = [e for e in log_events(system) if e.get("event") == "worker_orphaned"]
    assert len(orphaned) == 2


def test_a_bad_worker_count_is_refused(tmp_path: Path) -> None:
    system = workers_system(tmp_path, 9)
    done = subprocess.run(
        system.processes["onebox"].argv,
        env=system.processes["onebox"].env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--workers" in done.stderr and "between 0 and 3" in done.stderr
    assert not os.path.exists(tmp_path / "data")


def test_stopping_the_command_while_it_starts_leaves_nothing(tmp_path: Path) -> None:
    system = workers_system(tmp_path, 3)
    process = system.processes["onebox"]
    log = process.log_path.open("ab")
    popen = subprocess.Popen(
        process.argv, env=process.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()
    try:
        deadline = time.monotonic() + 30
        while not (children := [c for c in psutil.Process(popen.pid).children() if c.is_running()]):
            assert time.monotonic() < deadline and popen.poll() is None
            time.sleep(0.02)
        popen.send_signal(signal.SIGTERM)  # the workers are still loading their code
        assert popen.wait(30) == 0
        assert gone(children, within=1), "a process outlived the command"
    finally:
        if popen.poll() is None:
            popen.kill()
    stopped = [e for e in log_events(system) if e.get("event") == "stopped_while_starting"]
    assert stopped and stopped[0]["signal"] == "SIGTERM"
