"""Authentication over the gateway's gRPC API: the same tokens, scopes and object rules as REST."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import httpx
import jwt
import pytest

from orderflow.api.v1 import ordering_pb2 as pb
from orderflow.api.v1 import ordering_pb2_grpc as pb_grpc
from orderflow.gateway.auth import issue_token
from orderflow.settings import AuthSettings
from tests.e2e.conftest import start, unique
from tests.e2e.test_grpc_api import grpc_reply
from tests.system import System, one_process

SECRET = "e2e-grpc-secret-that-is-long-enough-0123456789"
AUTH = AuthSettings(jwt_secret=SECRET)


def token(subject: str, scope: str) -> str:
    return issue_token(AUTH, subject, [scope], 600)


def bearer(value: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {value}"),)


def claims(subject: str, scope: str, **changes: int) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {
        "sub": subject,
        "scope": scope,
        "iss": AUTH.issuer,
        "aud": AUTH.audience,
        "iat": now,
        "exp": now + 600,
    }
    return {**base, **changes}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    env = {
        "ORDERFLOW_AUTH_JWT_SECRET": SECRET,
        "ORDERFLOW_GATEWAY_RATE_LIMIT_PER_SECOND": "1",
        "ORDERFLOW_GATEWAY_RATE_LIMIT_BURST": "3",
    }
    system = start(one_process(Path(tmp_path_factory.mktemp("grpc-secured")), env))
    yield system
    system.stop()


@pytest.fixture
async def stub(secured: System) -> AsyncIterator[pb_grpc.OrderingServiceStub]:
    async with grpc.aio.insecure_channel(secured.grpc_target) as channel:
        yield pb_grpc.OrderingServiceStub(channel)


async def refused(call: object) -> tuple[str, str]:
    """(gRPC status name, ErrorInfo reason) of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    reply = grpc_reply(caught.value)
    assert reply.error is not None
    return reply.status, reply.error


async def test_bad_tokens_are_unauthenticated(stub: pb_grpc.OrderingServiceStub) -> None:
    request = pb.GetItemRequest(sku="ANY")
    expired = jwt.encode(
        claims("alice", "orders", iat=int(time.time()) - 700, exp=int(time.time()) - 100),
        SECRET,
        algorithm="HS256",
    )
    good = token("alice", "orders")
    head, payload, signature = good.split(".")
    tampered = f"{head}.{payload}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"
    unsigned = jwt.encode(claims("alice", "admin"), "", algorithm="none")
    for metadata in [(), bearer(expired), bearer(tampered), bearer(unsigned), bearer("")]:
        got = await refused(stub.GetItem(request, metadata=metadata, timeout=10))
        assert got == ("UNAUTHENTICATED", "UNAUTHENTICATED"), metadata


async def test_scopes_and_object_rules(secured: System, stub: pb_grpc.OrderingServiceStub) -> None:
    admin = bearer(token("admin", "admin"))
    alice, bob = unique("alice"), unique("bob")
    sku = unique("SKU")
    await stub.CreateItem(
        pb.CreateItemRequest(sku=sku, name="Thing", price=100, stock=50), metadata=admin, timeout=10
    )
    as_alice, as_bob = bearer(token(alice, "orders")), bearer(token(bob, "orders"))
    # A customer token on an admin RPC.
    got = await refused(
        stub.CreateItem(
            pb.CreateItemRequest(sku=unique("SKU"), name="x", price=1, stock=1),
            metadata=as_alice,
            timeout=10,
        )
    )
    assert got == ("PERMISSION_DENIED", "FORBIDDEN")
    # Placing for someone else.
    order = pb.PlaceOrderRequest(
        customer_id=alice, items=[pb.PlaceOrderRequest.Line(sku=sku, quantity=1)]
    )
    got = await refused(stub.PlaceOrder(order, metadata=as_bob, timeout=10))
    assert got == ("PERMISSION_DENIED", "FORBIDDEN")
    placed = await stub.PlaceOrder(order, metadata=as_alice, timeout=10)
    assert placed.order.status == pb.ORDER_STATUS_CONFIRMED
    # Bob cannot tell alice's order from none at all, over gRPC as over REST.
    mine = pb.GetOrderRequest(order_id=placed.order.id)
    assert await refused(stub.GetOrder(mine, metadata=as_bob, timeout=10)) == (
        "NOT_FOUND",
        "NOT_FOUND",
    )
    none = pb.GetOrderRequest(order_id=unique("nope"))
    assert await refused(stub.GetOrder(none, metadata=as_bob, timeout=10)) == (
        "NOT_FOUND",
        "NOT_FOUND",
    )
    cancel = pb.CancelOrderRequest(order_id=placed.order.id)
    assert (await refused(stub.CancelOrder(cancel, metadata=as_bob, timeout=10)))[0] == "NOT_FOUND"
    got_alice = await stub.GetOrder(mine, metadata=as_alice, timeout=10)
    assert got_alice.order.id == placed.order.id
    listed = await stub.ListOrders(pb.ListOrdersRequest(), metadata=as_bob, timeout=10)
    assert list(listed.orders) == []
    async with httpx.AsyncClient(base_url=secured.base_url, timeout=10) as api:
        path = f"/api/v1/orders/{placed.order.id}"
        headers = {"Authorization": as_bob[0][1]}
        assert (await api.get(path, headers=headers)).status_code == 404


async def test_a_burst_is_rate_limited_with_retry_info(stub: pb_grpc.OrderingServiceStub) -> None:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    admin = bearer(token("admin", "admin"))
    sku = unique("SKU")
    await stub.CreateItem(
        pb.CreateItemRequest(sku=sku, name="Thing", price=100, stock=50), metadata=admin, timeout=10
    )
    carol = unique("carol")
    as_carol = bearer(token(carol, "orders"))
    order = pb.PlaceOrderRequest(
        customer_id=carol, items=[pb.PlaceOrderRequest.Line(sku=sku, quantity=1)]
    )
    codes = []
    limited = None
    for _ in range(8):
        try:
            await stub.PlaceOrder(order, metadata=as_carol, timeout=10)
            codes.append("OK")
        except grpc.aio.AioRpcError as exc:
            codes.append(exc.code().name)
            limited = exc
    assert "OK" in codes and "RESOURCE_EXHAUSTED" in codes, codes
    assert limited is not None
    assert grpc_reply(limited).error == "RATE_LIMITED"
    status = rpc_status.from_call(limited)
    assert status is not None
    retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(retry) == 1
    info = error_details_pb2.RetryInfo()
    retry[0].Unpack(info)
    assert info.retry_delay.seconds >= 1
