"""No oversell: 1,000 concurrent orders of 1 unit for 100 units, per-service mode on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from tests.e2e.conftest import eventually, new_customer, new_item, stock
from tests.system import System

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


async def test_thousand_concurrent_orders_for_a_hundred_units(per_service_system: System) -> None:
    # 200 orders on the wire at a time, as 200 clients would send them. The rest wait
    # for a connection here rather than in httpx's pool, which walks every connection for
    # every queued request: with 800 queued, one turn of the test's loop took up to a second
    # here (more on a slower machine), so a connection could sit idle long enough for a
    # server to close it just as the next request went out on it.
    in_flight = 200
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    gate = asyncio.Semaphore(in_flight)
    async with httpx.AsyncClient(
        base_url=per_service_system.base_url, timeout=60, limits=limits
    ) as api:
        sku = await new_item(api, price=100, stock=100)
        customers = [await new_customer(api) for _ in range(10)]

        async def place(n: int) -> httpx.Response:
            async with gate:
                return await api.post(
                    "/api/v1/orders",
                    json={"customer_id": customers[n % 10], "items": [{"sku": sku, "quantity": 1}]},
                )

        responses = await asyncio.gather(*(place(n) for n in range(1000)))
        codes = Counter(r.status_code for r in responses)
        errors = Counter(r.json()["error"]["code"] for r in responses if r.status_code >= 400)
        assert codes == {201: 100, 409: 900}, (codes, errors)
        assert errors == {"OUT_OF_STOCK": 900}
        statuses = Counter(
            (r.json() if r.status_code == 201 else r.json()["order"])["status"] for r in responses
        )
        assert statuses == {"CONFIRMED": 100, "REJECTED": 900}
        await eventually(lambda: stock(api, sku), (0, 0, 100), timeout=30)
