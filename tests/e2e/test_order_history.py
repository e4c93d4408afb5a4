"""An order's saga step by step (GET /api/v1/orders/{id}/history), in one-process and
per-service mode: what a console's order page shows (issue 16, ADR 26)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import grpc
import httpx

from orderflow.orders.v1 import orders_pb2, orders_pb2_grpc
from tests.e2e.conftest import eventually, new_customer, new_item, points, stock, unique
from tests.system import System


async def history(api: httpx.AsyncClient, order_id: str) -> dict[str, Any]:
    response = await api.get(f"/api/v1/orders/{order_id}/history")
    assert response.status_code == 200, response.text
    return response.json()


def steps(body: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(s["step"], s["outcome"], s["driver"]) for s in body["steps"]]


def assert_well_formed(body: dict[str, Any]) -> None:
    """Every step has its time (in order, with a zone) and a duration."""
    times = [datetime.fromisoformat(s["started_at"]) for s in body["steps"]]
    assert all(t.tzinfo is not None for t in times), body
    assert times == sorted(times), body
    assert all(isinstance(s["duration_ms"], int) and s["duration_ms"] >= 0 for s in body["steps"])
    assert body["truncated"] is False


async def settled_history(api: httpx.AsyncClient, order_id: str) -> dict[str, Any]:
    async def is_settled() -> bool:
        return bool((await history(api, order_id))["settled"])

    await eventually(is_settled, True, timeout=15)
    return await history(api, order_id)


async def test_a_confirmed_order_shows_each_step_to_its_settlement(api: httpx.AsyncClient) -> None:
    sku = await new_item(api, price=1250, stock=5)
    customer = await new_customer(api, tier="gold", points=100)
    placed = await api.post(
        "/api/v1/orders",
        json={"customer_id": customer, "items": [{"sku": sku, "quantity": 2}], "redeem_points": 50},
    )
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]
    body = await settled_history(api, order_id)
    assert (body["order_id"], body["status"]) == (order_id, "CONFIRMED")
    found = steps(body)
    assert found[:4] == [
        ("create", "ok", "request"),
        ("reserve", "ok", "request"),
        ("apply_discount", "ok", "request"),
        ("confirm", "ok", "request"),
    ], found
    # The follow-ups, consumed from inventory's and loyalty's events in either order.
    assert sorted(found[4:6]) == [
        ("commit_discount", "ok", "event"),
        ("commit_stock", "ok", "event"),
    ]
    assert found[6:] == [("settle", "ok", "event")], found
    assert all(s["error"] is None for s in body["steps"])
    assert_well_formed(body)
    # What the history says happened, happened.
    await eventually(lambda: stock(api, sku), (3, 0, 2))
    await eventually(lambda: points(api, customer), 100 - 50 + placed.json()["points_earned"])


async def test_an_order_rejected_for_stock_shows_the_failed_step(api: httpx.AsyncClient) -> None:
    sku = await new_item(api, price=500, stock=1)
    customer = await new_customer(api)
    placed = await api.post(
        "/api/v1/orders", json={"customer_id": customer, "items": [{"sku": sku, "quantity": 3}]}
    )
    assert placed.status_code == 409, placed.text
    body = await settled_history(api, placed.json()["order"]["id"])
    assert body["status"] == "REJECTED"
    assert steps(body) == [
        ("create", "ok", "request"),
        ("reserve", "failed", "request"),
        ("reject", "ok", "request"),
        ("settle", "ok", "request"),
    ]
    reserve, reject = body["steps"][1:3]
    assert reserve["error"]["code"] == "OUT_OF_STOCK" and sku in reserve["error"]["message"]
    assert reject["error"]["code"] == "OUT_OF_STOCK"  # the order's reason
    assert_well_formed(body)


async def test_an_order_rejected_for_points_shows_the_undo_steps(api: httpx.AsyncClient) -> None:
    sku = await new_item(api, price=1000, stock=5)
    customer = await new_customer(api, points=10)
    placed = await api.post(
        "/api/v1/orders",
        json={"customer_id": customer, "items": [{"sku": sku, "quantity": 1}], "redeem_points": 80},
    )
    assert placed.status_code == 409, placed.text
    body = await settled_history(api, placed.json()["order"]["id"])
    assert steps(body) == [
        ("create", "ok", "request"),
        ("reserve", "ok", "request"),
        ("apply_discount", "failed", "request"),
        ("reject", "ok", "request"),
        ("release", "ok", "request"),
        ("settle", "ok", "request"),
    ]
    assert body["steps"][2]["error"]["code"] == "INSUFFICIENT_POINTS"
    assert_well_formed(body)
    assert await stock(api, sku) == (5, 0, 0)


async def test_a_cancelled_order_shows_the_cancel_saga(api: httpx.AsyncClient) -> None:
    sku = await new_item(api, price=3000, stock=4)
    customer = await new_customer(api, tier="silver", points=200)
    placed = await api.post(
        "/api/v1/orders",
        json={
            "customer_id": customer,
            "items": [{"sku": sku, "quantity": 1}],
            "redeem_points": 100,
        },
    )
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]
    await settled_history(api, order_id)
    cancelled = await api.post(f"/api/v1/orders/{order_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    body = await history(api, order_id)
    assert (body["status"], body["settled"]) == ("CANCELLED", True)
    assert steps(body)[-4:] == [
        ("request_cancel", "ok", "request"),
        ("refund_discount", "ok", "request"),
        ("return_stock", "ok", "request"),
        ("cancel", "ok", "request"),
    ]
    assert_well_formed(body)
    assert await stock(api, sku) == (4, 0, 0)


def orders_address(system: System) -> str:
    """Where the orders gRPC service listens in this mode (loopback)."""
    if system.mode == "one-process":
        argv = system.processes["onebox"].argv
        return f"127.0.0.1:{argv[argv.index('--grpc-port') + 1]}"
    return f"127.0.0.1:{system.processes['orders'].port}"


async def test_an_order_its_gateway_abandoned_is_finished_by_recovery(
    system: System, api: httpx.AsyncClient
) -> None:
    """A gateway that created an order and died before driving it: the recovery worker
    claims it once its lease ran out and drives it; its history says who did what."""
    sku = await new_item(api, price=700, stock=3)
    customer = await new_customer(api)
    async with grpc.aio.insecure_channel(orders_address(system)) as channel:
        stub = orders_pb2_grpc.OrderServiceStub(channel)
        created = await stub.CreateOrder(
            orders_pb2.CreateOrderRequest(
                customer_id=customer,
                lines=[orders_pb2.OrderLine(sku=sku, quantity=2)],
                idempotency_key=unique("key"),
                request_fingerprint="abandoned",
                lease_owner="gateway:gone",
                lease_seconds=0.2,
            ),
            timeout=5,
        )
    order_id = created.order.id
    body = await settled_history(api, order_id)
    assert body["status"] == "CONFIRMED"
    found = steps(body)
    assert found[:5] == [
        ("create", "ok", "request"),
        ("claim", "ok", "recovery"),
        ("reserve", "ok", "recovery"),
        ("apply_discount", "ok", "recovery"),
        ("confirm", "ok", "recovery"),
    ], found
    assert found[-1] == ("settle", "ok", "event")
    assert_well_formed(body)
    await eventually(lambda: stock(api, sku), (1, 0, 2))


async def test_the_history_of_an_unknown_order_is_404(api: httpx.AsyncClient) -> None:
    response = await api.get(f"/api/v1/orders/{unique('nope')}/history")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"
