"""The home page while a service is down: a per-service system (each service its own
process, SQLite files, events over a JetStream of its own) with a short lease, so that a
test can stop loyalty, watch the console report it and the order it leaves stuck, and see
both clear once loyalty is back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from orderflow.registry import SERVICE_NAMES
from tests.e2e.console.conftest import shot
from tests.e2e.nats import NatsServer
from tests.system import System, per_service, start_ready

FAST_RECOVERY = {
    "ORDERFLOW_GATEWAY_REQUEST_TIMEOUT_SECONDS": "3",
    "ORDERFLOW_GATEWAY_RPC_TIMEOUT_SECONDS": "1",
    "ORDERFLOW_GATEWAY_LEASE_SECONDS": "4",
    "ORDERFLOW_GATEWAY_RECOVERY_INTERVAL_SECONDS": "0.5",
}


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    workdir = tmp_path_factory.mktemp("console-faults")
    nats = NatsServer(workdir)
    nats.start()
    urls = {name: f"sqlite+aiosqlite:///{workdir / name}.db" for name in SERVICE_NAMES}
    system = per_service(workdir, urls, {**FAST_RECOVERY, "ORDERFLOW_NATS_URL": nats.url})
    try:
        yield start_ready(system)
    finally:
        system.stop()
        nats.stop()


def test_home_shows_a_service_down_and_the_order_it_leaves_stuck_until_it_is_back(
    faulty: System, page: Any
) -> None:
    from playwright.sync_api import expect

    api = httpx.Client(base_url=faulty.base_url, timeout=30)
    sku = f"SKU-{uuid.uuid4().hex[:8]}"
    body = {"sku": sku, "name": "Thing", "price": 1000, "stock": 5}
    assert api.post("/api/v1/items", json=body).status_code == 201
    page.goto(f"{faulty.base_url}/console/")
    expect(page.locator("#services")).to_contain_text("All 3 services are SERVING")

    faulty.stop("loyalty")
    try:
        order = {"customer_id": "c-down", "items": [{"sku": sku, "quantity": 1}]}
        response = api.post("/api/v1/orders", json=order)
        assert response.status_code == 503, response.text
        order_id = response.json()["error"]["details"]["order_id"]
        placed_at = time.monotonic()
        # Without a reload: the attention list refreshes itself.
        expect(page.locator("#services")).to_contain_text("loyalty", timeout=15_000)
        link = f'a[href="/console/orders/{order_id}"]'
        expect(page.locator(f"#compensations {link}")).to_be_visible(timeout=15_000)
        expect(page.locator(f"#stuck {link}")).to_be_visible(timeout=20_000)
        assert time.monotonic() - placed_at > 3.5  # not before its 4 s lease ran out
        assert page.locator("#attention-total").inner_text() != "0"
        shot(page, "home-service-down")
    finally:
        faulty.start("loyalty")
    faulty.wait_ready()
    expect(page.locator("#services")).to_contain_text("All 3 services are SERVING", timeout=15_000)
    expect(page.locator(f"#stuck {link}")).to_have_count(0, timeout=30_000)
    expect(page.locator(f"#compensations {link}")).to_have_count(0, timeout=15_000)
    history = api.get(f"/api/v1/orders/{order_id}/history").json()
    assert history["settled"] and history["status"] == "REJECTED"
    api.close()
