"""orderflow_service_serving: the gateway keeps asking each service's health and shows the
answer on /metrics without anyone calling /readyz (OrderflowServiceNotServing reads it)."""

from __future__ import annotations

import asyncio
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from orderflow.gateway.app import create_app
from orderflow.gateway.deps import Services
from orderflow.gateway.readiness import Readiness
from orderflow.settings import CommonSettings, GatewaySettings
from tests.fakes import Calls, FakeInventory, FakeLoyalty, FakeOrders


def serving(page: str) -> dict[str, float]:
    return {
        s.labels["service"]: s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
        if s.name == "orderflow_service_serving"
    }


async def test_the_serving_gauge_follows_each_services_health() -> None:
    states = {"orders": "SERVING", "inventory": "SERVING", "loyalty": "SERVING"}
    asked = 0

    def probe(name: str):  # type: ignore[no-untyped-def]
        async def check() -> str:
            nonlocal asked
            asked += 1
            if states[name] == "RAISE":
                raise RuntimeError("probe broke")
            return states[name]

        return check

    calls = Calls()
    app = create_app(
        GatewaySettings(service_health_interval_seconds=0.02),
        CommonSettings(),
        services=Services(FakeOrders(calls), FakeInventory(calls, {}), FakeLoyalty(calls, {})),
        readiness=Readiness({name: probe(name) for name in states}),
        recovery=False,
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:

            async def until(expected: dict[str, float]) -> None:
                deadline = time.monotonic() + 5
                while serving((await client.get("/metrics")).text) != expected:
                    assert time.monotonic() < deadline, (await client.get("/metrics")).text
                    await asyncio.sleep(0.01)

            await until({"orders": 1, "inventory": 1, "loyalty": 1})
            states["loyalty"] = "UNAVAILABLE"
            await until({"orders": 1, "inventory": 1, "loyalty": 0})
            # A probe that raises does not stop the checks: the next answer still shows.
            states["loyalty"] = "RAISE"
            before = asked
            while asked < before + 6:
                await asyncio.sleep(0.01)
            states["loyalty"] = "SERVING"
            await until({"orders": 1, "inventory": 1, "loyalty": 1})
            states["inventory"] = "NOT_SERVING"
            await until({"orders": 1, "inventory": 0, "loyalty": 1})
    # Stopped with the app: nobody is asked any more.
    stopped_at = asked
    await asyncio.sleep(0.1)
    assert asked == stopped_at


async def test_readyz_updates_the_gauge_with_what_it_saw() -> None:
    states = {"orders": "SERVING", "inventory": "SERVING", "loyalty": "SERVING"}

    def probe(name: str):  # type: ignore[no-untyped-def]
        async def check() -> str:
            return states[name]

        return check

    calls = Calls()
    app = create_app(
        GatewaySettings(service_health_interval_seconds=3600),  # one check at start-up
        CommonSettings(),
        services=Services(FakeOrders(calls), FakeInventory(calls, {}), FakeLoyalty(calls, {})),
        readiness=Readiness({name: probe(name) for name in states}),
        recovery=False,
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            deadline = time.monotonic() + 5
            while "orders" not in serving((await client.get("/metrics")).text):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            assert serving((await client.get("/metrics")).text)["orders"] == 1
            states["orders"] = "UNAVAILABLE"
            assert (await client.get("/readyz")).status_code == 503
            assert serving((await client.get("/metrics")).text)["orders"] == 0
