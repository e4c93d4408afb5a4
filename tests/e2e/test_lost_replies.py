"""A reply lost after the service committed (issue 12): a proxy between the gateway and each
service drops the service's reply to one chosen call and resets the gateway's connection
(tests/e2e/tcp_proxy.py). The gateway sees UNAVAILABLE, retries on a new connection, and
the service answers the repeat from what it stored: every admin change and every step of
the order saga has exactly one effect, and the REST client gets the success reply.

Per-service mode, on SQLite and on PostgreSQL, events over a JetStream of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import NullPool, text
from sqlalchemy.ext.asyncio import create_async_engine

from orderflow.registry import SERVICE_NAMES
from tests.conftest import pg_databases_sync
from tests.e2e.conftest import eventually, item, points, start, unique
from tests.e2e.nats import NatsServer
from tests.e2e.tcp_proxy import LossyProxy
from tests.system import System, per_service

pytestmark = pytest.mark.slow


@dataclass
class Lossy:
    system: System
    proxies: dict[str, LossyProxy]
    urls: dict[str, str]

    async def rows(self, service: str, query: str, **params: Any) -> list[tuple[Any, ...]]:
        engine = create_async_engine(self.urls[service], poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                result = await conn.execute(text(query), params)
                return [tuple(row) for row in result.all()]
        finally:
            await engine.dispose()


def sqlite_urls(workdir: Path) -> tuple[dict[str, str], Any]:
    return {n: f"sqlite+aiosqlite:///{workdir}/{n}.db" for n in SERVICE_NAMES}, lambda: None


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def lossy(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Lossy]:
    workdir = tmp_path_factory.mktemp(f"lossy-{request.param}")
    urls, drop = (
        sqlite_urls(workdir)
        if request.param == "sqlite"
        else pg_databases_sync(list(SERVICE_NAMES))
    )
    nats = NatsServer(workdir)
    nats.start()
    system = per_service(workdir, urls, {"ORDERFLOW_NATS_URL": nats.url})
    env = system.processes["gateway"].env
    proxies: dict[str, LossyProxy] = {}
    try:
        for name in SERVICE_NAMES:
            proxy = LossyProxy("127.0.0.1", int(env[f"ORDERFLOW_{name.upper()}_PORT"]))
            proxy.start()
            proxies[name] = proxy
            env[f"ORDERFLOW_GATEWAY_{name.upper()}_TARGET"] = f"127.0.0.1:{proxy.port}"
        yield Lossy(start(system), proxies, urls)
    finally:
        system.stop()
        for proxy in proxies.values():
            proxy.stop()
        drop()
        nats.stop()


@pytest.fixture
async def api(lossy: Lossy) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=lossy.system.base_url, timeout=30) as client:
        yield client


class Loses:
    """`with Loses(proxy): ...` — the block made the proxy lose exactly one reply."""

    def __init__(self, proxy: LossyProxy, marker: str, nth: int = 1) -> None:
        self.proxy, self.marker, self.nth = proxy, marker, nth

    def __enter__(self) -> None:
        self.before = self.proxy.resets
        self.proxy.arm(self.marker, self.nth)

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            assert not self.proxy.armed, "the call to lose never went through the proxy"
            assert self.proxy.resets == self.before + 1, "no reply was lost"


async def create_item(api: httpx.AsyncClient, sku: str, stock: int) -> httpx.Response:
    body = {"sku": sku, "name": f"Item {sku}", "price": 1000, "stock": stock}
    return await api.post("/api/v1/items", json=body)


async def test_restock(api: httpx.AsyncClient, lossy: Lossy) -> None:
    sku = unique("RS")
    assert (await create_item(api, sku, 5)).status_code == 201
    with Loses(lossy.proxies["inventory"], sku):
        reply = await api.patch(f"/api/v1/items/{sku}", json={"restock": 1})
    assert reply.status_code == 200, reply.text
    assert reply.json()["available"] == 6
    assert (await item(api, sku))["available"] == 6
    changed = await lossy.rows(
        "inventory",
        "SELECT COUNT(*) FROM outbox WHERE aggregate_id = :sku "
        "AND event_type LIKE '%item.changed%'",
        sku=sku,
    )
    assert changed == [(2,)]  # created, restocked once


async def test_item_creation(api: httpx.AsyncClient, lossy: Lossy) -> None:
    sku = unique("NEW")
    with Loses(lossy.proxies["inventory"], sku):
        reply = await create_item(api, sku, 4)
    assert reply.status_code == 201, reply.text
    assert reply.json()["available"] == 4
    assert (await item(api, sku))["available"] == 4


async def test_points_adjustment(api: httpx.AsyncClient, lossy: Lossy) -> None:
    customer = unique("pts")
    with Loses(lossy.proxies["loyalty"], customer):
        reply = await api.post(
            f"/api/v1/customers/{customer}/loyalty/points", json={"delta": 7, "reason": "gift"}
        )
    assert reply.status_code == 200, reply.text
    assert reply.json()["points"] == 7
    assert await points(api, customer) == 7
    ledger = await lossy.rows(
        "loyalty", "SELECT delta FROM ledger WHERE customer_id = :c", c=customer
    )
    assert ledger == [(7,)]


async def test_tier_change(api: httpx.AsyncClient, lossy: Lossy) -> None:
    customer = unique("tier")
    assert (
        await api.put(f"/api/v1/customers/{customer}/loyalty", json={"tier": "silver"})
    ).status_code == 200
    with Loses(lossy.proxies["loyalty"], customer):
        reply = await api.put(f"/api/v1/customers/{customer}/loyalty", json={"tier": "gold"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["tier"] == "gold"
    changes = await lossy.rows(
        "loyalty",
        "SELECT COUNT(*) FROM outbox WHERE aggregate_id = :c AND event_type LIKE '%tier.changed%'",
        c=customer,
    )
    assert changes == [(2,)]  # opened at silver, then gold once


# The saga's steps, and how each one's request is told apart: the service it goes to, the
# value its message carries ("customer" or "sku"), and which such request it is.
SAGA_STEPS = {
    "CreateOrder": ("orders", "customer", 1),
    "ReserveStock": ("inventory", "sku", 1),
    "ApplyDiscount": ("loyalty", "customer", 1),
    "ConfirmOrder": ("orders", "sku", 2),  # after CreateOrder, which carries the sku too
}


@pytest.mark.parametrize("step", list(SAGA_STEPS))
async def test_order_path(api: httpx.AsyncClient, lossy: Lossy, step: str) -> None:
    sku, customer = unique("ORD"), unique("buyer")
    assert (await create_item(api, sku, 10)).status_code == 201
    seeded = await api.post(
        f"/api/v1/customers/{customer}/loyalty/points", json={"delta": 100, "reason": "seed"}
    )
    assert seeded.status_code == 200
    service, marker, nth = SAGA_STEPS[step]
    order = {"customer_id": customer, "items": [{"sku": sku, "quantity": 2}], "redeem_points": 10}
    with Loses(lossy.proxies[service], customer if marker == "customer" else sku, nth):
        reply = await api.post("/api/v1/orders", json=order)
    assert reply.status_code == 201, reply.text
    placed = reply.json()
    assert (placed["status"], placed["total"], placed["points_redeemed"]) == ("CONFIRMED", 1990, 10)
    listed = (await api.get("/api/v1/orders", params={"customer_id": customer})).json()
    assert [o["id"] for o in listed["orders"]] == [placed["id"]]

    async def counters() -> tuple[int, int, int]:
        now = await item(api, sku)
        return now["available"], now["reserved"], now["sold"]

    await eventually(counters, (8, 0, 2), timeout=20)
    await eventually(lambda: points(api, customer), 100 - 10 + 19, timeout=20)
    ledger = await lossy.rows(
        "loyalty", "SELECT kind, delta FROM ledger WHERE customer_id = :c ORDER BY id", c=customer
    )
    assert ledger == [("ADJUST", 100), ("REDEEM", -10), ("EARN", 19)]
    reservations = await lossy.rows(
        "inventory", "SELECT state FROM reservations WHERE order_id = :o", o=placed["id"]
    )
    assert reservations == [("COMMITTED",)]
