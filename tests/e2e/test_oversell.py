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
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(
        base_url=per_service_system.base_url, timeout=60, limits=limits
    ) as api:
        sku = await new_item(api, price=100, stock=100)
        customers = [await new_customer(api) for _ in range(10)]

        async def place(n: int) -> httpx.Response:
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
