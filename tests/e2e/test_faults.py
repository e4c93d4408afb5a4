"""Failures of real processes: a service stopped or frozen, the gateway killed mid-flight."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import pg_databases_sync
from tests.e2e.conftest import (
    SERVICES,
    eventually,
    item,
    new_customer,
    new_item,
    points,
    start,
    unique,
)
from tests.e2e.nats import NatsServer
from tests.invariants import database_urls, read_databases, unfinished, violations
from tests.system import System, free_port, per_service, wait_until

pytestmark = pytest.mark.postgres

# Short leases and a quick recovery loop, so a test does not wait long for recovery.
FAST_RECOVERY = {
    "ORDERFLOW_GATEWAY_REQUEST_TIMEOUT_SECONDS": "3",
    "ORDERFLOW_GATEWAY_RPC_TIMEOUT_SECONDS": "1",
    "ORDERFLOW_GATEWAY_LEASE_SECONDS": "4",
    "ORDERFLOW_GATEWAY_RECOVERY_INTERVAL_SECONDS": "0.5",
}
# The gauges the alerts read (deploy/observability/alerts.yaml), refreshed quickly.
FAST_GAUGES = {
    "ORDERFLOW_GATEWAY_SERVICE_HEALTH_INTERVAL_SECONDS": "0.2",
    "ORDERFLOW_ORDERS_STUCK_METRICS_INTERVAL_SECONDS": "0.2",
}


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    workdir = tmp_path_factory.mktemp("faults")
    nats = NatsServer(workdir)
    nats.start()
    urls, drop = pg_databases_sync(SERVICES)
    env = {
        **FAST_RECOVERY,
        **FAST_GAUGES,
        "ORDERFLOW_NATS_URL": nats.url,
        "ORDERFLOW_ORDERS_METRICS_PORT": str(free_port()),
    }
    system = per_service(workdir, urls, env)
    try:
        yield start(system)
    finally:
        system.stop()
        drop()
        nats.stop()


@pytest.fixture
async def api(faulty: System) -> Any:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=faulty.base_url, timeout=30, limits=limits) as client:
        yield client


async def orders_in_database(system: System, at_least: int, timeout: float) -> None:
    """Wait until the orders service's database holds at_least orders (read directly, so
    the wait adds nothing to the gateway's queue)."""
    url = system.processes["orders"].env["ORDERFLOW_ORDERS_DATABASE_URL"]
    engine = create_async_engine(url)
    try:

        async def enough() -> bool:
            async with engine.connect() as conn:
                count = (await conn.execute(text("SELECT count(*) FROM orders"))).scalar_one()
            return int(count) >= at_least

        await wait_until(enough, timeout, f"{at_least} orders in the orders database", every=0.02)
    finally:
        await engine.dispose()


async def _settled(history: Any) -> bool:
    steps = await history()
    return bool(steps) and steps[-1][0] == "settle"


async def test_loyalty_down_gives_503_compensates_and_recovers(
    faulty: System, api: httpx.AsyncClient
) -> None:
    sku = await new_item(api, price=1000, stock=5)
    customer = await new_customer(api, tier="gold", points=100)
    body = {"customer_id": customer, "items": [{"sku": sku, "quantity": 2}], "redeem_points": 50}
    faulty.stop("loyalty")
    try:
        started = time.monotonic()
        response = await api.post("/api/v1/orders", json=body)
        elapsed = time.monotonic() - started
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "SERVICE_UNAVAILABLE"
        order_id = error["details"]["order_id"]
        assert error["details"]["status"] == "REJECTED"
        assert elapsed < 3 + 1  # the request budget, plus slack for a loaded machine
        # Stock released; reads that do not need loyalty keep working.
        after = await item(api, sku)
        assert (after["available"], after["reserved"], after["sold"]) == (5, 0, 0)
        fetched = await api.get(f"/api/v1/orders/{order_id}")
        assert fetched.status_code == 200 and fetched.json()["status"] == "REJECTED"
        listing = await api.get("/api/v1/orders", params={"customer_id": customer})
        assert [o["id"] for o in listing.json()["orders"]] == [order_id]
        ready = await api.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["error"]["details"]["services"]["loyalty"] != "SERVING"
    finally:
        faulty.start("loyalty")
    faulty.wait_ready()

    # The undo loyalty could not take is run by recovery; the order's history tells it all.
    async def history() -> list[tuple[str, str, str]]:
        body = (await api.get(f"/api/v1/orders/{order_id}/history")).json()
        return [(x["step"], x["outcome"], x["driver"]) for x in body["steps"]]

    await wait_until(
        lambda: _settled(history), timeout=30, what="recovery settled the rejected order"
    )
    steps = await history()
    assert steps[:6] == [
        ("create", "ok", "request"),
        ("reserve", "ok", "request"),
        ("apply_discount", "unknown", "request"),
        ("reject", "ok", "request"),
        ("void_discount", "unknown", "request"),
        ("release", "ok", "request"),
    ], steps
    assert steps[-4:] == [
        ("claim", "ok", "recovery"),
        ("void_discount", "ok", "recovery"),
        ("release", "ok", "recovery"),
        ("settle", "ok", "recovery"),
    ], steps
    # Without restarting anything else, orders are confirmed again.
    response = await api.post("/api/v1/orders", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "CONFIRMED"
    earned = response.json()["points_earned"]
    await eventually(lambda: points(api, customer), 100 - 50 + earned)


async def test_loyalty_down_shows_in_the_gauges_the_alerts_read(
    faulty: System, api: httpx.AsyncClient
) -> None:
    """With loyalty stopped, the gateway reports it not serving and, once the order's lease
    has run out, the orders service counts the order stuck; with loyalty back, recovery
    settles it and both gauges clear (OrderflowServiceNotServing, OrderflowOrdersStuck)."""
    orders_metrics = int(faulty.processes["orders"].env["ORDERFLOW_ORDERS_METRICS_PORT"])

    async def gauge(url: str, name: str, **labels: str) -> float | None:
        page = (await api.get(url)).text
        for family in text_string_to_metric_families(page):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return None

    def serving(service: str) -> Awaitable[float | None]:
        return gauge("/metrics", "orderflow_service_serving", service=service)

    def stuck() -> Awaitable[float | None]:
        url = f"http://127.0.0.1:{orders_metrics}/metrics"
        return gauge(url, "orderflow_orders_stuck", status="REJECTED")

    async def equals(read: Callable[[], Awaitable[float | None]], value: float) -> bool:
        return await read() == value

    await wait_until(lambda: equals(lambda: serving("loyalty"), 1), 10, "loyalty serving")
    await wait_until(lambda: equals(stuck, 0), 10, "no stuck order")
    sku = await new_item(api, price=1000, stock=5)
    customer = await new_customer(api, tier="gold", points=100)
    body = {"customer_id": customer, "items": [{"sku": sku, "quantity": 1}], "redeem_points": 10}
    faulty.stop("loyalty")
    try:
        await wait_until(lambda: equals(lambda: serving("loyalty"), 0), 10, "loyalty not serving")
        assert await serving("inventory") == 1 and await serving("orders") == 1
        response = await api.post("/api/v1/orders", json=body)
        assert response.status_code == 503, response.text
        # Rejected, its discount not yet voided: stuck once its lease (4 s) has run out.
        await wait_until(lambda: equals(stuck, 1), 15, "the rejected order counted stuck")
    finally:
        faulty.start("loyalty")
    faulty.wait_ready()
    await wait_until(lambda: equals(lambda: serving("loyalty"), 1), 10, "loyalty serving again")
    await wait_until(lambda: equals(stuck, 0), 30, "recovery settled the stuck order")


async def test_duplicate_while_the_first_is_stuck_gets_409(
    faulty: System, api: httpx.AsyncClient
) -> None:
    sku = await new_item(api, price=1000, stock=5)
    customer = await new_customer(api)
    body = {"customer_id": customer, "items": [{"sku": sku, "quantity": 1}]}
    headers = {"Idempotency-Key": unique("key")}
    loyalty = faulty.processes["loyalty"].popen
    assert loyalty is not None
    os.kill(loyalty.pid, signal.SIGSTOP)  # the first request hangs at ApplyDiscount
    try:
        first = asyncio.create_task(api.post("/api/v1/orders", json=body, headers=headers))
        await asyncio.sleep(0.5)
        duplicate = await api.post("/api/v1/orders", json=body, headers=headers)
        assert duplicate.status_code == 409, duplicate.text
        assert duplicate.json()["error"]["code"] == "REQUEST_IN_PROGRESS"
    finally:
        os.kill(loyalty.pid, signal.SIGCONT)
    original = await first
    replay = await api.post("/api/v1/orders", json=body, headers=headers)
    assert replay.status_code == original.status_code
    assert (
        replay.json()["error" if replay.status_code >= 400 else "id"]
        == original.json()["error" if original.status_code >= 400 else "id"]
    )


async def test_second_cancel_while_the_first_holds_the_order_gets_409_not_500(
    faulty: System, api: httpx.AsyncClient
) -> None:
    """Two writes to one order at once: the later one is refused as a conflict (LEASE_HELD),
    the order is left to the first, and recovery finishes it once loyalty answers again."""
    sku = await new_item(api, price=1000, stock=5)
    customer = await new_customer(api, tier="gold", points=100)
    body = {"customer_id": customer, "items": [{"sku": sku, "quantity": 2}], "redeem_points": 50}
    placed = await api.post("/api/v1/orders", json=body)
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]
    earned = placed.json()["points_earned"]
    await eventually(lambda: points(api, customer), 100 - 50 + earned)  # settled
    loyalty = faulty.processes["loyalty"].popen
    assert loyalty is not None
    os.kill(loyalty.pid, signal.SIGSTOP)  # the first cancel hangs at RefundDiscount
    try:
        first = asyncio.create_task(api.post(f"/api/v1/orders/{order_id}/cancel"))
        await asyncio.sleep(0.5)
        second = await api.post(f"/api/v1/orders/{order_id}/cancel")
        assert second.status_code == 409, second.text
        error = second.json()["error"]
        assert error["code"] == "LEASE_HELD"
        assert error["details"]["order_id"] == order_id
        stuck = await first
        assert stuck.status_code == 503, stuck.text
        assert stuck.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    finally:
        os.kill(loyalty.pid, signal.SIGCONT)

    async def cancelled() -> bool:
        order = (await api.get(f"/api/v1/orders/{order_id}")).json()
        return bool(order["status"] == "CANCELLED")

    await wait_until(cancelled, timeout=20, what="recovery finished the cancel")
    assert (await item(api, sku))["available"] == 5
    assert await points(api, customer) == 100
    again = await api.post(f"/api/v1/orders/{order_id}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "CANCELLED"


async def test_gateway_killed_with_200_orders_in_flight_recovers_everything(
    faulty: System, api: httpx.AsyncClient
) -> None:
    stock = 60
    skus = [await new_item(api, price=1500, stock=stock) for _ in range(3)]
    customers = [await new_customer(api, tier="silver", points=1000) for _ in range(5)]
    rng = random.Random(7)
    bodies = [
        {
            "customer_id": rng.choice(customers),
            "items": [{"sku": sku, "quantity": rng.randint(1, 2)} for sku in rng.sample(skus, 2)],
            "redeem_points": rng.choice([0, 10]),
        }
        for _ in range(200)
    ]

    async def place(body: dict[str, Any]) -> int:
        try:
            return (await api.post("/api/v1/orders", json=body)).status_code
        except httpx.HTTPError:
            return -1

    in_flight = [asyncio.create_task(place(b)) for b in bodies]
    # Kill the gateway once the orders service holds some of these orders, not after a
    # fixed delay: on a busy machine none may have got that far in a few tenths of a second.
    await orders_in_database(faulty, at_least=10, timeout=20)
    faulty.kill("gateway")
    codes = await asyncio.gather(*in_flight)
    assert -1 in codes, "the gateway died after every order had finished: nothing was in flight"
    faulty.start("gateway")
    faulty.wait_ready()

    async def all_orders() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for customer in customers:
            cursor = None
            while True:
                params: dict[str, Any] = {"customer_id": customer, "limit": 100}
                if cursor:
                    params["cursor"] = cursor
                page = (await api.get("/api/v1/orders", params=params)).json()
                found += page["orders"]
                cursor = page["next_cursor"]
                if not cursor:
                    break
        return found

    async def settled() -> bool:
        orders = await all_orders()
        if any(o["status"] == "PENDING" for o in orders):
            return False
        reserved = [(await item(api, sku))["reserved"] for sku in skus]
        return all(n == 0 for n in reserved)

    took = await wait_until(settled, timeout=30, what="every order terminal and settled")
    print(f"recovered in {took:.1f}s after the gateway restarted")
    orders = await all_orders()
    assert orders, "no order reached the orders service"
    assert {o["status"] for o in orders} <= {"CONFIRMED", "REJECTED"}
    confirmed = [o for o in orders if o["status"] == "CONFIRMED"]
    for sku in skus:
        now = await item(api, sku)
        assert now["available"] + now["reserved"] + now["sold"] == stock
        assert min(now["available"], now["reserved"], now["sold"]) >= 0
        sold = sum(x["quantity"] for o in confirmed for x in o["items"] if x["sku"] == sku)
        assert now["sold"] == sold
    for customer in customers:
        mine = [o for o in confirmed if o["customer_id"] == customer]
        expected = 1000 - sum(o["points_redeemed"] for o in mine)
        expected += sum(o["points_earned"] for o in mine)
        assert await points(api, customer) == expected

    # And every invariant of the design, read from the databases themselves.
    urls = database_urls(faulty)

    async def converged() -> bool:
        return not unfinished(await read_databases(urls))

    await wait_until(converged, timeout=30, what="every order finished in the databases")
    assert violations(await read_databases(urls)) == []
