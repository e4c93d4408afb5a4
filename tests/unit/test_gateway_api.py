"""The REST API in process, over fakes: shapes, validation, idempotency, error mapping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from orderflow.gateway.app import create_app
from orderflow.gateway.budget import remaining
from orderflow.gateway.deps import Services
from orderflow.gateway.ports import Discount
from orderflow.gateway.readiness import Readiness
from orderflow.settings import CommonSettings, GatewaySettings
from tests.fakes import Calls, FakeInventory, FakeLoyalty, FakeOrders


class GatedLoyalty(FakeLoyalty):
    """Holds ApplyDiscount until the test opens the gate."""

    def __init__(self, calls: Calls, points: dict[str, int]) -> None:
        super().__init__(calls, points)
        self.gate = asyncio.Event()
        self.gate.set()

    async def apply_discount(
        self, order_id: str, customer_id: str, subtotal: int, redeem_points: int
    ) -> Discount:
        await self.gate.wait()
        return await super().apply_discount(order_id, customer_id, subtotal, redeem_points)


class World:
    def __init__(self) -> None:
        self.calls = Calls()
        self.orders = FakeOrders(self.calls)
        self.inventory = FakeInventory(self.calls, {"MUG-1": (1250, 10)})
        self.loyalty = GatedLoyalty(self.calls, {"c-1": 500})


@pytest.fixture
async def world() -> World:
    return World()


@pytest.fixture
async def client(world: World) -> AsyncIterator[httpx.AsyncClient]:
    async def serving() -> str:
        return "SERVING"

    app = create_app(
        GatewaySettings(max_body_bytes=4096),
        CommonSettings(),
        services=Services(world.orders, world.inventory, world.loyalty),
        readiness=Readiness({"orders": serving, "inventory": serving, "loyalty": serving}),
        recovery=False,
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            yield c


ORDER = {"customer_id": "c-1", "items": [{"sku": "MUG-1", "quantity": 2}], "redeem_points": 100}


async def test_confirmed_order_has_the_documented_shape(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/orders", json=ORDER)
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {
        "id", "customer_id", "status", "items", "currency", "subtotal", "discount",
        "points_redeemed", "total", "points_earned", "failure", "created_at", "updated_at",
    }  # fmt: skip
    assert body["status"] == "CONFIRMED"
    assert body["items"] == [{"sku": "MUG-1", "quantity": 2, "unit_price": 1250}]
    assert (body["subtotal"], body["discount"], body["points_redeemed"], body["total"]) == (
        2500,
        250,
        100,
        2150,
    )
    assert body["points_earned"] == 21 and body["failure"] is None
    assert response.headers["x-request-id"]


async def test_duplicate_while_the_first_is_running_gets_409(
    client: httpx.AsyncClient, world: World
) -> None:
    world.loyalty.gate.clear()
    headers = {"Idempotency-Key": "dup-1"}
    first = asyncio.create_task(client.post("/api/v1/orders", json=ORDER, headers=headers))
    while "loyalty.apply_discount" not in world.calls.log and not world.inventory.reservations:
        await asyncio.sleep(0.001)
    duplicate = await client.post("/api/v1/orders", json=ORDER, headers=headers)
    assert duplicate.status_code == 409
    assert duplicate.json()["error"]["code"] == "REQUEST_IN_PROGRESS"
    world.loyalty.gate.set()
    original = await first
    assert original.status_code == 201
    replay = await client.post("/api/v1/orders", json=ORDER, headers=headers)
    assert replay.status_code == 201 and replay.json() == original.json()
    assert world.inventory.items["MUG-1"]["reserved"] == 2  # one effect (events commit it)


async def test_reused_key_with_another_body_is_refused(client: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "k-2"}
    assert (await client.post("/api/v1/orders", json=ORDER, headers=headers)).status_code == 201
    other = {**ORDER, "redeem_points": 0}
    response = await client.post("/api/v1/orders", json=other, headers=headers)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"


async def test_rejected_replay_gives_the_same_status_and_body(
    client: httpx.AsyncClient, world: World
) -> None:
    big = {**ORDER, "items": [{"sku": "MUG-1", "quantity": 11}]}
    headers = {"Idempotency-Key": "k-3"}
    first = await client.post("/api/v1/orders", json=big, headers=headers)
    again = await client.post("/api/v1/orders", json=big, headers=headers)
    assert first.status_code == again.status_code == 409
    assert first.json() == again.json()
    assert first.json()["error"]["code"] == "OUT_OF_STOCK"
    assert first.json()["order"]["status"] == "REJECTED"


BAD_ORDERS: list[tuple[str, Any]] = [
    ("not json", b"{not json"),
    ("array", []),
    ("missing items", {"customer_id": "c-1"}),
    ("empty items", {"customer_id": "c-1", "items": []}),
    ("too many items", {"customer_id": "c-1",
                        "items": [{"sku": f"S{i}", "quantity": 1} for i in range(101)]}),
    ("zero quantity", {"customer_id": "c-1", "items": [{"sku": "MUG-1", "quantity": 0}]}),
    ("negative quantity", {"customer_id": "c-1", "items": [{"sku": "MUG-1", "quantity": -1}]}),
    ("absurd quantity", {"customer_id": "c-1", "items": [{"sku": "MUG-1", "quantity": 10**9}]}),
    ("string quantity", {"customer_id": "c-1", "items": [{"sku": "MUG-1", "quantity": "2"}]}),
    ("float quantity", {"customer_id": "c-1", "items": [{"sku": "MUG-1", "quantity": 1.5}]}),
    ("unknown field", {**ORDER, "price": 1}),
    ("status field", {**ORDER, "status": "CONFIRMED"}),
    ("negative points", {**ORDER, "redeem_points": -5}),
    ("duplicate skus", {"customer_id": "c-1", "items": [{"sku": "MUG-1", "quantity": 1},
                                                        {"sku": "MUG-1", "quantity": 1}]}),
    ("empty customer", {**ORDER, "customer_id": ""}),
    ("long customer", {**ORDER, "customer_id": "c" * 65}),
    ("bad sku", {"customer_id": "c-1", "items": [{"sku": "MUG 1;", "quantity": 1}]}),
]  # fmt: skip


@pytest.mark.parametrize(("label", "body"), BAD_ORDERS, ids=[b[0] for b in BAD_ORDERS])
async def test_bad_orders_get_422_in_the_error_shape_and_change_nothing(
    client: httpx.AsyncClient, world: World, label: str, body: Any
) -> None:
    if isinstance(body, bytes):
        response = await client.post(
            "/api/v1/orders", content=body, headers={"content-type": "application/json"}
        )
    else:
        response = await client.post("/api/v1/orders", json=body)
    assert response.status_code == 422, (label, response.text)
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR" and error["message"]
    assert world.orders.orders == {}
    assert world.inventory.items["MUG-1"]["available"] == 10


async def test_oversized_body_gets_413(client: httpx.AsyncClient, world: World) -> None:
    body = {**ORDER, "customer_id": "x" * 5000}
    response = await client.post("/api/v1/orders", json=body)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert world.orders.orders == {}


async def test_overlong_idempotency_key_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/orders", json=ORDER, headers={"Idempotency-Key": "k" * 256}
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"


async def test_unknown_route_and_method_use_the_error_shape(client: httpx.AsyncClient) -> None:
    missing = await client.get("/api/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "NOT_FOUND"
    wrong = await client.delete("/api/v1/orders")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


async def test_unknown_order_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/orders/does-not-exist")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"
    history = await client.get("/api/v1/orders/does-not-exist/history")
    assert history.status_code == 404
    assert history.json()["error"]["code"] == "NOT_FOUND"


async def test_order_history_lists_the_saga_steps_oldest_first(
    client: httpx.AsyncClient, world: World
) -> None:
    world.inventory.items["MUG-1"]["available"] = 1
    placed = await client.post("/api/v1/orders", json=ORDER)
    assert placed.status_code == 409
    order_id = placed.json()["order"]["id"]
    response = await client.get(f"/api/v1/orders/{order_id}/history")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"order_id", "status", "settled", "steps", "truncated"}
    assert (body["order_id"], body["status"], body["settled"]) == (order_id, "REJECTED", True)
    steps = body["steps"]
    assert [(s["step"], s["outcome"], s["driver"]) for s in steps] == [
        ("create", "ok", "request"),
        ("reserve", "failed", "request"),
        ("reject", "ok", "request"),
        ("settle", "ok", "request"),
    ]
    assert set(steps[1]) == {"step", "outcome", "started_at", "duration_ms", "driver", "error"}
    assert steps[1]["error"]["code"] == "OUT_OF_STOCK"
    assert steps[0]["error"] is None
    assert all(s["duration_ms"] >= 0 for s in steps)
    times = [s["started_at"] for s in steps]
    assert times == sorted(times)


async def test_health_ready_metrics_and_openapi(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["services"]["loyalty"] == "SERVING"
    await client.post("/api/v1/orders", json=ORDER)
    metrics = (await client.get("/metrics")).text
    assert 'orderflow_saga_outcomes_total{outcome="confirmed",reason="none"} 1.0' in metrics
    assert 'route="/api/v1/orders",status="201"' in metrics
    spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    for path in (
        "/api/v1/orders",
        "/api/v1/orders/{order_id}",
        "/api/v1/orders/{order_id}/cancel",
        "/api/v1/items",
        "/api/v1/items/{sku}",
        "/api/v1/customers/{customer_id}/loyalty",
        "/api/v1/customers/{customer_id}/loyalty/points",
    ):
        assert path in paths
    assert "409" in paths["/api/v1/orders"]["post"]["responses"]


async def test_every_request_runs_within_the_request_budget(
    client: httpx.AsyncClient, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deadline a service call gets is bounded by what is left of the request's budget."""
    left: list[float] = []
    for port, name in ((world.inventory, "get_item"), (world.inventory, "reserve")):
        call = getattr(port, name)

        async def timed(*args: Any, _call: Any = call) -> Any:
            left.append(remaining(1000.0))
            return await _call(*args)

        monkeypatch.setattr(port, name, timed)
    assert (await client.get("/api/v1/items/MUG-1")).status_code == 200
    assert (await client.post("/api/v1/orders", json=ORDER)).status_code == 201
    budget = GatewaySettings().request_timeout_seconds
    assert len(left) == 2 and all(0 < seconds <= budget for seconds in left), left
    assert remaining(1000.0) == 1000.0  # and the budget ends with the request
