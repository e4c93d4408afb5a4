"""The gateway's public gRPC API does what REST does: one table of scenarios, two drivers.

Each scenario runs over REST and over gRPC (orderflow.api.v1.OrderingService), in
one-process and per-service mode. A driver answers with the same `Reply` either way: the
error code (REST's body code; gRPC's ErrorInfo reason), the order as a dict, and the
protocol's own status, which must be the one the mapping table gives for the code.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from orderflow.api.v1 import ordering_pb2 as pb
from orderflow.api.v1 import ordering_pb2_grpc as pb_grpc
from tests.e2e.conftest import eventually, item, new_customer, new_item, points, stock, unique
from tests.system import System

# What each protocol says for an error code (the mapping table, as a client sees it).
STATUS = {
    None: (201, "OK"),
    "OUT_OF_STOCK": (409, "FAILED_PRECONDITION"),
    "INSUFFICIENT_POINTS": (409, "FAILED_PRECONDITION"),
    "NOT_CANCELLABLE": (409, "FAILED_PRECONDITION"),
    "UNKNOWN_SKU": (422, "INVALID_ARGUMENT"),
    "VALIDATION_ERROR": (422, "INVALID_ARGUMENT"),
    "IDEMPOTENCY_KEY_REUSED": (422, "INVALID_ARGUMENT"),
    "REQUEST_IN_PROGRESS": (409, "ABORTED"),
    "NOT_FOUND": (404, "NOT_FOUND"),
}


@dataclass
class Reply:
    error: str | None  # the error code, None on success
    status: str  # HTTP status (as text) or gRPC status code name
    order: dict[str, Any] | None
    info: dict[str, str]  # REST error details / ErrorInfo metadata


def _order_dict(order: pb.Order) -> dict[str, Any]:
    return {
        "id": order.id,
        "customer_id": order.customer_id,
        "status": pb.OrderStatus.Name(order.status).removeprefix("ORDER_STATUS_"),
        "items": [
            {"sku": x.sku, "quantity": x.quantity, "unit_price": x.unit_price} for x in order.items
        ],
        "currency": order.currency,
        "subtotal": order.subtotal,
        "discount": order.discount,
        "points_redeemed": order.points_redeemed,
        "total": order.total,
        "points_earned": order.points_earned,
        "failure": {"code": order.failure.code, "message": order.failure.message}
        if order.HasField("failure")
        else None,
    }


class Driver(Protocol):
    name: str

    async def place(self, body: dict[str, Any], key: str | None = None) -> Reply: ...
    async def get(self, order_id: str) -> Reply: ...
    async def cancel(self, order_id: str) -> Reply: ...
    async def list(self, customer_id: str, limit: int, cursor: str | None) -> Reply: ...


class RestDriver:
    name = "rest"

    def __init__(self, api: httpx.AsyncClient) -> None:
        self.api = api

    def _reply(self, response: httpx.Response) -> Reply:
        body = response.json()
        if response.status_code < 400:
            order = body if "id" in body else None
            return Reply(None, "201" if order else "200", order, {})
        error = body["error"]
        details = {k: str(v) for k, v in error["details"].items()}
        return Reply(error["code"], str(response.status_code), body.get("order"), details)

    async def place(self, body: dict[str, Any], key: str | None = None) -> Reply:
        headers = {"Idempotency-Key": key} if key else {}
        return self._reply(await self.api.post("/api/v1/orders", json=body, headers=headers))

    async def get(self, order_id: str) -> Reply:
        return self._reply(await self.api.get(f"/api/v1/orders/{order_id}"))

    async def cancel(self, order_id: str) -> Reply:
        return self._reply(await self.api.post(f"/api/v1/orders/{order_id}/cancel"))

    async def list(self, customer_id: str, limit: int, cursor: str | None) -> Reply:
        params: dict[str, Any] = {"customer_id": customer_id, "limit": limit}
        if cursor:
            params["cursor"] = cursor
        response = await self.api.get("/api/v1/orders", params=params)
        reply = self._reply(response)
        if reply.error is None:
            body = response.json()
            reply.order = {"orders": body["orders"], "next_cursor": body["next_cursor"]}
        return reply


def grpc_reply(exc: grpc.aio.AioRpcError) -> Reply:
    """A refused call as a Reply, checked to be a google.rpc.Status with one ErrorInfo."""
    status = rpc_status.from_call(exc)
    assert status is not None, f"no google.rpc.Status on {exc.code()}: {exc.details()}"
    infos, order = [], None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
        elif detail.Is(pb.Order.DESCRIPTOR):
            found = pb.Order()
            detail.Unpack(found)
            order = _order_dict(found)
    assert len(infos) == 1, status
    assert infos[0].domain == "orderflow"
    return Reply(infos[0].reason, exc.code().name, order, dict(infos[0].metadata))


class GrpcDriver:
    name = "grpc"

    def __init__(self, stub: pb_grpc.OrderingServiceStub) -> None:
        self.stub = stub

    async def _call(self, method: Any, request: Any, field: str | None = "order") -> Reply:
        try:
            response = await method(request, timeout=10)
        except grpc.aio.AioRpcError as exc:
            return grpc_reply(exc)
        order = _order_dict(getattr(response, field)) if field else None
        return Reply(None, "OK", order, {})

    async def place(self, body: dict[str, Any], key: str | None = None) -> Reply:
        request = pb.PlaceOrderRequest(
            customer_id=body.get("customer_id", ""),
            items=[pb.PlaceOrderRequest.Line(**x) for x in body.get("items", [])],
            redeem_points=body.get("redeem_points", 0),
            request_id=key or "",
        )
        return await self._call(self.stub.PlaceOrder, request)

    async def get(self, order_id: str) -> Reply:
        return await self._call(self.stub.GetOrder, pb.GetOrderRequest(order_id=order_id))

    async def cancel(self, order_id: str) -> Reply:
        return await self._call(self.stub.CancelOrder, pb.CancelOrderRequest(order_id=order_id))

    async def list(self, customer_id: str, limit: int, cursor: str | None) -> Reply:
        request = pb.ListOrdersRequest(customer_id=customer_id, limit=limit, cursor=cursor or "")
        try:
            response = await self.stub.ListOrders(request, timeout=10)
        except grpc.aio.AioRpcError as exc:
            return grpc_reply(exc)
        page = {
            "orders": [_order_dict(o) for o in response.orders],
            "next_cursor": response.next_cursor or None,
        }
        return Reply(None, "OK", page, {})


@pytest.fixture
async def channel(system: System) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(system.grpc_target) as channel:
        yield channel


@pytest.fixture(params=["rest", "grpc"])
def driver(request: pytest.FixtureRequest, api: httpx.AsyncClient) -> Driver:
    if request.param == "rest":
        return RestDriver(api)
    channel: grpc.aio.Channel = request.getfixturevalue("channel")
    return GrpcDriver(pb_grpc.OrderingServiceStub(channel))


def assert_status(driver: Driver, reply: Reply, ok: str = "201") -> None:
    """The protocol's status is the one the mapping table gives for the reply's code."""
    http, code = STATUS[reply.error]
    expected = code if driver.name == "grpc" else (ok if reply.error is None else str(http))
    assert reply.status == expected, reply


def lines(order: dict[str, Any]) -> list[tuple[str, int, int]]:
    return sorted((x["sku"], x["quantity"], x["unit_price"]) for x in order["items"])


# -- the scenarios ------------------------------------------------------------------------


async def test_confirmed_order_with_exact_totals(driver: Driver, api: httpx.AsyncClient) -> None:
    mug = await new_item(api, price=1250, stock=10)
    tee = await new_item(api, price=2000, stock=5)
    customer = await new_customer(api, tier="gold", points=500)
    body = {
        "customer_id": customer,
        "items": [{"sku": mug, "quantity": 2}, {"sku": tee, "quantity": 1}],
        "redeem_points": 100,
    }
    reply = await driver.place(body)
    assert reply.error is None, reply
    assert_status(driver, reply)
    order = reply.order
    assert order is not None
    # subtotal 2*1250 + 2000 = 4500; gold 10% = 450; 100 points; total 3950 -> 39 points
    assert (order["status"], order["currency"]) == ("CONFIRMED", "USD")
    assert (order["subtotal"], order["discount"], order["points_redeemed"]) == (4500, 450, 100)
    assert (order["total"], order["points_earned"]) == (3950, 39)
    assert lines(order) == sorted([(mug, 2, 1250), (tee, 1, 2000)])
    again = await driver.get(order["id"])
    assert again.order is not None and again.order["status"] == "CONFIRMED"
    await eventually(lambda: stock(api, mug), (8, 0, 2))
    await eventually(lambda: points(api, customer), 500 - 100 + 39)


async def test_out_of_stock_is_refused_with_the_rejected_order(
    driver: Driver, api: httpx.AsyncClient
) -> None:
    sku = await new_item(api, price=500, stock=3)
    customer = await new_customer(api)
    reply = await driver.place({"customer_id": customer, "items": [{"sku": sku, "quantity": 4}]})
    assert reply.error == "OUT_OF_STOCK", reply
    assert_status(driver, reply)
    assert reply.order is not None and reply.order["status"] == "REJECTED"
    assert reply.order["failure"]["code"] == "OUT_OF_STOCK"
    assert reply.info["order_id"] == reply.order["id"]
    assert await stock(api, sku) == (3, 0, 0)


async def test_insufficient_points_releases_the_reservation(
    driver: Driver, api: httpx.AsyncClient
) -> None:
    sku = await new_item(api, price=1000, stock=5)
    customer = await new_customer(api, points=50)
    reply = await driver.place(
        {"customer_id": customer, "items": [{"sku": sku, "quantity": 1}], "redeem_points": 80}
    )
    assert reply.error == "INSUFFICIENT_POINTS", reply
    assert_status(driver, reply)
    assert reply.order is not None and reply.order["status"] == "REJECTED"
    await eventually(lambda: stock(api, sku), (5, 0, 0))
    assert await points(api, customer) == 50


async def test_unknown_sku(driver: Driver, api: httpx.AsyncClient) -> None:
    customer = await new_customer(api)
    reply = await driver.place(
        {"customer_id": customer, "items": [{"sku": unique("NOPE"), "quantity": 1}]}
    )
    assert reply.error == "UNKNOWN_SKU", reply
    assert_status(driver, reply)


async def test_cancel_returns_stock_and_settles_points(
    driver: Driver, api: httpx.AsyncClient
) -> None:
    sku = await new_item(api, price=3000, stock=4)
    customer = await new_customer(api, tier="silver", points=200)
    placed = await driver.place(
        {"customer_id": customer, "items": [{"sku": sku, "quantity": 2}], "redeem_points": 200}
    )
    assert placed.error is None and placed.order is not None, placed
    # 6000 - 5% (300) - 200 points = 5500 -> earns 55
    assert (placed.order["total"], placed.order["points_earned"]) == (5500, 55)
    await eventually(lambda: points(api, customer), 55)
    cancelled = await driver.cancel(placed.order["id"])
    assert cancelled.error is None and cancelled.order is not None, cancelled
    assert cancelled.order["status"] == "CANCELLED"
    assert await stock(api, sku) == (4, 0, 0)
    assert await points(api, customer) == 200
    again = await driver.cancel(placed.order["id"])
    assert again.order is not None and again.order["status"] == "CANCELLED"
    assert await points(api, customer) == 200
    missing = await driver.cancel(unique("nope"))
    assert missing.error == "NOT_FOUND"
    assert_status(driver, missing)


async def test_a_rejected_order_is_not_cancellable(driver: Driver, api: httpx.AsyncClient) -> None:
    sku = await new_item(api, price=100, stock=1)
    customer = await new_customer(api)
    rejected = await driver.place({"customer_id": customer, "items": [{"sku": sku, "quantity": 2}]})
    assert rejected.order is not None
    reply = await driver.cancel(rejected.order["id"])
    assert reply.error == "NOT_CANCELLABLE", reply
    assert_status(driver, reply)


async def test_list_pages_newest_first(driver: Driver, api: httpx.AsyncClient) -> None:
    sku = await new_item(api, price=100, stock=10)
    customer = await new_customer(api)
    placed = []
    for _ in range(3):
        body = {"customer_id": customer, "items": [{"sku": sku, "quantity": 1}]}
        reply = await driver.place(body)
        assert reply.order is not None
        placed.append(reply.order["id"])
    first = await driver.list(customer, 2, None)
    assert first.error is None and first.order is not None, first
    assert [o["id"] for o in first.order["orders"]] == placed[::-1][:2]
    assert first.order["next_cursor"]
    second = await driver.list(customer, 2, first.order["next_cursor"])
    assert second.order is not None
    assert [o["id"] for o in second.order["orders"]] == placed[:1]
    assert second.order["next_cursor"] is None
    bad = await driver.list(customer, 101, None)
    assert bad.error == "VALIDATION_ERROR", bad
    assert_status(driver, bad)


async def test_idempotent_replay_and_mismatch(driver: Driver, api: httpx.AsyncClient) -> None:
    sku = await new_item(api, price=400, stock=10)
    customer = await new_customer(api)
    key = unique("key")
    body = {"customer_id": customer, "items": [{"sku": sku, "quantity": 2}]}
    first = await driver.place(body, key)
    replay = await driver.place(body, key)
    assert first.order is not None and replay.order is not None
    assert first.order["id"] == replay.order["id"]
    assert replay.error is None
    await eventually(lambda: stock(api, sku), (8, 0, 2))
    other = await driver.place({**body, "items": [{"sku": sku, "quantity": 3}]}, key)
    assert other.error == "IDEMPOTENCY_KEY_REUSED", other
    assert_status(driver, other)
    assert await stock(api, sku) == (8, 0, 2)


async def test_concurrent_duplicates_have_one_effect(
    driver: Driver, api: httpx.AsyncClient
) -> None:
    sku = await new_item(api, price=700, stock=10)
    customer = await new_customer(api)
    body = {"customer_id": customer, "items": [{"sku": sku, "quantity": 1}]}
    key = unique("key")
    replies = await asyncio.gather(*(driver.place(body, key) for _ in range(10)))
    assert {r.error for r in replies} <= {None, "REQUEST_IN_PROGRESS"}, replies
    assert None in {r.error for r in replies}
    for reply in replies:
        assert_status(driver, reply)
    assert len({r.order["id"] for r in replies if r.order is not None}) == 1
    await eventually(lambda: stock(api, sku), (9, 0, 1))


# The same bad inputs, refused by both APIs with the same code: the rules live once.
BAD_ORDERS = [
    pytest.param({"customer_id": "", "items": [{"sku": "A", "quantity": 1}]}, id="no-customer"),
    pytest.param({"customer_id": "c", "items": []}, id="no-items"),
    pytest.param({"customer_id": "c", "items": [{"sku": "A", "quantity": 0}]}, id="zero-qty"),
    pytest.param({"customer_id": "c", "items": [{"sku": "A", "quantity": 10_001}]}, id="big-qty"),
    pytest.param({"customer_id": "c", "items": [{"sku": "A B", "quantity": 1}]}, id="bad-sku"),
    pytest.param(
        {"customer_id": "c", "items": [{"sku": "A", "quantity": 1}, {"sku": "A", "quantity": 2}]},
        id="repeated-sku",
    ),
    pytest.param(
        {"customer_id": "c", "items": [{"sku": "A", "quantity": 1}], "redeem_points": -1},
        id="negative-points",
    ),
    pytest.param({"customer_id": "c" * 65, "items": [{"sku": "A", "quantity": 1}]}, id="long-id"),
]


@pytest.mark.parametrize("body", BAD_ORDERS)
async def test_bad_input_is_refused_alike(driver: Driver, body: dict[str, Any]) -> None:
    reply = await driver.place(body)
    assert reply.error == "VALIDATION_ERROR", reply
    assert_status(driver, reply)


async def test_bad_input_gives_the_same_message_over_both(
    api: httpx.AsyncClient, channel: grpc.aio.Channel
) -> None:
    rest, grpc_ = RestDriver(api), GrpcDriver(pb_grpc.OrderingServiceStub(channel))
    for param in BAD_ORDERS:
        body = param.values[0]
        assert isinstance(body, dict)
        a, b = await rest.place(body), await grpc_.place(body)
        assert a.error == b.error == "VALIDATION_ERROR"


# -- across protocols ---------------------------------------------------------------------


async def test_one_key_over_rest_then_grpc_is_one_order(
    api: httpx.AsyncClient, channel: grpc.aio.Channel
) -> None:
    rest, grpc_ = RestDriver(api), GrpcDriver(pb_grpc.OrderingServiceStub(channel))
    sku = await new_item(api, price=250, stock=10)
    customer = await new_customer(api)
    body = {"customer_id": customer, "items": [{"sku": sku, "quantity": 3}]}
    key = unique("key")
    over_rest = await rest.place(body, key)
    over_grpc = await grpc_.place(body, key)
    assert over_rest.error is None and over_grpc.error is None, (over_rest, over_grpc)
    assert over_rest.order is not None and over_grpc.order is not None
    assert over_rest.order["id"] == over_grpc.order["id"]
    await eventually(lambda: stock(api, sku), (7, 0, 3))
    other = await grpc_.place({**body, "items": [{"sku": sku, "quantity": 1}]}, key)
    assert (other.error, other.status) == ("IDEMPOTENCY_KEY_REUSED", "INVALID_ARGUMENT")
    assert (await item(api, sku))["sold"] == 3


async def test_admin_rpcs_with_a_request_id_share_rest_keys(
    api: httpx.AsyncClient, channel: grpc.aio.Channel
) -> None:
    stub = pb_grpc.OrderingServiceStub(channel)
    sku = unique("SKU")
    key = unique("key")
    created = await api.post(
        "/api/v1/items",
        json={"sku": sku, "name": "Pen", "price": 120, "stock": 4},
        headers={"Idempotency-Key": key},
    )
    assert created.status_code == 201, created.text
    again = await stub.CreateItem(
        pb.CreateItemRequest(sku=sku, name="Pen", price=120, stock=4, request_id=key), timeout=10
    )
    assert (again.item.sku, again.item.available) == (sku, 4)
    updated = await stub.UpdateItem(
        pb.UpdateItemRequest(sku=sku, restock=3, request_id=unique("key")), timeout=10
    )
    assert updated.item.available == 7
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        request = pb.CreateItemRequest(sku=sku, name="Pen", price=1, stock=1)
        await stub.CreateItem(request, timeout=10)
    assert grpc_reply(refused.value).error == "ALREADY_EXISTS"
    customer = unique("cust")
    tier = await stub.SetLoyaltyTier(
        pb.SetLoyaltyTierRequest(customer_id=customer, tier="gold", request_id=unique("k")),
        timeout=10,
    )
    assert (tier.account.tier, tier.account.discount_percent) == ("gold", 10)
    adjusted = await stub.AdjustPoints(
        pb.AdjustPointsRequest(customer_id=customer, delta=70, reason="welcome"), timeout=10
    )
    assert adjusted.account.points == 70
    read = await stub.GetLoyaltyAccount(
        pb.GetLoyaltyAccountRequest(customer_id=customer), timeout=10
    )
    assert read.account.points == 70
    with pytest.raises(grpc.aio.AioRpcError) as zero:
        await stub.AdjustPoints(
            pb.AdjustPointsRequest(customer_id=customer, delta=0, reason="x"), timeout=10
        )
    assert (grpc_reply(zero.value).error, zero.value.code()) == (
        "VALIDATION_ERROR",
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    listed = await stub.ListItems(pb.ListItemsRequest(limit=100), timeout=10)
    assert listed.items
    got = await stub.GetItem(pb.GetItemRequest(sku=sku), timeout=10)
    assert got.item.available == 7


async def test_history_has_a_grpc_twin(api: httpx.AsyncClient, channel: grpc.aio.Channel) -> None:
    stub = pb_grpc.OrderingServiceStub(channel)
    sku = await new_item(api, price=100, stock=5)
    customer = await new_customer(api)
    placed = await api.post(
        "/api/v1/orders", json={"customer_id": customer, "items": [{"sku": sku, "quantity": 1}]}
    )
    order_id = placed.json()["id"]
    rest = (await api.get(f"/api/v1/orders/{order_id}/history")).json()
    got = await stub.GetOrderHistory(pb.GetOrderHistoryRequest(order_id=order_id), timeout=10)
    assert got.order_id == order_id
    assert [s.step for s in got.steps][: len(rest["steps"])] == [s["step"] for s in rest["steps"]]
    assert "create" in [s.step for s in got.steps]
