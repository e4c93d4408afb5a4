"""What the published API promises beyond what each route declares, kept true to the replies.

FastAPI documents what a route declares. Some replies come from elsewhere: a body that is
not JSON gets 400 and an oversized one 413 (BodyLimitMiddleware), and a request that fails
validation gets the error shape with 422, not FastAPI's default `{"detail": ...}`. Links
say which values of a reply feed which other operations (for clients, and for stateful
API tests). A 405 lists in Allow every method the path has (Starlette names only those
of the first route that matched the path).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI

_ERROR = {
    "description": "error",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
}
_BODY_ERRORS = {"400": "the body is not valid JSON", "413": "the body is too large"}
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

ORDER = "/api/v1/orders/{order_id}"
ITEM = "/api/v1/items/{sku}"
ACCOUNT = "/api/v1/customers/{customer_id}/loyalty"

# (path, method, status) of a reply -> link name -> (target path, target method, link fields)
LINKS: dict[tuple[str, str, str], dict[str, tuple[str, str, dict[str, Any]]]] = {
    ("/api/v1/orders", "post", "201"): {
        "GetOrder": (ORDER, "get", {"parameters": {"order_id": "$response.body#/id"}}),
        "GetOrderHistory": (
            f"{ORDER}/history",
            "get",
            {"parameters": {"order_id": "$response.body#/id"}},
        ),
        "CancelOrder": (
            f"{ORDER}/cancel",
            "post",
            {"parameters": {"order_id": "$response.body#/id"}},
        ),
    },
    ("/api/v1/orders/{order_id}/cancel", "post", "200"): {
        "GetOrder": (ORDER, "get", {"parameters": {"order_id": "$response.body#/id"}}),
        "GetOrderHistory": (
            f"{ORDER}/history",
            "get",
            {"parameters": {"order_id": "$response.body#/id"}},
        ),
    },
    ("/api/v1/items", "post", "201"): {
        "GetItem": (ITEM, "get", {"parameters": {"sku": "$response.body#/sku"}}),
        "UpdateItem": (ITEM, "patch", {"parameters": {"sku": "$response.body#/sku"}}),
        # An order of the new item (fields the link does not give are the client's).
        "PlaceOrder": (
            "/api/v1/orders",
            "post",
            {"requestBody": {"items": [{"sku": "$response.body#/sku", "quantity": 1}]}},
        ),
    },
    (ACCOUNT, "put", "200"): {
        "GetAccount": (
            ACCOUNT,
            "get",
            {"parameters": {"customer_id": "$response.body#/customer_id"}},
        ),
        "AdjustPoints": (
            f"{ACCOUNT}/points",
            "post",
            {"parameters": {"customer_id": "$response.body#/customer_id"}},
        ),
    },
}


def document(app: FastAPI) -> None:
    """Make app.openapi() describe the replies as they are (built once, then cached)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            refine(build())
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def refine(schema: dict[str, Any]) -> None:
    paths: dict[str, dict[str, Any]] = schema.get("paths", {})
    for operations in paths.values():
        for method, operation in operations.items():
            if method not in _METHODS:
                continue
            responses = operation.setdefault("responses", {})
            if "422" in responses:  # validation errors have the error shape too
                responses["422"] = {**_ERROR, "description": "invalid request"}
            if "requestBody" in operation:
                for status, why in _BODY_ERRORS.items():
                    responses.setdefault(status, {**_ERROR, "description": why})
    for (path, method, status), links in LINKS.items():
        reply = paths.get(path, {}).get(method, {}).get("responses", {}).get(status)
        if reply is None:
            continue
        for name, (target, target_method, fields) in links.items():
            operation_id = paths.get(target, {}).get(target_method, {}).get("operationId")
            if operation_id:
                reply.setdefault("links", {})[name] = {"operationId": operation_id, **fields}
    components = schema.get("components", {}).get("schemas", {})
    if "HTTPValidationError" not in str(paths):  # FastAPI's default shapes, now unused
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)


def allowed_methods(app: FastAPI, path: str) -> str | None:
    """Every method the API documents for path (for Allow), or None for an unknown path."""
    for template, operations in app.openapi().get("paths", {}).items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            return ", ".join(sorted(m.upper() for m in operations if m in _METHODS))
    return None
