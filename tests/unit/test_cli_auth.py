"""Start-up refuses an open gateway off loopback; `orderflow token` makes working tokens."""

from __future__ import annotations

import os
import subprocess
import sys

import jwt
import pytest

SECRET = "cli-test-secret-that-is-long-enough-0123456789"


def orderflow(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ORDERFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "orderflow", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (("serve", "gateway"), {"ORDERFLOW_GATEWAY_HOST": "0.0.0.0"}),
        (("run", "--host", "0.0.0.0", "--port", "0", "--grpc-port", "0"), {}),
    ],
    ids=["serve-gateway", "run"],
)
def test_no_auth_off_loopback_refuses_to_start(args: tuple[str, ...], env: dict[str, str]) -> None:
    done = orderflow(*args, **env)
    assert done.returncode == 2, done.stderr
    assert "refusing to serve on 0.0.0.0 without authentication" in done.stderr
    assert "ORDERFLOW_AUTH_JWT_SECRET" in done.stderr


def test_token_makes_a_customer_and_an_admin_token() -> None:
    customer = orderflow("token", "--customer", "c-1", ORDERFLOW_AUTH_JWT_SECRET=SECRET)
    assert customer.returncode == 0, customer.stderr
    claims = jwt.decode(customer.stdout.strip(), SECRET, algorithms=["HS256"], audience="orderflow")
    assert (claims["sub"], claims["scope"], claims["iss"]) == ("c-1", "orders", "orderflow")
    assert 0 < claims["exp"] - claims["iat"] <= 3600
    admin = orderflow("token", "--admin", "--ttl", "120", ORDERFLOW_AUTH_JWT_SECRET=SECRET)
    claims = jwt.decode(admin.stdout.strip(), SECRET, algorithms=["HS256"], audience="orderflow")
    assert claims["scope"] == "admin" and claims["exp"] - claims["iat"] == 120


def test_token_needs_a_key_and_one_kind() -> None:
    assert "no signing key" in orderflow("token", "--admin").stderr
    both = orderflow("token", "--admin", "--customer", "x", ORDERFLOW_AUTH_JWT_SECRET=SECRET)
    assert both.returncode == 2 and "exactly one" in both.stderr
    short = orderflow("token", "--admin", ORDERFLOW_AUTH_JWT_SECRET="short")
    assert short.returncode == 2 and "ORDERFLOW_AUTH_JWT_SECRET" in short.stderr


def test_token_will_not_outlive_the_maximum_lifetime() -> None:
    day = orderflow("token", "--admin", "--ttl", "86400", ORDERFLOW_AUTH_JWT_SECRET=SECRET)
    assert day.returncode == 0, day.stderr
    longer = orderflow("token", "--admin", "--ttl", "86401", ORDERFLOW_AUTH_JWT_SECRET=SECRET)
    assert longer.returncode == 2 and "maximum token lifetime" in longer.stderr
    assert longer.stdout == ""
    short = orderflow(
        "token",
        "--customer",
        "c-1",
        "--ttl",
        "3600",
        ORDERFLOW_AUTH_JWT_SECRET=SECRET,
        ORDERFLOW_AUTH_MAX_TOKEN_LIFETIME_SECONDS="600",
    )
    assert short.returncode == 2 and "ORDERFLOW_AUTH_MAX_TOKEN_LIFETIME_SECONDS" in short.stderr
