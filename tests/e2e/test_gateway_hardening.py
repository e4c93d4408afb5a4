"""The gateway as an attacker meets it, over real sockets: identical 404s, oversized tokens,
the metrics port, and whose X-Forwarded-For is believed. The HTTP protocol's own limits
(heads, timeouts, connections) are in test_http_hardening."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from orderflow.gateway.auth import issue_token
from orderflow.settings import AuthSettings
from tests.e2e.conftest import raw, start, unique
from tests.system import System, free_port, one_process

SECRET = "hardening-secret-that-is-long-enough-0123456789"
AUTH = AuthSettings(jwt_secret=SECRET)


def token(subject: str, scope: str) -> str:
    return issue_token(AUTH, subject, [scope], 600)


def bearer(subject: str, scope: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(subject, scope)}"}


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def hardened(tmp_path_factory: pytest.TempPathFactory, metrics_port: int) -> Iterator[System]:
    env = {
        "ORDERFLOW_AUTH_JWT_SECRET": SECRET,
        "ORDERFLOW_GATEWAY_METRICS_PORT": str(metrics_port),
    }
    system = start(one_process(Path(tmp_path_factory.mktemp("hardened")), env))
    yield system
    system.stop()


def _port(system: System) -> int:
    return int(system.base_url.rsplit(":", 1)[1])


def _request(method: str, path: str, bearer_token: str) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: gateway",
        f"Authorization: Bearer {bearer_token}",
        "X-Request-ID: probe-1",
        "Content-Length: 0",
        "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _same_second(port: int, first: bytes, second: bytes) -> tuple[bytes, bytes]:
    """Both replies, taken within one second so that their Date headers agree."""
    for _ in range(5):
        a, b = await raw(port, first), await raw(port, second)
        date_a = [line for line in a.split(b"\r\n") if line.lower().startswith(b"date:")]
        date_b = [line for line in b.split(b"\r\n") if line.lower().startswith(b"date:")]
        if date_a == date_b:
            return a, b
    raise AssertionError("no two replies within one second")


@pytest.mark.parametrize("method", ["GET", "POST"], ids=["get", "cancel"])
async def test_someone_elses_order_and_a_missing_one_are_byte_identical(
    hardened: System, method: str
) -> None:
    admin = bearer("admin", "admin")
    alice, bob = unique("alice"), unique("bob")
    async with httpx.AsyncClient(base_url=hardened.base_url, timeout=30) as api:
        sku = unique("SKU")
        item = {"sku": sku, "name": "Thing", "price": 100, "stock": 5}
        assert (await api.post("/api/v1/items", json=item, headers=admin)).status_code == 201
        order = {"customer_id": alice, "items": [{"sku": sku, "quantity": 1}]}
        placed = await api.post("/api/v1/orders", json=order, headers=bearer(alice, "orders"))
        assert placed.status_code == 201, placed.text
    theirs, missing = placed.json()["id"], str(uuid.uuid4())
    suffix = "/cancel" if method == "POST" else ""
    as_bob = token(bob, "orders")
    not_yours, not_there = await _same_second(
        _port(hardened),
        _request(method, f"/api/v1/orders/{theirs}{suffix}", as_bob),
        _request(method, f"/api/v1/orders/{missing}{suffix}", as_bob),
    )
    assert not_yours.startswith(b"HTTP/1.1 404 "), not_yours
    assert not_yours == not_there, (not_yours, not_there)
    body = json.loads(not_yours.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "NOT_FOUND"
    assert theirs not in not_yours.decode() and missing not in not_there.decode()
    # ... and alice's order is still hers, untouched.
    async with httpx.AsyncClient(base_url=hardened.base_url, timeout=30) as api:
        mine = await api.get(f"/api/v1/orders/{theirs}", headers=bearer(alice, "orders"))
        assert mine.status_code == 200 and mine.json()["status"] == "CONFIRMED"


async def test_a_token_over_the_token_limit_is_refused_with_401(hardened: System) -> None:
    # Within the header limit (64 KB) but over the token limit (8 KB): the app refuses it
    # before decoding.
    async with httpx.AsyncClient(base_url=hardened.base_url, timeout=30) as api:
        response = await api.get(
            "/api/v1/items", headers={"Authorization": "Bearer " + "a" * 20000}
        )
        assert response.status_code == 401
        assert "longer than 8192 bytes" in response.json()["error"]["message"]


async def test_replies_name_no_server(hardened: System) -> None:
    async with httpx.AsyncClient(base_url=hardened.base_url, timeout=30) as api:
        for path in ("/healthz", "/api/v1/items", "/nowhere"):
            assert "server" not in (await api.get(path)).headers, path


async def test_metrics_served_on_their_own_port_only(hardened: System, metrics_port: int) -> None:
    async with httpx.AsyncClient(timeout=30) as api:
        on_api = await api.get(f"{hardened.base_url}/metrics")
        assert on_api.status_code == 404
        apart = await api.get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert apart.status_code == 200
        # The gateway's and, in one process, the services' metrics (stock levels) are there.
        assert "orderflow_http_requests" in apart.text and "orderflow_rpc_requests" in apart.text


# --- whose address counts ---------------------------------------------------------------


def _limited_gateway(tmp: Path, trusted: list[str]) -> System:
    env = {
        "ORDERFLOW_AUTH_JWT_SECRET": SECRET,
        "ORDERFLOW_AUTH_FAILURE_LIMIT_PER_SECOND": "0.001",
        "ORDERFLOW_AUTH_FAILURE_LIMIT_BURST": "3",
        "ORDERFLOW_GATEWAY_TRUSTED_PROXIES": json.dumps(trusted),
    }
    return start(one_process(tmp, env))


async def _codes(system: System, forwarded_for: list[str]) -> list[int]:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as api:
        return [
            (
                await api.get(
                    "/api/v1/items",
                    headers={"Authorization": "Bearer bad", "X-Forwarded-For": address},
                )
            ).status_code
            for address in forwarded_for
        ]


async def test_x_forwarded_for_is_ignored_from_an_untrusted_peer(tmp_path: Path) -> None:
    system = _limited_gateway(tmp_path, [])
    try:
        # Each request claims another address: all of them are still 127.0.0.1's failures.
        spoofed = [f"198.51.100.{i}" for i in range(5)]
        assert await _codes(system, spoofed) == [401, 401, 401, 429, 429]
    finally:
        system.stop()


async def test_x_forwarded_for_is_honoured_from_a_trusted_proxy(tmp_path: Path) -> None:
    system = _limited_gateway(tmp_path, ["127.0.0.1"])
    try:
        # Behind the proxy each client has a bucket of its own...
        assert await _codes(system, [f"198.51.100.{i}" for i in range(5)]) == [401] * 5
        # ...and one client is limited by its own address.
        assert await _codes(system, ["203.0.113.7"] * 5) == [401, 401, 401, 429, 429]
    finally:
        system.stop()
