"""What an attacker with a token, or without one, tried at the gateway: each is refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
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
from orderflow.gateway.readiness import Readiness
from orderflow.settings import AuthSettings, CommonSettings, GatewaySettings
from tests.unit.test_gateway_auth import (
    ADMIN,
    AUTH,
    SECRET,
    World,
    bearer,
    claims_for,
    customer,
    order_of,
)


async def _serving() -> str:
    return "SERVING"


async def gateway(
    world: World, auth: AuthSettings = AUTH, address: str = "127.0.0.1", **settings: Any
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
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            yield c


@pytest.fixture
def world() -> World:
    return World()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def hs256(claims: dict[str, Any], key: bytes, **header: Any) -> str:
    """A token signed by hand: PyJWT itself refuses to sign HS256 with a PEM key."""
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", **header}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(signature)}"


def _rsa_pair(tmp_path: Path) -> tuple[rsa.RSAPrivateKey, Path, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public = tmp_path / "pub.pem"
    public.write_bytes(public_pem)
    return key, public, public_pem


# --- algorithm confusion, key headers ---------------------------------------------------


async def test_hs256_signed_with_the_rs256_public_key_is_refused(
    tmp_path: Path, world: World
) -> None:
    _, public, public_pem = _rsa_pair(tmp_path)
    auth = AuthSettings(jwt_public_key_file=public)
    confused = hs256(claims_for("alice"), public_pem)
    async for api in gateway(world, auth):
        response = await api.post(
            "/api/v1/orders", json=order_of("alice"), headers=bearer(confused)
        )
        assert response.status_code == 401, response.text
        assert world.orders.orders == {}


@pytest.mark.parametrize(
    "header",
    [
        {"kid": "../../../../dev/null"},
        {"kid": "' OR 1=1 --"},
        {"jku": "https://attacker.example/jwks.json", "kid": "attacker"},
        {"x5u": "https://attacker.example/cert.pem"},
    ],
    ids=["kid-path", "kid-sql", "jku", "x5u"],
)
async def test_key_pointing_headers_do_not_choose_the_key(
    world: World, header: dict[str, str]
) -> None:
    # Signed with the attacker's key (and with an empty key, what a kid of /dev/null reads).
    tokens = [
        hs256(
            claims_for("alice", scope="admin"),
            b"attacker-key-that-is-long-enough-0123456",
            **header,
        ),
        hs256(claims_for("alice", scope="admin"), b"", **header),
    ]
    async for api in gateway(world):
        for token in tokens:
            response = await api.get("/api/v1/orders", headers=bearer(token))
            assert response.status_code == 401, response.text


async def test_an_embedded_jwk_is_not_trusted(tmp_path: Path, world: World) -> None:
    key, public, _ = _rsa_pair(tmp_path)
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(attacker.public_key()))
    token = jwt.encode(
        claims_for("alice", scope="admin"), attacker, algorithm="RS256", headers={"jwk": jwk}
    )
    async for api in gateway(world, AuthSettings(jwt_public_key_file=public)):
        assert (await api.get("/api/v1/orders", headers=bearer(token))).status_code == 401


# --- scopes ------------------------------------------------------------------------------


def _api_routes() -> list[tuple[str, str]]:
    """Every API operation the app documents (new routes are covered by themselves)."""
    app = create_app(GatewaySettings(), CommonSettings(), auth=AUTH)
    found = []
    for path, operations in app.openapi()["paths"].items():
        if not path.startswith("/api/"):
            continue
        concrete = path.replace("{customer_id}", "alice").replace("{order_id}", "x")
        concrete = concrete.replace("{sku}", "MUG-1")
        found += [(method.upper(), concrete) for method in sorted(operations)]
    return found


API_ROUTES = _api_routes()


def test_every_api_route_is_covered() -> None:
    assert len(API_ROUTES) >= 11  # the REST table of the contract


@pytest.mark.parametrize("scope", ["", "ordering", "ADMIN", "admin:write", "orders,admin"])
@pytest.mark.parametrize(("method", "path"), API_ROUTES)
async def test_a_token_without_a_known_scope_is_refused_on_every_api_route(
    world: World, method: str, path: str, scope: str
) -> None:
    token = issue_token(AUTH, "alice", [scope] if scope else [], 600)
    async for api in gateway(world):
        body = {"customer_id": "alice", "items": [{"sku": "MUG-1", "quantity": 1}]}
        response = await api.request(
            method, path, headers=bearer(token), json=body if method != "GET" else None
        )
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "FORBIDDEN"
    assert world.calls.log == []  # no service was asked anything


@pytest.mark.parametrize(
    "claims",
    [
        {"scope": ["admin"]},  # a list, not a string
        {"scope": "orders", "scp": "admin"},  # another claim name
        {"scope": "orders", "roles": ["admin"], "admin": True},
    ],
    ids=["list", "scp", "extra-claims"],
)
async def test_scope_tricks_give_no_admin(world: World, claims: dict[str, Any]) -> None:
    token = jwt.encode(claims_for("alice", **claims), SECRET, algorithm="HS256")
    async for api in gateway(world):
        response = await api.post(
            "/api/v1/items",
            json={"sku": "NEW-1", "name": "New", "price": 1, "stock": 1},
            headers=bearer(token),
        )
        assert response.status_code in (401, 403), response.text
    assert "NEW-1" not in world.inventory.items


# --- lookalike ids -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "other",
    ["Alice", "alice ", " alice", "\u0430lice", "alice\u200b", "alic", "alice2", "alice/.."],
    ids=[
        "case",
        "trailing-space",
        "leading-space",
        "cyrillic-a",
        "zero-width",
        "prefix",
        "suffix",
        "path",
    ],
)
async def test_a_lookalike_customer_id_is_someone_else(world: World, other: str) -> None:
    alice = customer("alice")
    async for api in gateway(world):
        placed = await api.post("/api/v1/orders", json=order_of(other), headers=alice)
        assert placed.status_code in (403, 422), placed.text
        listed = await api.get("/api/v1/orders", params={"customer_id": other}, headers=alice)
        assert listed.status_code in (403, 422)
        account = await api.get(f"/api/v1/customers/{other}/loyalty", headers=alice)
        assert account.status_code in (404, 422)
    assert world.orders.orders == {}


# --- token size and lifetime -------------------------------------------------------------


async def test_an_oversized_token_is_refused_before_decoding(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[int] = []
    real_decode = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        decoded.append(len(token))
        return real_decode(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    padded = jwt.encode(claims_for("alice", pad="x" * 9000), SECRET, algorithm="HS256")
    async for api in gateway(world):
        response = await api.get("/api/v1/items", headers=bearer(padded))
        assert response.status_code == 401
        assert "longer than 8192 bytes" in response.json()["error"]["message"]
        assert decoded == []
        ok = await api.get("/api/v1/items", headers=customer("alice"))
        assert ok.status_code == 200 and len(decoded) == 1


@pytest.mark.parametrize(
    ("iat_ago", "lives", "status"),
    [
        (0, 23 * 3600, 200),
        (0, 25 * 3600, 401),  # exp - iat beyond a day
        (0, 10 * 365 * 24 * 3600, 401),  # the probe's 10-year token
        (-30 * 24 * 3600, 0, 401),  # iat claimed in the future, to shorten exp - iat
        (3600, 3600 + 2 * 24 * 3600, 401),  # issued an hour ago, valid for two more days
    ],
)
async def test_a_token_beyond_the_maximum_lifetime_is_refused(
    world: World, iat_ago: int, lives: int, status: int
) -> None:
    now = int(time.time())
    iat = now - iat_ago
    token = jwt.encode(
        claims_for("alice", iat=iat, exp=iat + lives if lives else now + 7 * 24 * 3600), SECRET
    )
    async for api in gateway(world):
        response = await api.get("/api/v1/items", headers=bearer(token))
        assert response.status_code == status, response.text


def test_issue_token_refuses_a_lifetime_beyond_the_maximum() -> None:
    with pytest.raises(ValueError, match="at most 86400 s"):
        issue_token(AUTH, "alice", ["orders"], 86401)
    short = AuthSettings(jwt_secret=SECRET, max_token_lifetime_seconds=600)
    with pytest.raises(ValueError, match="at most 600 s"):
        issue_token(short, "alice", ["orders"], 601)


# --- rate-limit keys ---------------------------------------------------------------------


async def test_admin_and_a_customer_named_admin_have_separate_buckets(world: World) -> None:
    world.loyalty.points["admin"] = 0
    async for api in gateway(world, rate_limit_per_second=0.001, rate_limit_burst=2):
        for _ in range(2):
            placed = await api.post("/api/v1/orders", json=order_of("bob"), headers=ADMIN)
            assert placed.status_code == 201, placed.text
        limited = await api.post("/api/v1/orders", json=order_of("bob"), headers=ADMIN)
        assert limited.status_code == 429
        # `orderflow token --admin` signs sub=admin; a customer whose id is admin is another caller.
        named_admin = customer("admin")
        mine = await api.post("/api/v1/orders", json=order_of("admin"), headers=named_admin)
        assert mine.status_code == 201, mine.text


async def test_failed_authentications_are_limited_per_address(world: World) -> None:
    auth = AuthSettings(jwt_secret=SECRET, failure_limit_per_second=0.001, failure_limit_burst=3)
    bad = bearer("not.a.token")
    async for api in gateway(world, auth, address="192.0.2.10"):
        codes = [(await api.get("/api/v1/items", headers=bad)).status_code for _ in range(5)]
        assert codes == [401, 401, 401, 429, 429]
        limited = await api.get("/api/v1/items", headers=bad)
        assert limited.json()["error"]["code"] == "RATE_LIMITED"
        assert int(limited.headers["retry-after"]) >= 1
        # A good token from the same address still gets in: only failures are limited.
        assert (await api.get("/api/v1/items", headers=customer("alice"))).status_code == 200
    # Another address has a bucket of its own (a new app: buckets live in the gateway).
    async for api in gateway(world, auth, address="192.0.2.11"):
        assert (await api.get("/api/v1/items", headers=bad)).status_code == 401


# --- CORS --------------------------------------------------------------------------------


async def test_cors_never_admits_another_origin_or_credentials(world: World) -> None:
    async for api in gateway(world, cors_origins=["https://shop.example"]):
        evil = await api.get(
            "/api/v1/items", headers={"Origin": "https://evil.example", **customer("alice")}
        )
        assert evil.status_code == 200
        assert "access-control-allow-origin" not in evil.headers
        assert "access-control-allow-credentials" not in evil.headers
        lookalike = await api.get(
            "/api/v1/items",
            headers={"Origin": "https://shop.example.evil.example", **customer("alice")},
        )
        assert "access-control-allow-origin" not in lookalike.headers
        null = await api.options(
            "/api/v1/orders",
            headers={"Origin": "null", "Access-Control-Request-Method": "POST"},
        )
        assert null.headers.get("access-control-allow-origin") not in ("null", "*")
