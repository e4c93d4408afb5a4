"""Authentication on a real gateway process, and the per-client limit on placing orders."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from orderflow.gateway.auth import issue_token
from orderflow.settings import AuthSettings
from tests.e2e.conftest import start, unique
from tests.system import System, one_process

SECRET = "e2e-secret-that-is-long-enough-0123456789abcdef"
AUTH = AuthSettings(jwt_secret=SECRET)


def bearer(subject: str, scope: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(AUTH, subject, [scope], 600)}"}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    env = {
        "ORDERFLOW_AUTH_JWT_SECRET": SECRET,
        "ORDERFLOW_GATEWAY_RATE_LIMIT_PER_SECOND": "2",
        "ORDERFLOW_GATEWAY_RATE_LIMIT_BURST": "5",
    }
    system = start(one_process(Path(tmp_path_factory.mktemp("secured")), env))
    yield system
    system.stop()


async def test_tokens_scopes_and_limits_on_a_real_gateway(secured: System) -> None:
    admin = bearer("admin", "admin")
    async with httpx.AsyncClient(base_url=secured.base_url, timeout=30) as api:
        sku = unique("SKU")
        body = {"sku": sku, "name": "Thing", "price": 100, "stock": 50}
        assert (await api.post("/api/v1/items", json=body)).status_code == 401
        assert (await api.post("/api/v1/items", json=body, headers=admin)).status_code == 201
        alice, bob = unique("alice"), unique("bob")
        order = {"customer_id": alice, "items": [{"sku": sku, "quantity": 1}]}
        assert (await api.post("/api/v1/orders", json=order)).status_code == 401
        as_bob = await api.post("/api/v1/orders", json=order, headers=bearer(bob, "orders"))
        assert as_bob.status_code == 403
        placed = await api.post("/api/v1/orders", json=order, headers=bearer(alice, "orders"))
        assert placed.status_code == 201, placed.text
        path = f"/api/v1/orders/{placed.json()['id']}"
        assert (await api.get(path, headers=bearer(bob, "orders"))).status_code == 404
        assert (await api.get(path, headers=bearer(alice, "orders"))).status_code == 200
        # A burst from alice runs into her limit (429 + Retry-After); bob still orders.
        burst = await asyncio.gather(
            *(
                api.post("/api/v1/orders", json=order, headers=bearer(alice, "orders"))
                for _ in range(10)
            )
        )
        codes = [r.status_code for r in burst]
        assert 429 in codes and 201 in codes, codes
        limited = next(r for r in burst if r.status_code == 429)
        assert int(limited.headers["retry-after"]) >= 1
        bobs = {"customer_id": bob, "items": [{"sku": sku, "quantity": 1}]}
        mine = await api.post("/api/v1/orders", json=bobs, headers=bearer(bob, "orders"))
        assert mine.status_code == 201, mine.text
        # Health, readiness, metrics and the docs stay open.
        for open_path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert (await api.get(open_path)).status_code == 200, open_path


async def test_one_process_with_mutual_tls_places_orders(tmp_path: Path) -> None:
    from orderflow.platform.tls import make_certs

    files = make_certs(tmp_path / "certs", ["127.0.0.1", "localhost"])
    env = {
        "ORDERFLOW_TLS_CA_FILE": str(files["ca"]),
        # One process is the gateway and the services: the gateway's certificate serves too.
        "ORDERFLOW_TLS_CERT_FILE": str(files["gateway_cert"]),
        "ORDERFLOW_TLS_KEY_FILE": str(files["gateway_key"]),
    }
    system = start(one_process(tmp_path, env))
    try:
        async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as api:
            sku = unique("TLS")
            item = {"sku": sku, "name": "Thing", "price": 100, "stock": 5}
            assert (await api.post("/api/v1/items", json=item)).status_code == 201
            order = {"customer_id": unique("c"), "items": [{"sku": sku, "quantity": 1}]}
            placed = await api.post("/api/v1/orders", json=order)
            assert placed.status_code == 201, placed.text
            assert (await api.get("/readyz")).status_code == 200
    finally:
        system.stop()
