"""`Idempotency-Key` on the admin routes (ADR 0023), over REST against per-service mode on
SQLite and PostgreSQL: the same key and body give the same status and body with one effect;
another body with the key gets 422 IDEMPOTENCY_KEY_REUSED; while a claim of another request
on the key is live, 409 REQUEST_IN_PROGRESS (set up as a claim in the service's database,
which is what a request still running leaves there), and once its lease is over, the key
is taken over and the change made once."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import NullPool, text
from sqlalchemy.ext.asyncio import create_async_engine

from orderflow.gateway.auth import LOCAL_ADMIN
from orderflow.platform.db import now_us
from orderflow.platform.idempotency import keyed
from orderflow.registry import SERVICE_NAMES
from tests.conftest import pg_databases_sync
from tests.e2e.conftest import item, points, start, unique
from tests.system import System, per_service


@dataclass
class Keyed:
    system: System
    urls: dict[str, str]

    async def sql(self, service: str, query: str, **params: Any) -> None:
        engine = create_async_engine(self.urls[service], poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                await conn.execute(text(query), params)
        finally:
            await engine.dispose()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def keyed_system(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Keyed]:
    workdir: Path = tmp_path_factory.mktemp(f"keys-{request.param}")
    if request.param == "sqlite":
        urls = {n: f"sqlite+aiosqlite:///{workdir}/{n}.db" for n in SERVICE_NAMES}
        drop: Callable[[], None] = lambda: None  # noqa: E731
    else:
        urls, drop = pg_databases_sync(list(SERVICE_NAMES))
    system = per_service(workdir, urls)
    try:
        yield Keyed(start(system), urls)
    finally:
        system.stop()
        drop()


@pytest.fixture
async def api(keyed_system: Keyed) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=keyed_system.system.base_url, timeout=30) as client:
        yield client


@dataclass
class Route:
    """One admin route: its request, another body, the effect to count, and the claim a
    running request with the key leaves in the service's database."""

    service: str
    method: str
    path: Callable[[str], str]
    body: dict[str, Any]
    other: dict[str, Any]
    status: int
    setup: Callable[[httpx.AsyncClient, str], Awaitable[None]]
    effect: Callable[[httpx.AsyncClient, str], Awaitable[Any]]  # read after each request
    before: Any  # what effect reads before the change (None: the thing does not exist yet)
    once: Any  # what effect reads after one change
    read: Callable[[str], str]  # the path that reads the thing
    claim: Callable[[str], tuple[str, str, dict[str, Any]]]  # target -> (op, target, fields)


async def _item(api: httpx.AsyncClient, sku: str) -> None:
    body = {"sku": sku, "name": "Mug", "price": 1000, "stock": 5}
    assert (await api.post("/api/v1/items", json=body)).status_code == 201


async def _nothing(api: httpx.AsyncClient, target: str) -> None:
    return None


async def _account(api: httpx.AsyncClient, customer: str) -> None:
    reply = await api.put(f"/api/v1/customers/{customer}/loyalty", json={"tier": "silver"})
    assert reply.status_code == 200


async def _available(api: httpx.AsyncClient, sku: str) -> int:
    return int((await item(api, sku))["available"])


async def _tier(api: httpx.AsyncClient, customer: str) -> str:
    return str((await api.get(f"/api/v1/customers/{customer}/loyalty")).json()["tier"])


ROUTES = {
    "create item": Route(
        service="inventory",
        method="POST",
        path=lambda sku: "/api/v1/items",
        body={"name": "Mug", "price": 1000, "stock": 3},
        other={"name": "Mug", "price": 1001, "stock": 3},
        status=201,
        setup=_nothing,
        effect=_available,
        before=None,
        once=3,
        read=lambda sku: f"/api/v1/items/{sku}",
        claim=lambda sku: ("CreateItem", sku, {"name": "Mug", "price": 1000, "stock": 3}),
    ),
    "restock": Route(
        service="inventory",
        method="PATCH",
        path=lambda sku: f"/api/v1/items/{sku}",
        body={"restock": 2},
        other={"restock": 3},
        status=200,
        setup=_item,
        effect=_available,
        before=5,
        once=7,
        read=lambda sku: f"/api/v1/items/{sku}",
        claim=lambda sku: ("UpdateItem", sku, {"name": None, "price": None, "restock": 2}),
    ),
    "set tier": Route(
        service="loyalty",
        method="PUT",
        path=lambda c: f"/api/v1/customers/{c}/loyalty",
        body={"tier": "gold"},
        other={"tier": "standard"},
        status=200,
        setup=_account,
        effect=_tier,
        before="silver",
        once="gold",
        read=lambda c: f"/api/v1/customers/{c}/loyalty",
        claim=lambda c: ("SetTier", c, {"tier": "gold"}),
    ),
    "adjust points": Route(
        service="loyalty",
        method="POST",
        path=lambda c: f"/api/v1/customers/{c}/loyalty/points",
        body={"delta": 7, "reason": "gift"},
        other={"delta": 8, "reason": "gift"},
        status=200,
        setup=_nothing,
        effect=points,
        before=None,
        once=7,
        read=lambda c: f"/api/v1/customers/{c}/loyalty",
        claim=lambda c: ("AdjustPoints", c, {"delta": 7, "reason": "gift"}),
    ),
}


def body_of(route: Route, target: str, body: dict[str, Any]) -> dict[str, Any]:
    return (
        {"sku": target, **body} if route.method == "POST" and route.service == "inventory" else body
    )


async def send(
    api: httpx.AsyncClient, route: Route, target: str, body: dict[str, Any], key: str
) -> httpx.Response:
    return await api.request(
        route.method,
        route.path(target),
        json=body_of(route, target, body),
        headers={"Idempotency-Key": key},
    )


@pytest.mark.parametrize("name", list(ROUTES))
async def test_replay_and_another_body(api: httpx.AsyncClient, name: str) -> None:
    route = ROUTES[name]
    target, key = unique("T"), f"key-{uuid.uuid4()}"
    await route.setup(api, target)
    first = await send(api, route, target, route.body, key)
    assert first.status_code == route.status, first.text
    assert await route.effect(api, target) == route.once
    again = await send(api, route, target, route.body, key)
    assert (again.status_code, again.json()) == (first.status_code, first.json())
    assert await route.effect(api, target) == route.once  # no second effect

    other = await send(api, route, target, route.other, key)
    assert other.status_code == 422, other.text
    assert other.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert await route.effect(api, target) == route.once

    # another key is another request
    fresh = await send(api, route, target, route.other, f"key-{uuid.uuid4()}")
    assert fresh.status_code in (200, 201, 409), fresh.text  # 409: the sku exists already
    if name == "create item":
        assert fresh.json()["error"]["code"] == "ALREADY_EXISTS"


@pytest.mark.parametrize("name", list(ROUTES))
async def test_in_flight_then_taken_over_once_its_lease_ends(
    api: httpx.AsyncClient, keyed_system: Keyed, name: str
) -> None:
    route = ROUTES[name]
    target, key = unique("T"), f"key-{uuid.uuid4()}"
    await route.setup(api, target)
    operation, claim_target, fields = route.claim(target)
    claim = keyed(key, LOCAL_ADMIN.key, "another-request", operation, claim_target, **fields)
    assert claim is not None
    await keyed_system.sql(
        route.service,
        "INSERT INTO idempotency_keys (scope, key, fingerprint, owner, token, lease_until_us, "
        "result, created_us) VALUES (:scope, :key, :fp, 'another-request', :token, :until, "
        "NULL, :now)",
        scope=claim.scope,
        key=key,
        fp=claim.fingerprint,
        token=uuid.uuid4().hex,
        until=now_us() + 60_000_000,
        now=now_us(),
    )
    busy = await send(api, route, target, route.body, key)
    assert busy.status_code == 409, busy.text
    assert busy.json()["error"]["code"] == "REQUEST_IN_PROGRESS"
    if route.before is None:
        assert (await api.get(route.read(target))).status_code == 404  # nothing done
    else:
        assert await route.effect(api, target) == route.before  # nothing done

    # the request holding it died: its lease runs out, and the key is taken over, once
    await keyed_system.sql(
        route.service,
        "UPDATE idempotency_keys SET lease_until_us = 0 WHERE key = :key",
        key=key,
    )
    done = await send(api, route, target, route.body, key)
    assert done.status_code == route.status, done.text
    again = await send(api, route, target, route.body, key)
    assert (again.status_code, again.json()) == (done.status_code, done.json())
    assert await route.effect(api, target) == route.once


async def test_an_overlong_key_is_refused(api: httpx.AsyncClient) -> None:
    customer = unique("long")
    reply = await api.put(
        f"/api/v1/customers/{customer}/loyalty",
        json={"tier": "gold"},
        headers={"Idempotency-Key": "k" * 256},
    )
    assert reply.status_code == 422, reply.text
    assert (await api.get(f"/api/v1/customers/{customer}/loyalty")).status_code == 404
