"""The console with authentication on: no page without an admin's session, a customer
token refused at the door, and no action without this session's CSRF token."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orderflow.gateway.auth import issue_token
from orderflow.settings import AuthSettings
from tests.system import System, one_process, start_ready

SECRET = "console-e2e-secret-that-is-long-enough-0123456789"
AUTH = AuthSettings(jwt_secret=SECRET)
PAGES = [
    "/console/",
    "/console/attention",
    "/console/orders",
    "/console/items",
    "/console/customers",
    "/console/customers/c-1",
]


def token(subject: str, scope: str) -> str:
    return issue_token(AUTH, subject, [scope], 600)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    env = {"ORDERFLOW_AUTH_JWT_SECRET": SECRET}
    system = start_ready(one_process(Path(tmp_path_factory.mktemp("console-auth")), env))
    yield system
    system.stop()


@pytest.fixture(scope="module")
def sku(secured: System) -> str:
    sku = f"SKU-{uuid.uuid4().hex[:8]}"
    body = {"sku": sku, "name": "Thing", "price": 100, "stock": 10}
    headers = {"Authorization": f"Bearer {token('ops', 'admin')}"}
    assert httpx.post(f"{secured.base_url}/api/v1/items", json=body, headers=headers).is_success
    return sku


def available(system: System, sku: str) -> int:
    headers = {"Authorization": f"Bearer {token('ops', 'admin')}"}
    return int(
        httpx.get(f"{system.base_url}/api/v1/items/{sku}", headers=headers).json()["available"]
    )


def sign_in(page: Any, system: System, value: str) -> None:
    page.goto(f"{system.base_url}/console/login")
    page.get_by_label("Admin token").fill(value)
    page.get_by_role("button", name="Sign in").click()


def test_no_console_page_without_an_admin_session(secured: System, page: Any) -> None:
    with httpx.Client(base_url=secured.base_url) as client:
        for path in PAGES:
            response = client.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"].startswith("/console/login?next="), path
            # A bearer header is not a session: the console reads only its cookie.
            bearer = {"Authorization": f"Bearer {token('ops', 'admin')}"}
            assert client.get(path, headers=bearer).status_code == 303, path
        for path in ("/console/items/X/restock", "/console/customers/c-1/points"):
            refused = client.post(path, data={"restock": "1", "confirm": "yes"})
            assert refused.status_code == 401, path
    page.goto(f"{secured.base_url}/console/items")
    page.wait_for_url("**/console/login?next=%2Fconsole%2Fitems")
    assert page.locator("h1").inner_text() == "Sign in"
    assert page.locator("#items").count() == 0


def test_a_customer_token_is_refused_and_an_admin_token_signs_in(
    secured: System, page: Any, context: Any
) -> None:
    sign_in(page, secured, token("c-1", "orders"))
    assert "needs an admin token" in page.get_by_role("alert").inner_text()
    assert not [c for c in context.cookies() if c["name"] == "orderflow_console_token"]
    page.goto(f"{secured.base_url}/console/")
    assert page.locator("h1").inner_text() == "Sign in"

    sign_in(page, secured, "not-a-token")
    assert "UNAUTHENTICATED" in page.get_by_role("alert").inner_text()

    sign_in(page, secured, token("ops", "admin"))
    page.wait_for_url("**/console/")
    assert page.locator("h1").inner_text() == "What needs attention"
    session = next(c for c in context.cookies() if c["name"] == "orderflow_console_token")
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert session["path"] == "/console"
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/console/login")
    page.goto(f"{secured.base_url}/console/orders")
    assert page.locator("h1").inner_text() == "Sign in"


def test_an_action_without_this_sessions_csrf_token_is_refused(
    secured: System, sku: str, page: Any, context: Any
) -> None:
    sign_in(page, secured, token("ops", "admin"))
    page.goto(f"{secured.base_url}/console/items")
    # The session's cookies go with these requests, as a forged cross-site form's would
    # (were it not for SameSite): only the CSRF token is missing or wrong.
    url = f"{secured.base_url}/console/items/{sku}/restock"
    forged = context.request.post(url, form={"restock": "5", "confirm": "yes"})
    assert forged.status == 403
    assert "CSRF" in forged.text()
    wrong = context.request.post(
        url, form={"restock": "5", "confirm": "yes", "csrf_token": "0" * 64}
    )
    assert wrong.status == 403
    assert available(secured, sku) == 10

    # The console's own form, with its token, works.
    row = page.locator(f'tr[data-sku="{sku}"]')
    page.get_by_label(f"Restock {sku} by").fill("5")
    row.get_by_role("button", name="Restock…").click()
    row.get_by_role("button", name="Confirm restock").click()
    assert "15 available now" in row.locator(".done").inner_text()
    assert available(secured, sku) == 15
