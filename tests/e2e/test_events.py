"""Confirmed orders finished by their events over a real JetStream, one process per service
on PostgreSQL: the broker stopped while orders are placed, services SIGKILLed while the
backlog drains, a poison event parked and redriven, two inventory replicas sharing a relay
lease. Every check is what an operator would look at: statuses, stock, points, the stream,
the outbox, the metrics."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from orderflow.events import Event, JetStreamBus
from orderflow.events.consumer import ParkedEvent
from orderflow.events.operations import EventsDatabase, ServiceDatabase, all_parked
from orderflow.events.operations import redrive as request_redrive
from orderflow.events.v1 import events_pb2
from tests.conftest import pg_databases_sync
from tests.e2e.conftest import SERVICES, item, new_customer, new_item, points, start
from tests.e2e.nats import NatsServer
from tests.system import Process, System, free_port, per_service, wait_until

pytestmark = pytest.mark.postgres

STREAM = "ORDERFLOW_EVENTS"


@contextlib.asynccontextmanager
async def events_database(url: str, service: str) -> AsyncIterator[EventsDatabase]:
    """A service's database as `orderflow events` opens it."""
    db = EventsDatabase(ServiceDatabase(service, url))
    await db.open()
    try:
        yield db
    finally:
        await db.close()


async def parked_events(url: str, service: str) -> list[ParkedEvent]:
    """What `orderflow events parked` lists for the service (the same functions)."""
    async with events_database(url, service) as db:
        return [found.parked for found in await all_parked([db])]


async def redrive(url: str, service: str, event_id: str) -> int:
    """What `orderflow events redrive ID` does for the service: how many rows it marked."""
    async with events_database(url, service) as db:
        return len(await request_redrive([db], event_id))


FAST = {
    "ORDERFLOW_GATEWAY_REQUEST_TIMEOUT_SECONDS": "5",
    "ORDERFLOW_GATEWAY_LEASE_SECONDS": "8",
    "ORDERFLOW_GATEWAY_RECOVERY_INTERVAL_SECONDS": "0.5",
    # A relay's lease: a dead relay's successor takes over within it.
    "ORDERFLOW_EVENTS_RELAY_LEASE_SECONDS": "3",
    "ORDERFLOW_EVENTS_PUBLISH_TIMEOUT_SECONDS": "1",
    "ORDERFLOW_EVENTS_RELAY_MAX_BACKOFF_SECONDS": "1",
    # A consumer that died mid-batch has its deliveries again after this.
    "ORDERFLOW_EVENTS_ACK_WAIT_SECONDS": "3",
    "ORDERFLOW_EVENTS_MAX_ATTEMPTS": "3",
}


@dataclass
class Events:
    """A per-service system with its own NATS, its databases and metrics ports."""

    system: System
    nats: NatsServer
    urls: dict[str, str]
    metrics: dict[str, int]
    workdir: Path

    def dsn(self, service: str) -> str:
        return self.urls[service].replace("postgresql+asyncpg://", "postgresql://", 1)

    async def query(self, service: str, sql: str, *args: Any) -> list[Any]:
        conn = await asyncpg.connect(self.dsn(service))
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    async def metric(self, service: str, name: str, labels: str = "") -> float | None:
        """A sample from the service's /metrics (None when it is not there)."""
        async with httpx.AsyncClient(timeout=5) as client:
            text = (await client.get(f"http://127.0.0.1:{self.metrics[service]}/metrics")).text
        for line in text.splitlines():
            if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(f"{name} ")):
                return float(line.rsplit(" ", 1)[1])
        return None


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Events]:
    workdir = tmp_path_factory.mktemp("events")
    nats = NatsServer(workdir)
    nats.start()
    urls, drop = pg_databases_sync(SERVICES)
    metrics = {name: free_port() for name in SERVICES}
    env = {
        **FAST,
        "ORDERFLOW_NATS_URL": nats.url,
        **{f"ORDERFLOW_{n.upper()}_METRICS_PORT": str(p) for n, p in metrics.items()},
    }
    system = per_service(workdir, urls, env)
    try:
        yield Events(start(system), nats, urls, metrics, workdir)
    finally:
        system.stop()
        drop()
        nats.stop()


@pytest.fixture
async def api(events: Events) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
    async with httpx.AsyncClient(
        base_url=events.system.base_url, timeout=30, limits=limits
    ) as client:
        yield client


async def stream_events(url: str) -> list[tuple[Event, dict[str, str]]]:
    """Every event in the stream, in stream order, with its headers."""
    bus = JetStreamBus(url)
    try:
        js = await bus.jetstream()
        info = await js.stream_info(STREAM)
        first, count = info.state.first_seq, info.state.messages
        out = []
        for seq in range(first, first + count):
            msg = await js.get_msg(STREAM, seq)
            headers = dict(msg.headers or {})
            out.append((Event.decode(headers, msg.data or b""), headers))
        return out
    finally:
        await bus.close()


async def place_many(
    api: httpx.AsyncClient, n: int, seed: int
) -> tuple[list[str], list[str], int, int, list[dict[str, Any]]]:
    """n orders over 3 skus and 5 customers; (skus, customers, stock, points, replies)."""
    stock, start_points = 400, 1000
    skus = [await new_item(api, price=1500, stock=stock) for _ in range(3)]
    customers = [await new_customer(api, tier="silver", points=start_points) for _ in range(5)]
    rng = random.Random(seed)
    bodies = [
        {
            "customer_id": rng.choice(customers),
            "items": [{"sku": sku, "quantity": rng.randint(1, 2)} for sku in rng.sample(skus, 2)],
            "redeem_points": rng.choice([0, 10]),
        }
        for _ in range(n)
    ]
    limit = asyncio.Semaphore(20)

    async def place(body: dict[str, Any]) -> dict[str, Any]:
        async with limit:
            response = await api.post("/api/v1/orders", json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    replies = await asyncio.gather(*(place(b) for b in bodies))
    return skus, customers, stock, start_points, replies


async def check_finished(
    events: Events,
    api: httpx.AsyncClient,
    skus: list[str],
    customers: list[str],
    stock: int,
    start_points: int,
    orders: list[dict[str, Any]],
) -> list[Event]:
    """Every order settled, stock and points exactly as the orders say, each follow-up's
    event in the stream once, and one aggregate's events in the order they happened."""
    ids = [o["id"] for o in orders]

    async def all_settled() -> bool:
        rows = await events.query(
            "orders", "SELECT count(*) AS n FROM orders WHERE id = ANY($1) AND NOT settled", ids
        )
        return int(rows[0]["n"]) == 0

    took = await wait_until(all_settled, 90, "every order settled by its events")
    print(f"settled {len(ids)} orders {took:.1f}s after the broker was back")

    async def all_published() -> bool:
        # A settle commits its event to the outbox; the relay publishes it a moment later.
        for service in ("orders", "inventory", "loyalty"):
            rows = await events.query(
                service, "SELECT count(*) AS n FROM outbox WHERE published_us IS NULL"
            )
            if int(rows[0]["n"]):
                return False
        return True

    await wait_until(all_published, 30, "every outbox published")
    for sku in skus:
        now = await item(api, sku)
        sold = sum(x["quantity"] for o in orders for x in o["items"] if x["sku"] == sku)
        assert (now["available"], now["reserved"], now["sold"]) == (stock - sold, 0, sold)
    for customer in customers:
        mine = [o for o in orders if o["customer_id"] == customer]
        expected = start_points - sum(o["points_redeemed"] for o in mine)
        expected += sum(o["points_earned"] for o in mine)
        assert await points(api, customer) == expected

    stream = await stream_events(events.nats.url)
    assert len({e.id for e, _ in stream}) == len(stream), "an event is in the stream twice"
    per_order = {i: [e for e, _ in stream if e.subject == i] for i in ids}
    for order_id, kinds in per_order.items():
        counts = Counter(e.type.name for e in kinds)
        for kind in ("order.confirmed", "stock.committed", "loyalty.committed", "order.settled"):
            assert counts[kind] == 1, (order_id, counts)
        names = [e.type.name for e in kinds if e.source == "orders"]
        assert names == ["order.confirmed", "order.settled"], names
    # Per aggregate and source, stream order is the order the changes happened in.
    by_aggregate: dict[tuple[str, str], list[Any]] = {}
    for event, _ in stream:
        by_aggregate.setdefault((event.source, event.subject), []).append(event.time)
    for key, times in by_aggregate.items():
        assert times == sorted(times), key
    # The recovery worker never had to finish an order by calls.
    assert "events_lost" not in await gateway_metrics(api)
    return [e for e, _ in stream]


async def gateway_metrics(api: httpx.AsyncClient) -> str:
    return (await api.get("/metrics")).text


async def test_broker_down_while_200_orders_are_placed_then_everything_settles(
    events: Events, api: httpx.AsyncClient
) -> None:
    events.nats.stop()
    try:
        skus, customers, stock, start_points, orders = await place_many(api, 200, seed=11)
        assert {o["status"] for o in orders} == {"CONFIRMED"}

        async def backlog() -> bool:
            pending = await events.metric(
                "orders", "orderflow_outbox_pending", '{service="orders"}'
            )
            return pending is not None and pending >= 200

        await wait_until(backlog, 15, "the orders outbox holds every order.confirmed")
        rows = await events.query(
            "orders",
            "SELECT count(*) AS n FROM outbox "
            "WHERE event_type = 'order.confirmed' AND published_us IS NULL",
        )
        assert int(rows[0]["n"]) >= 200
        age = '{service="orders"}'
        first = await events.metric("orders", "orderflow_outbox_oldest_age_seconds", age)
        await asyncio.sleep(1.5)
        later = await events.metric("orders", "orderflow_outbox_oldest_age_seconds", age)
        assert first is not None and later is not None and later > first > 0
        # Nothing was settled meanwhile: stock stays reserved, no points earned yet.
        assert [(await item(api, sku))["sold"] for sku in skus] == [0, 0, 0]
    finally:
        events.nats.start()
    await check_finished(events, api, skus, customers, stock, start_points, orders)
    assert await events.metric("orders", "orderflow_outbox_pending", '{service="orders"}') == 0


async def test_services_killed_while_the_backlog_drains_do_each_effect_once(
    events: Events, api: httpx.AsyncClient
) -> None:
    """The orders relay and the inventory consumer die by SIGKILL mid-flight (between a
    publish and its mark, in the middle of a batch): after a restart every event arrives,
    the broker and the inboxes drop the repeats, and no effect happens twice."""
    events.nats.stop()
    try:
        skus, customers, stock, start_points, orders = await place_many(api, 100, seed=12)
    finally:
        events.nats.start()
    await asyncio.sleep(0.4)
    events.system.kill("orders")
    events.system.kill("inventory")
    events.system.start("inventory")
    events.system.start("orders")
    events.system.wait_ready()
    stream = await check_finished(events, api, skus, customers, stock, start_points, orders)
    ids = {o["id"] for o in orders}
    confirmed = [e.id for e in stream if e.type.name == "order.confirmed" and e.subject in ids]
    assert len(confirmed) == len(ids)
    handled = await events.query(
        "inventory",
        "SELECT count(*) AS n FROM inbox WHERE consumer = 'inventory' AND event_id = ANY($1)",
        confirmed,
    )
    assert int(handled[0]["n"]) == len(ids)  # each handled, and recorded, once
    parked = await parked_events(events.urls["inventory"], "inventory")
    assert parked == []


async def test_cancel_before_the_events_came_and_their_late_arrival_has_no_effect(
    events: Events, api: httpx.AsyncClient
) -> None:
    """With the broker away, an order is confirmed and then cancelled before inventory and
    loyalty saw its order.confirmed: the cancel gives the reserved stock and the redeemed
    points back, and the event arriving later changes nothing and is not parked."""
    sku = await new_item(api, price=1000, stock=10)
    customer = await new_customer(api, tier="gold", points=100)
    events.nats.stop()
    try:
        placed = await api.post(
            "/api/v1/orders",
            json={
                "customer_id": customer,
                "items": [{"sku": sku, "quantity": 3}],
                "redeem_points": 40,
            },
        )
        assert placed.status_code == 201, placed.text
        order_id = placed.json()["id"]
        assert (await item(api, sku))["reserved"] == 3
        cancelled = await api.post(f"/api/v1/orders/{order_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "CANCELLED"
        now = await item(api, sku)
        assert (now["available"], now["reserved"], now["sold"]) == (10, 0, 0)
        assert await points(api, customer) == 100
    finally:
        events.nats.start()

    async def late_event() -> str:
        stream = await stream_events(events.nats.url)
        late = [e for e, _ in stream if e.subject == order_id and e.type.name == "order.confirmed"]
        return late[0].id if late else ""

    async def published() -> bool:
        return bool(await late_event())

    await wait_until(published, 30, "the order's order.confirmed published")
    event_id = await late_event()

    async def handled() -> bool:
        counts = [
            await events.query(
                service, "SELECT count(*) AS n FROM inbox WHERE event_id = $1", event_id
            )
            for service in ("inventory", "loyalty")
        ]
        return all(int(c[0]["n"]) == 1 for c in counts)

    await wait_until(handled, 30, "the late order.confirmed handled by inventory and loyalty")
    now = await item(api, sku)
    assert (now["available"], now["reserved"], now["sold"]) == (10, 0, 0)
    assert await points(api, customer) == 100
    assert (await api.get(f"/api/v1/orders/{order_id}")).json()["status"] == "CANCELLED"
    for service in ("inventory", "loyalty"):
        parked = await parked_events(events.urls[service], service)
        assert event_id not in {p.event_id for p in parked}, parked


async def test_a_poison_event_is_parked_then_redriven_once_it_can_be_handled(
    events: Events, api: httpx.AsyncClient
) -> None:
    """order.confirmed for an order inventory never reserved fails each time: parked after
    ORDERFLOW_EVENTS_MAX_ATTEMPTS, counted, listed; once the reservation exists, a redrive
    commits it."""
    sku = await new_item(api, price=500, stock=10)
    order_id = f"poison-{random.randrange(10**9)}"
    poison = Event.new(
        events_pb2.OrderConfirmed(
            order_id=order_id,
            customer_id="c-x",
            lines=[events_pb2.OrderLine(sku=sku, quantity=2, unit_price=500)],
            currency="USD",
        )
    )
    bus = JetStreamBus(events.nats.url)
    try:
        assert await bus.publish([poison.wire()], 5) == 1
    finally:
        await bus.close()

    async def parked() -> bool:
        listed = await parked_events(events.urls["inventory"], "inventory")
        return [p.event_id for p in listed] == [poison.id]

    await wait_until(parked, 30, "the poison event parked by inventory")
    [row] = await parked_events(events.urls["inventory"], "inventory")
    assert (row.consumer, row.event_type, row.attempts) == ("inventory", "order.confirmed", 3)
    assert "NOT_FOUND" in row.last_error or "no reservation" in row.last_error
    labels = '{consumer="inventory"}'
    assert await events.metric("inventory", "orderflow_events_parked", labels) == 1
    assert await redrive(events.urls["inventory"], "inventory", "no-such-event") == 0

    # Make it handleable: reserve stock for that order id, as the saga would have.
    reserve = await events.query(
        "inventory",
        "UPDATE items SET available = available - 2, reserved = reserved + 2 "
        "WHERE sku = $1 RETURNING available",
        sku,
    )
    assert reserve
    await events.query(
        "inventory",
        "INSERT INTO reservations (order_id, state, currency, lines, created_us, updated_us) "
        "VALUES ($1, 'RESERVED', 'USD', $2, 0, 0)",
        order_id,
        f'[{{"sku": "{sku}", "quantity": 2, "unit_price": 500}}]',
    )
    assert await redrive(events.urls["inventory"], "inventory", poison.id) == 1

    async def gone() -> bool:
        return await parked_events(events.urls["inventory"], "inventory") == []

    await wait_until(gone, 15, "the redriven event handled")
    assert (await item(api, sku))["sold"] == 2
    assert await events.metric("inventory", "orderflow_events_parked", labels) == 0


async def test_two_inventory_replicas_share_one_relay_and_the_standby_takes_over(
    events: Events, api: httpx.AsyncClient
) -> None:
    """A second inventory process on the same database, the gateway calling both: one relay
    holds the lease, the other stands by; SIGKILL the holder and the other publishes within
    the lease (3 s here), and orders go on being finished by their events."""
    system = events.system
    first = system.processes["inventory"]
    gateway = system.processes["gateway"]
    port = free_port()
    env = {
        **first.env,
        "ORDERFLOW_INVENTORY_PORT": str(port),
        "ORDERFLOW_INVENTORY_METRICS_PORT": str(free_port()),
    }
    second = Process("inventory-2", first.argv, env, port, events.workdir / "inventory-2.log")
    original_gateway_env = gateway.env
    second.start()
    try:
        gateway.stop()
        gateway.env = {
            **original_gateway_env,
            "ORDERFLOW_GATEWAY_INVENTORY_TARGET": f"ipv4:127.0.0.1:{first.port},127.0.0.1:{port}",
        }
        gateway.start()
        system.wait_ready()
        replicas = {p.popen.pid: p for p in (first, second) if p.popen is not None}

        async def holder() -> Process | None:
            rows = await events.query(
                "inventory",
                "SELECT holder, expires_us FROM outbox_relay_lease WHERE name = 'relay/inventory'",
            )
            if not rows or int(rows[0]["expires_us"]) < time.time() * 1e6:
                return None
            pid = int(str(rows[0]["holder"]).split(":")[1])  # service@host:pid:random
            return replicas.get(pid)

        async def held() -> bool:
            return await holder() is not None

        await wait_until(held, 10, "a replica's relay holds the inventory lease")
        active = await holder()
        assert active is not None
        standby = second if active is first else first
        active.kill()
        killed_at = time.monotonic()

        async def taken_over() -> bool:
            return await holder() is standby

        await wait_until(taken_over, 15, "the standby holds the lease")
        took = time.monotonic() - killed_at
        assert took < 3 + 2, f"taken over after {took:.1f}s (lease 3 s)"
        sku = await new_item(api, price=100, stock=50)
        customer = await new_customer(api)
        for n in (1, 2):
            placed = await api.post(
                "/api/v1/orders",
                json={"customer_id": customer, "items": [{"sku": sku, "quantity": n}]},
            )
            assert placed.status_code == 201, placed.text

        async def committed() -> bool:
            now = await item(api, sku)
            return bool((now["sold"], now["reserved"]) == (3, 0))

        await wait_until(committed, 20, "both orders committed by the surviving replica")
    finally:
        second.stop()
        if not first.running:
            first.start()
        gateway.stop()
        gateway.env = original_gateway_env
        gateway.start()
        system.wait_ready()
