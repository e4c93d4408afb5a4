"""The published OpenAPI document tells the truth about replies (what schemathesis found)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from orderflow.gateway.app import create_app
from orderflow.gateway.deps import Services
from orderflow.gateway.readiness import Readiness
from orderflow.gateway.rpc import metadata_value
from orderflow.settings import CommonSettings, GatewaySettings
from tests.fakes import Calls, FakeInventory, FakeLoyalty, FakeOrders


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async def serving() -> str:
        return "SERVING"

    calls = Calls()
    app = create_app(
        GatewaySettings(max_body_bytes=4096),
        CommonSettings(),
        services=Services(
            FakeOrders(calls),
            FakeInventory(calls, {"MUG-1": (1250, 10)}),
            FakeLoyalty(calls, {"c-1": 500}),
        ),
        readiness=Readiness({"orders": serving, "inventory": serving, "loyalty": serving}),
        recovery=False,
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            yield c


@pytest.fixture
async def openapi(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


async def test_405_allows_every_method_of_the_path(client: httpx.AsyncClient) -> None:
    response = await client.request("OPTIONS", "/api/v1/items")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
    response = await client.delete("/api/v1/customers/c-1/loyalty")
    assert response.headers["allow"] == "GET, PUT"
    assert response.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


async def test_body_errors_are_documented_and_have_the_error_shape(
    client: httpx.AsyncClient, openapi: dict[str, Any]
) -> None:
    bad = await client.post(
        "/api/v1/items", content=b"\xb3T\x17\xf0", headers={"content-type": "application/json"}
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "MALFORMED_REQUEST"
    big = await client.post("/api/v1/items", content=b"x" * 5000)
    assert big.status_code == 413
    error = {"$ref": "#/components/schemas/ErrorOut"}
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            if "requestBody" in operation:
                for status in ("400", "413"):
                    assert responses[status]["content"]["application/json"]["schema"] == error
            if "422" in responses:
                assert responses["422"]["content"]["application/json"]["schema"] == error, (
                    method,
                    path,
                )
    assert "HTTPValidationError" not in openapi["components"]["schemas"]


async def test_metrics_and_readiness_are_documented_as_served(
    client: httpx.AsyncClient, openapi: dict[str, Any]
) -> None:
    metrics = openapi["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    assert (await client.get("/metrics")).headers["content-type"].startswith("text/plain")
    assert "503" in openapi["paths"]["/readyz"]["get"]["responses"]


async def test_links_lead_from_created_things_to_what_uses_them(openapi: dict[str, Any]) -> None:
    ids = {
        (path, method): op["operationId"]
        for path, ops in openapi["paths"].items()
        for method, op in ops.items()
    }
    placed = openapi["paths"]["/api/v1/orders"]["post"]["responses"]["201"]["links"]
    assert placed["GetOrder"] == {
        "operationId": ids[("/api/v1/orders/{order_id}", "get")],
        "parameters": {"order_id": "$response.body#/id"},
    }
    history = ids[("/api/v1/orders/{order_id}/history", "get")]
    assert placed["GetOrderHistory"]["operationId"] == history
    cancelled = openapi["paths"]["/api/v1/orders/{order_id}/cancel"]["post"]["responses"]
    assert cancelled["200"]["links"]["GetOrderHistory"]["operationId"] == history
    created = openapi["paths"]["/api/v1/items"]["post"]["responses"]["201"]["links"]
    assert created["PlaceOrder"]["operationId"] == ids[("/api/v1/orders", "post")]
    assert {"GetItem", "UpdateItem"} <= set(created)


async def test_a_request_id_that_grpc_metadata_cannot_carry_is_replaced(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/healthz", headers={"x-request-id": "caf\xe9".encode("latin-1")})
    assert response.headers["x-request-id"] != "caf\xe9"
    assert response.headers["x-request-id"].isascii()
    kept = await client.get("/healthz", headers={"x-request-id": "req-1"})
    assert kept.headers["x-request-id"] == "req-1"


def test_ids_in_grpc_metadata_are_printable_ascii() -> None:
    assert metadata_value("0b6c-ORDER_1") == "0b6c-ORDER_1"
    assert metadata_value("\xe9\u2603") == "%C3%A9%E2%98%83"
    assert metadata_value("a\nb") == "a%0Ab"


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/api/v1/orders", "post"),
        ("/api/v1/items", "post"),
        ("/api/v1/items/{sku}", "patch"),
        ("/api/v1/customers/{customer_id}/loyalty", "put"),
        ("/api/v1/customers/{customer_id}/loyalty/points", "post"),
    ],
)
async def test_mutating_routes_document_the_idempotency_key_and_its_conflicts(
    openapi: dict[str, Any], path: str, method: str
) -> None:
    operation = openapi["paths"][path][method]
    headers = {p["name"].lower(): p for p in operation["parameters"] if p["in"] == "header"}
    key = headers["idempotency-key"]
    schema = key["schema"].get("anyOf", [key["schema"]])[0]
    assert (schema["minLength"], schema["maxLength"]) == (1, 255)
    assert not key.get("required", False)
    # another body with the key: 422; a repeat while the first runs: 409
    assert {"409", "422"} <= set(operation["responses"])


async def test_the_order_history_is_documented(openapi: dict[str, Any]) -> None:
    operation = openapi["paths"]["/api/v1/orders/{order_id}/history"]["get"]
    assert {"200", "401", "404"} <= set(operation["responses"])
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/OrderHistoryOut"}
    schemas = openapi["components"]["schemas"]
    history = schemas["OrderHistoryOut"]
    assert set(history["required"]) == {"order_id", "status", "settled", "steps", "truncated"}
    step = schemas["StepOut"]
    assert set(step["required"]) == {
        "step", "outcome", "started_at", "duration_ms", "driver", "error",
    }  # fmt: skip
    assert step["properties"]["outcome"]["enum"] == ["ok", "failed", "unknown"]
    assert step["properties"]["driver"]["enum"] == ["request", "recovery", "event"]
