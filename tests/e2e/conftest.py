"""Started systems for end-to-end tests, over real HTTP, real gRPC and real databases."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from typing import Any

import httpx
import pytest

from orderflow.registry import SERVICE_NAMES
from tests.conftest import pg_databases_sync
from tests.e2e.nats import NatsServer
from tests.system import System, one_process, per_service, start_ready

SERVICES = list(SERVICE_NAMES)
# Start a system and wait until it is ready (tests import it from here).
start = start_ready


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test shows the end of each process log of the systems it used."""
    report: pytest.TestReport = yield
    if report.when == "call" and report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, System):
                report.sections.append((f"{value.mode} system logs", value.logs()))
    return report


# The two shared systems are started once per test session (per xdist worker) and used by
# every module that asks for them: a test there creates the items and customers it uses
# (new_item, new_customer), so what other tests did to the system does not matter to it,
# and a test that stops, kills or reconfigures processes starts a system of its own.
@pytest.fixture(scope="session")
def onebox_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    system = start(one_process(tmp_path_factory.mktemp("onebox")))
    yield system
    system.stop()


@pytest.fixture(scope="session")
def per_service_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """One process per service on PostgreSQL, events over a JetStream of its own."""
    workdir = tmp_path_factory.mktemp("per-service")
    nats = NatsServer(workdir)
    nats.start()
    urls, drop = pg_databases_sync(SERVICES)
    system = per_service(workdir, urls, {"ORDERFLOW_NATS_URL": nats.url})
    try:
        yield start(system)
    finally:
        system.stop()
        drop()
        nats.stop()


@pytest.fixture(scope="module", params=["one-process", "per-service"])
def system(request: pytest.FixtureRequest) -> System:
    """Parametrises a test over both ways of running (per-service on PostgreSQL)."""
    if request.param == "one-process":
        return request.getfixturevalue("onebox_system")
    return request.getfixturevalue("per_service_system")


@pytest.fixture
async def api(system: System) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30, limits=limits) as client:
        yield client


async def raw(port: int, request: bytes) -> bytes:
    """Send one HTTP/1.1 request as bytes; return the whole reply as bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def new_item(api: httpx.AsyncClient, price: int, stock: int) -> str:
    sku = unique("SKU")
    response = await api.post(
        "/api/v1/items", json={"sku": sku, "name": f"Item {sku}", "price": price, "stock": stock}
    )
    assert response.status_code == 201, response.text
    return sku


async def new_customer(api: httpx.AsyncClient, tier: str = "standard", points: int = 0) -> str:
    customer = unique("cust")
    response = await api.put(f"/api/v1/customers/{customer}/loyalty", json={"tier": tier})
    assert response.status_code == 200, response.text
    if points:
        response = await api.post(
            f"/api/v1/customers/{customer}/loyalty/points",
            json={"delta": points, "reason": "test setup"},
        )
        assert response.status_code == 200, response.text
    return customer


async def item(api: httpx.AsyncClient, sku: str) -> dict[str, Any]:
    response = await api.get(f"/api/v1/items/{sku}")
    assert response.status_code == 200, response.text
    return response.json()


async def points(api: httpx.AsyncClient, customer: str) -> int:
    response = await api.get(f"/api/v1/customers/{customer}/loyalty")
    assert response.status_code == 200, response.text
    return int(response.json()["points"])


async def stock(api: httpx.AsyncClient, sku: str) -> tuple[int, int, int]:
    """(available, reserved, sold) of an item."""
    now = await item(api, sku)
    return now["available"], now["reserved"], now["sold"]


async def eventually(
    read: Callable[[], Awaitable[Any]], expected: Any, timeout: float = 5.0
) -> None:
    """Poll read() until it gives expected. A confirmed order is answered at once; its stock
    becomes sold and its points are credited just after (by its order.confirmed event)."""
    deadline = time.monotonic() + timeout
    while (got := await read()) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"still {got!r} after {timeout}s, expected {expected!r}")
        await asyncio.sleep(0.02)
