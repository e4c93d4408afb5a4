"""Who may do what at the gateway: tokens, scopes, ownership, rate limits, CORS."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from orderflow.gateway.app import create_app
from orderflow.gateway.auth import issue_token
from orderflow.gateway.deps import Services
from orderflow.gateway.ratelimit import RateLimiter
from orderflow.gateway.readiness import Readiness
from orderflow.settings import AuthSettings, CommonSettings, GatewaySettings, is_loopback
from tests.fakes import Calls, FakeInventory, FakeLoyalty, FakeOrders

SECRET = "a-test-secret-that-is-long-enough-0123456789"
AUTH = AuthSettings(jwt_secret=SECRET)


class World:
    def __init__(self) -> None:
        self.calls = Calls()
        self.orders = FakeOrders(self.calls)
        self.inventory = FakeInventory(self.calls, {"MUG-1": (1250, 100)})
        self.loyalty = FakeLoyalty(self.calls, {"alice": 500, "bob": 500})


async def _serving() -> str:
    return "SERVING"


async def _client(
    world: World, auth: AuthSettings, **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        GatewaySettings(finish_in_background=False, **settings),
        CommonSettings(),
        services=Services(world.orders, world.inventory, world.loyalty),
        readiness=Readiness({"orders": _serving, "inventory": _serving, "loyalty": _serving}),
        recovery=False,
        auth=auth,
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            yield c


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
async def api(world: World) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(world, AUTH):
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def customer(name: str, **overrides: Any) -> dict[str, str]:
    return bearer(issue_token(AUTH, name, ["orders"], 600, **overrides))


# Made at import, so valid for the longest allowed: a slow run reaches these tests late.
ADMIN = bearer(issue_token(AUTH, "admin", ["admin"], 24 * 3600))


def order_of(name: str) -> dict[str, Any]:
    return {"customer_id": name, "items": [{"sku": "MUG-1", "quantity": 1}]}


async def place(api: httpx.AsyncClient, name: str) -> dict[str, Any]:
    response = await api.post("/api/v1/orders", json=order_of(name), headers=customer(name))
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def forge(claims: dict[str, Any], header: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part(header)}.{part(claims)}."


def claims_for(name: str, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"sub": name, "scope": "orders", "iss": "orderflow", "aud": "orderflow"}
    return {**base, "iat": now, "exp": now + 600, **changes}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
        {"Authorization": "Bearer"},
        bearer("not.a.token"),
        # expired an hour ago (beyond the leeway)
        bearer(jwt.encode(claims_for("alice", exp=int(time.time()) - 3600), SECRET)),
        # signed with another key
        bearer(jwt.encode(claims_for("alice"), "another-secret-that-is-also-long-enough!!")),
        # alg=none: no signature at all
        bearer(forge(claims_for("alice"), {"alg": "none", "typ": "JWT"})),
        # the wrong audience, and the wrong issuer
        bearer(jwt.encode(claims_for("alice", aud="someone-else"), SECRET)),
        bearer(jwt.encode(claims_for("alice", iss="someone-else"), SECRET)),
        # no expiry
        bearer(jwt.encode({k: v for k, v in claims_for("alice").items() if k != "exp"}, SECRET)),
    ],
    ids=[
        "missing",
        "basic",
        "empty-bearer",
        "garbage",
        "expired",
        "wrong-key",
        "alg-none",
        "audience",
        "issuer",
        "no-exp",
    ],
)
async def test_bad_tokens_get_401_and_change_nothing(
    api: httpx.AsyncClient, world: World, headers: dict[str, str]
) -> None:
    response = await api.post("/api/v1/orders", json=order_of("alice"), headers=headers)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "UNAUTHENTICATED"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert world.orders.orders == {}
    assert (await api.get("/api/v1/items/MUG-1", headers=headers)).status_code == 401


async def test_a_tampered_token_is_401(api: httpx.AsyncClient) -> None:
    token = issue_token(AUTH, "alice", ["orders"], 600)
    head, claims, signature = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    payload["scope"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    response = await api.get("/api/v1/orders", headers=bearer(f"{head}.{forged}.{signature}"))
    assert response.status_code == 401


async def test_a_customer_sees_and_cancels_only_its_own_orders(
    api: httpx.AsyncClient, world: World
) -> None:
    mine = await place(api, "alice")
    theirs = await place(api, "bob")
    alice = customer("alice")
    assert (await api.get(f"/api/v1/orders/{mine['id']}", headers=alice)).status_code == 200
    peek = await api.get(f"/api/v1/orders/{theirs['id']}", headers=alice)
    assert peek.status_code == 404 and peek.json()["error"]["code"] == "NOT_FOUND"
    # The same for an order's history: someone else's order does not exist for alice.
    own = await api.get(f"/api/v1/orders/{mine['id']}/history", headers=alice)
    assert own.status_code == 200 and own.json()["order_id"] == mine["id"]
    peek = await api.get(f"/api/v1/orders/{theirs['id']}/history", headers=alice)
    assert peek.status_code == 404 and peek.json()["error"]["code"] == "NOT_FOUND"
    assert peek.json() == (await api.get("/api/v1/orders/nope/history", headers=alice)).json()
    assert (await api.get(f"/api/v1/orders/{mine['id']}/history")).status_code == 401
    cancel = await api.post(f"/api/v1/orders/{theirs['id']}/cancel", headers=alice)
    assert cancel.status_code == 404
    assert world.orders.orders[theirs["id"]].status == "CONFIRMED"  # untouched
    listing = (await api.get("/api/v1/orders", headers=alice)).json()
    assert [o["id"] for o in listing["orders"]] == [mine["id"]]
    others = await api.get("/api/v1/orders", params={"customer_id": "bob"}, headers=alice)
    assert others.status_code == 403
    # Placing for someone else is refused, and so is reading their loyalty account.
    for_bob = await api.post("/api/v1/orders", json=order_of("bob"), headers=alice)
    assert for_bob.status_code == 403 and for_bob.json()["error"]["code"] == "FORBIDDEN"
    assert (await api.get("/api/v1/customers/bob/loyalty", headers=alice)).status_code == 404
    assert (await api.get("/api/v1/customers/alice/loyalty", headers=alice)).status_code == 200
    # An admin sees everything.
    everything = (await api.get("/api/v1/orders", headers=ADMIN)).json()["orders"]
    assert {o["id"] for o in everything} == {mine["id"], theirs["id"]}
    mine_cancelled = await api.post(f"/api/v1/orders/{mine['id']}/cancel", headers=alice)
    assert mine_cancelled.status_code == 200 and mine_cancelled.json()["status"] == "CANCELLED"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/v1/items", {"sku": "NEW-1", "name": "New", "price": 100, "stock": 1}),
        ("PATCH", "/api/v1/items/MUG-1", {"price": 1}),
        ("PUT", "/api/v1/customers/alice/loyalty", {"tier": "gold"}),
        ("POST", "/api/v1/customers/alice/loyalty/points", {"delta": 1000, "reason": "me"}),
    ],
)
async def test_a_customer_token_on_an_admin_route_is_403(
    api: httpx.AsyncClient, world: World, method: str, path: str, body: dict[str, Any]
) -> None:
    response = await api.request(method, path, json=body, headers=customer("alice"))
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "FORBIDDEN"
    assert world.inventory.items["MUG-1"]["price"] == 1250
    assert world.loyalty.points["alice"] == 500


@pytest.mark.parametrize(
    "extra",
    [{"unit_price": 1}, {"status": "CONFIRMED"}, {"points_earned": 10**6}, {"total": 0}],
)
async def test_a_body_that_sets_prices_status_or_points_is_refused(
    api: httpx.AsyncClient, world: World, extra: dict[str, Any]
) -> None:
    body = {**order_of("alice"), **extra}
    response = await api.post("/api/v1/orders", json=body, headers=customer("alice"))
    assert response.status_code == 422, response.text
    line = {"sku": "MUG-1", "quantity": 1, **extra}
    sneaky = await api.post(
        "/api/v1/orders", json={**order_of("alice"), "items": [line]}, headers=customer("alice")
    )
    assert sneaky.status_code == 422
    assert world.orders.orders == {}


async def test_rs256_tokens_from_the_private_key(tmp_path: Path, world: World) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = tmp_path / "key.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = tmp_path / "pub.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    auth = AuthSettings(jwt_public_key_file=public)
    good = issue_token(auth, "alice", ["orders"], 600, private.read_text())
    # The HS256 trick: a token "signed" with the public key as an HMAC secret.
    confused = jwt.encode(claims_for("alice"), "x" * 40, algorithm="HS256")
    async for api in _client(world, auth):
        ok = await api.post("/api/v1/orders", json=order_of("alice"), headers=bearer(good))
        assert ok.status_code == 201, ok.text
        bad = await api.post("/api/v1/orders", json=order_of("alice"), headers=bearer(confused))
        assert bad.status_code == 401


async def test_a_burst_beyond_the_limit_gets_429_while_others_still_order(world: World) -> None:
    async for api in _client(world, AUTH, rate_limit_per_second=1, rate_limit_burst=3):
        codes = [
            (
                await api.post("/api/v1/orders", json=order_of("alice"), headers=customer("alice"))
            ).status_code
            for _ in range(5)
        ]
        assert codes == [201, 201, 201, 429, 429]
        limited = await api.post(
            "/api/v1/orders", json=order_of("alice"), headers=customer("alice")
        )
        assert limited.json()["error"]["code"] == "RATE_LIMITED"
        assert int(limited.headers["retry-after"]) >= 1
        bob = await api.post("/api/v1/orders", json=order_of("bob"), headers=customer("bob"))
        assert bob.status_code == 201
        assert len(world.orders.orders) == 4


def test_the_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(per_second=2, burst=2, clock=lambda: now[0])
    limiter.take("a")
    limiter.take("a")
    with pytest.raises(Exception, match="too many"):
        limiter.take("a")
    now[0] = 0.5  # one token back
    limiter.take("a")
    with pytest.raises(Exception, match="too many"):
        limiter.take("a")
    assert RateLimiter(per_second=0, burst=1).enabled is False


async def test_cors_is_closed_unless_origins_are_configured(world: World) -> None:
    preflight = {
        "Origin": "https://shop.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    async for api in _client(world, AUTH):
        closed = await api.options("/api/v1/orders", headers=preflight)
        assert "access-control-allow-origin" not in closed.headers
    async for api in _client(world, AUTH, cors_origins=["https://shop.example"]):
        opened = await api.options("/api/v1/orders", headers=preflight)
        assert opened.headers["access-control-allow-origin"] == "https://shop.example"
        other = await api.options(
            "/api/v1/orders", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert other.headers.get("access-control-allow-origin") != "https://evil.example"


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5")


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        AuthSettings(jwt_secret="short")
