"""What a client does with orderflow, over real HTTP, in one-process and per-service mode."""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import datetime
from pathlib import Path

import httpx

from tests.e2e.conftest import (
    eventually,
    item,
    new_customer,
    new_item,
    points,
    start,
    stock,
    unique,
)
from tests.system import System, one_process


async def test_confirmed_order_with_discount_and_redeemed_points(api: httpx.AsyncClient) -> None:
    mug = await new_item(api, price=1250, stock=10)
    tee = await new_item(api, price=2000, stock=5)
    customer = await new_customer(api, tier="gold", points=500)
    response = await api.post(
        "/api/v1/orders",
        json={
            "customer_id": customer,
            "items": [{"sku": mug, "quantity": 2}, {"sku": tee, "quantity": 1}],
            "redeem_points": 100,
        },
    )
    assert response.status_code == 201, response.text
    order = response.json()
    # subtotal 2*1250 + 2000 = 4500; gold 10% = 450; 100 points; total 3950 -> 39 points
    assert order["status"] == "CONFIRMED"
    assert order["currency"] == "USD"
    assert (order["subtotal"], order["discount"], order["points_redeemed"]) == (4500, 450, 100)
    assert (order["total"], order["points_earned"]) == (3950, 39)
    assert sorted((x["sku"], x["quantity"], x["unit_price"]) for x in order["items"]) == sorted(
        [(mug, 2, 1250), (tee, 1, 2000)]
    )
    assert (await api.get(f"/api/v1/orders/{order['id']}")).json()["status"] == "CONFIRMED"
    await eventually(lambda: stock(api, mug), (8, 0, 2))
    await eventually(lambda: points(api, customer), 500 - 100 + 39)


async def test_out_of_stock_is_409_rejected_and_stock_unchanged(api: httpx.AsyncClient) -> None:
    sku = await new_item(api, price=500, stock=3)
    customer = await new_customer(api)
    response = await api.post(
        "/api/v1/orders", json={"customer_id": customer, "items": [{"sku": sku, "quantity": 4}]}
    )
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["error"]["code"] == "OUT_OF_STOCK"
    assert body["order"]["status"] == "REJECTED"
    assert body["order"]["failure"]["code"] == "OUT_OF_STOCK"
    after = await item(api, sku)
    assert (after["available"], after["reserved"], after["sold"]) == (3, 0, 0)


async def test_not_enough_points_is_409_and_the_reservation_released(
    api: httpx.AsyncClient,
) -> None:
    sku = await new_item(api, price=1000, stock=5)
    customer = await new_customer(api, points=50)
    response = await api.post(
        "/api/v1/orders",
        json={"customer_id": customer, "items": [{"sku": sku, "quantity": 1}], "redeem_points": 80},
    )
    assert response.status_code == 409, response.text
    assert response.json()["error"]["code"] == "INSUFFICIENT_POINTS"
    assert response.json()["order"]["status"] == "REJECTED"
    after = await item(api, sku)
    assert (after["available"], after["reserved"], after["sold"]) == (5, 0, 0)
    assert await points(api, customer) == 50


async def test_unknown_sku_is_422(api: httpx.AsyncClient) -> None:
    customer = await new_customer(api)
    response = await api.post(
        "/api/v1/orders",
        json={"customer_id": customer, "items": [{"sku": unique("NOPE"), "quantity": 1}]},
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "UNKNOWN_SKU"


async def test_cancel_returns_stock_and_settles_points(api: httpx.AsyncClient) -> None:
    sku = await new_item(api, price=3000, stock=4)
    customer = await new_customer(api, tier="silver", points=200)
    placed = await api.post(
        "/api/v1/orders",
        json={
            "customer_id": customer,
            "items": [{"sku": sku, "quantity": 2}],
            "redeem_points": 200,
        },
    )
    assert placed.status_code == 201, placed.text
    order = placed.json()
    # 6000 - 5% (300) - 200 points = 5500 -> earns 55
    assert (order["total"], order["points_earned"]) == (5500, 55)
    await eventually(lambda: points(api, customer), 55)
    cancelled = await api.post(f"/api/v1/orders/{order['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "CANCELLED"
    after = await item(api, sku)
    assert (after["available"], after["reserved"], after["sold"]) == (4, 0, 0)
    assert await points(api, customer) == 200  # redeemed refunded, earned taken back
    again = await api.post(f"/api/v1/orders/{order['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "CANCELLED"
    assert await points(api, customer) == 200
    assert (await api.post(f"/api/v1/orders/{unique('nope')}/cancel")).status_code == 404


async def test_cancel_of_a_rejected_order_is_409(api: httpx.AsyncClient) -> None:
    sku = await new_item(api, price=100, stock=0)
    customer = await new_customer(api)
    rejected = await api.post(
        "/api/v1/orders", json={"customer_id": customer, "items": [{"sku": sku, "quantity": 1}]}
    )
    order_id = rejected.json()["order"]["id"]
    response = await api.post(f"/api/v1/orders/{order_id}/cancel")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "NOT_CANCELLABLE"


async def test_list_orders_pages_newest_first_with_a_cursor(api: httpx.AsyncClient) -> None:
    sku = await new_item(api, price=100, stock=100)
    customer = await new_customer(api)
    placed = []
    for quantity in range(1, 6):
        response = await api.post(
            "/api/v1/orders",
            json={"customer_id": customer, "items": [{"sku": sku, "quantity": quantity}]},
        )
        assert response.status_code == 201
        placed.append(response.json()["id"])
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"customer_id": customer, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await api.get("/api/v1/orders", params=params)).json()
        pages += 1
        seen += [o["id"] for o in page["orders"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == placed[::-1]
    assert pages == 3
    confirmed = await api.get(
        "/api/v1/orders", params={"customer_id": customer, "status": "REJECTED"}
    )
    assert confirmed.json()["orders"] == []
    bad = await api.get("/api/v1/orders", params={"limit": 1000})
    assert bad.status_code == 422


async def test_idempotent_replay_and_mismatch(api: httpx.AsyncClient) -> None:
    sku = await new_item(api, price=700, stock=10)
    customer = await new_customer(api)
    body = {"customer_id": customer, "items": [{"sku": sku, "quantity": 3}]}
    headers = {"Idempotency-Key": unique("key")}
    first = await api.post("/api/v1/orders", json=body, headers=headers)
    second = await api.post("/api/v1/orders", json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    # The same order as stored now. The reply goes out once it is CONFIRMED; settling its
    # stock and points just after moves updated_at, and nothing else (ADR 3).
    replayed = second.json()
    later, earlier = replayed.pop("updated_at"), first.json()["updated_at"]
    assert datetime.fromisoformat(later) >= datetime.fromisoformat(earlier)
    assert replayed == {k: v for k, v in first.json().items() if k != "updated_at"}
    await eventually(lambda: stock(api, sku), (7, 0, 3))  # one effect
    other = await api.post(
        "/api/v1/orders", json={**body, "items": [{"sku": sku, "quantity": 1}]}, headers=headers
    )
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    # The key is scoped to the customer: another customer may use it too.
    someone = await new_customer(api)
    theirs = await api.post(
        "/api/v1/orders", json={**body, "customer_id": someone}, headers=headers
    )
    assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]


async def test_concurrent_duplicates_have_one_effect(api: httpx.AsyncClient) -> None:
    sku = await new_item(api, price=700, stock=10)
    customer = await new_customer(api)
    body = {"customer_id": customer, "items": [{"sku": sku, "quantity": 1}]}
    headers = {"Idempotency-Key": unique("key")}
    responses = await asyncio.gather(
        *(api.post("/api/v1/orders", json=body, headers=headers) for _ in range(10))
    )
    codes = sorted(r.status_code for r in responses)
    assert set(codes) <= {201, 409}, codes
    assert 201 in codes
    for r in responses:
        if r.status_code == 409:
            assert r.json()["error"]["code"] == "REQUEST_IN_PROGRESS"
    assert len({r.json()["id"] for r in responses if r.status_code == 201}) == 1
    await eventually(lambda: stock(api, sku), (9, 0, 1))


async def test_items_crud_and_errors(api: httpx.AsyncClient) -> None:
    sku = await new_item(api, price=999, stock=2)
    duplicate = await api.post(
        "/api/v1/items", json={"sku": sku, "name": "again", "price": 1, "stock": 1}
    )
    assert duplicate.status_code == 409
    assert duplicate.json()["error"]["code"] == "ALREADY_EXISTS"
    patched = await api.patch(f"/api/v1/items/{sku}", json={"price": 1099, "restock": 3})
    assert patched.status_code == 200
    assert (patched.json()["price"], patched.json()["available"]) == (1099, 5)
    assert (await api.patch(f"/api/v1/items/{sku}", json={"restock": 0})).status_code == 422
    assert (await api.patch(f"/api/v1/items/{unique('X')}", json={"price": 1})).status_code == 404
    assert (await api.get(f"/api/v1/items/{unique('X')}")).status_code == 404
    listing = await api.get("/api/v1/items", params={"limit": 100})
    assert listing.status_code == 200 and "next_cursor" in listing.json()


async def test_loyalty_accounts(api: httpx.AsyncClient) -> None:
    customer = unique("cust")
    assert (await api.get(f"/api/v1/customers/{customer}/loyalty")).status_code == 404
    account = await api.put(f"/api/v1/customers/{customer}/loyalty", json={"tier": "gold"})
    assert account.json() == {
        "customer_id": customer,
        "tier": "gold",
        "discount_percent": 10,
        "points": 0,
    }
    unknown = await api.put(f"/api/v1/customers/{customer}/loyalty", json={"tier": "platinum"})
    assert unknown.status_code == 422
    negative = await api.post(
        f"/api/v1/customers/{customer}/loyalty/points", json={"delta": -1, "reason": "oops"}
    )
    assert negative.status_code == 409
    assert await points(api, customer) == 0


# HTTP keep-alive. A client pool sends its next request on a connection it believes open;
# if the server closed it an instant before, the request meets a reset, and a client does
# not repeat a POST by itself. The gateway keeps an idle connection 75 s by default, longer
# than httpx (5 s) and common load balancers (60 s), so they close first (ADR 10).

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"


def exchange(conn: socket.socket) -> bytes:
    """Send one request and read its reply (small, with Content-Length); b"" if closed."""
    conn.sendall(REQUEST)
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = conn.recv(65536)
        if not chunk:
            return reply
        reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += conn.recv(65536)
    return head


def connect(system: System) -> socket.socket:
    host, port = system.base_url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def test_a_connection_idle_longer_than_a_client_pool_keeps_it_is_still_served(
    system: System,
) -> None:
    with connect(system) as conn:
        assert exchange(conn).startswith(b"HTTP/1.1 200")
        time.sleep(6)  # past httpx's 5 s, and past uvicorn's own default of 5 s
        assert exchange(conn).startswith(b"HTTP/1.1 200")


def test_the_gateway_closes_a_connection_idle_past_its_keep_alive(tmp_path: Path) -> None:
    system = start(one_process(tmp_path, {"ORDERFLOW_GATEWAY_KEEP_ALIVE_SECONDS": "1"}))
    try:
        with connect(system) as conn:
            assert exchange(conn).startswith(b"HTTP/1.1 200")
            time.sleep(0.3)
            assert exchange(conn).startswith(b"HTTP/1.1 200")
            time.sleep(2)
            conn.settimeout(5)
            assert conn.recv(1) == b"", "the idle connection was not closed"
    finally:
        system.stop()
