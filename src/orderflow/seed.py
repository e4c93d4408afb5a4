"""Load items, loyalty tiers and points into a running orderflow, through the gateway's REST API.

`orderflow seed --demo` loads the demo catalog and accounts; `orderflow seed FILE` loads a
JSON file of the same shape:

    {"items": [{"sku": "MUG-1", "name": "Mug", "price": 1250, "stock": 100}],
     "customers": [{"customer_id": "c-1", "tier": "gold", "points": 500}]}

It works against any running system (one process or one process per service, with or
without authentication: give an admin token) because it uses only the public API. It is
idempotent: an item or a loyalty account that already exists is left exactly as it is, so
running it again changes nothing, and an order placed in between keeps its effects.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


@dataclass(frozen=True)
class SeedItem:
    sku: str
    name: str
    price: int  # minor units
    stock: int


@dataclass(frozen=True)
class SeedCustomer:
    customer_id: str
    tier: str
    points: int = 0


@dataclass(frozen=True)
class Seed:
    items: tuple[SeedItem, ...] = ()
    customers: tuple[SeedCustomer, ...] = ()


DEMO = Seed(
    items=(
        SeedItem("MUG-1", "Mug", 1250, 100),
        SeedItem("TEE-1", "T-shirt", 2000, 50),
        SeedItem("CAP-1", "Cap", 1500, 50),
        SeedItem("STICKER-1", "Sticker", 150, 1000),
    ),
    customers=(
        SeedCustomer("c-1", "gold", 500),
        SeedCustomer("c-2", "silver", 0),
        SeedCustomer("c-3", "standard", 0),
    ),
)
WELCOME_REASON = "seed: welcome points"


class SeedError(Exception):
    """The file or the gateway's answer makes seeding impossible; the message says why."""


def read_seed(path: Path) -> Seed:
    """A seed file (JSON, see the module docstring), or SeedError naming what is wrong."""
    try:
        raw = json.loads(path.read_text())
        items = tuple(SeedItem(**entry) for entry in raw.get("items", []))
        customers = tuple(SeedCustomer(**entry) for entry in raw.get("customers", []))
    except OSError as exc:
        raise SeedError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, TypeError, AttributeError) as exc:
        raise SeedError(f"{path}: not a seed file ({exc})") from None
    for item in items:
        if not all(isinstance(v, int) for v in (item.price, item.stock)):
            raise SeedError(f"{path}: price and stock of {item.sku!r} must be integers")
    for customer in customers:
        if not isinstance(customer.points, int) or customer.points < 0:
            raise SeedError(f"{path}: points of {customer.customer_id!r} must be an integer >= 0")
    return Seed(items, customers)


def _check(response: httpx.Response, what: str) -> dict[str, Any]:
    if response.is_success:
        body: dict[str, Any] = response.json()
        return body
    try:
        error = response.json()["error"]
        reason = f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        reason = response.text[:200]
    raise SeedError(f"{what}: HTTP {response.status_code} {reason}")


def seed(client: httpx.Client, data: Seed, say: Callable[[str], None] = print) -> dict[str, int]:
    """Create what is missing of data through the REST API; returns counts by outcome."""
    counts = {"created": 0, "kept": 0}
    for item in data.items:
        found = client.get(f"/api/v1/items/{item.sku}")
        if found.status_code == 200:
            counts["kept"] += 1
            say(f"item {item.sku}: already there, left as it is")
            continue
        if found.status_code != 404:
            _check(found, f"item {item.sku}")
        body = {"sku": item.sku, "name": item.name, "price": item.price, "stock": item.stock}
        created = client.post("/api/v1/items", json=body)
        if created.status_code == 409:  # created by someone else just now
            counts["kept"] += 1
            say(f"item {item.sku}: already there, left as it is")
            continue
        _check(created, f"item {item.sku}")
        counts["created"] += 1
        say(f"item {item.sku}: created ({item.name}, price {item.price}, stock {item.stock})")
    for customer in data.customers:
        path = f"/api/v1/customers/{customer.customer_id}/loyalty"
        found = client.get(path)
        if found.status_code == 200:
            counts["kept"] += 1
            say(f"customer {customer.customer_id}: account already there, left as it is")
            continue
        if found.status_code != 404:
            _check(found, f"customer {customer.customer_id}")
        _check(client.put(path, json={"tier": customer.tier}), f"customer {customer.customer_id}")
        if customer.points:
            points = {"delta": customer.points, "reason": WELCOME_REASON}
            _check(client.post(f"{path}/points", json=points), f"customer {customer.customer_id}")
        counts["created"] += 1
        say(
            f"customer {customer.customer_id}: account created "
            f"(tier {customer.tier}, {customer.points} points)"
        )
    return counts


def wait_until_ready(client: httpx.Client, wait: float) -> None:
    """Return once the gateway answers /readyz with 200 (a system started a moment ago
    may not yet); SeedError after wait seconds."""
    deadline = time.monotonic() + wait
    last = ""
    while True:
        try:
            ready = client.get("/readyz")
            if ready.status_code == 200:
                return
            last = f"HTTP {ready.status_code}"
        except httpx.TransportError as exc:
            last = str(exc) or type(exc).__name__
        if time.monotonic() >= deadline:
            where = client.base_url
            raise SeedError(f"the gateway at {where} is not ready after {wait:g} s ({last})")
        time.sleep(0.2)


def client_for(url: str, token: str | None, timeout: float = 10.0) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
