"""The console in a real browser against one started one-process system (no auth: open on
loopback): orders and their saga timeline, rejections, restock, points, keyboard, axe."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.e2e.console.conftest import axe_violations, shot, tab_to, unlabelled_fields
from tests.system import System, one_process, start_ready

TIME = re.compile(r"^\d\d:\d\d:\d\d\.\d\d\d$")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    started = start_ready(one_process(Path(tmp_path_factory.mktemp("console"))))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def api(system: System) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=system.base_url, timeout=30) as client:
        yield client


def new_item(api: httpx.Client, stock: int, price: int = 1250) -> str:
    sku = unique("SKU")
    body = {"sku": sku, "name": f"Item {sku}", "price": price, "stock": stock}
    assert api.post("/api/v1/items", json=body).status_code == 201
    return sku


def new_customer(api: httpx.Client, points: int = 0, tier: str = "gold") -> str:
    customer = unique("cust")
    assert api.put(f"/api/v1/customers/{customer}/loyalty", json={"tier": tier}).is_success
    if points:
        body = {"delta": points, "reason": "test setup"}
        assert api.post(f"/api/v1/customers/{customer}/loyalty/points", json=body).is_success
    return customer


def place(api: httpx.Client, customer: str, sku: str, quantity: int, redeem: int = 0) -> Any:
    body: dict[str, Any] = {"customer_id": customer, "items": [{"sku": sku, "quantity": quantity}]}
    if redeem:
        body["redeem_points"] = redeem
    response = api.post("/api/v1/orders", json=body)
    return response


def settled(api: httpx.Client, order_id: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not api.get(f"/api/v1/orders/{order_id}/history").json()["settled"]:
        assert time.monotonic() < deadline, f"order {order_id} not settled in {timeout}s"
        time.sleep(0.05)


def timeline(page: Any) -> list[tuple[str, str, str]]:
    """(step, outcome, time text) of each entry of the order page's saga timeline."""
    steps = page.locator("#timeline li.step")
    return [
        (
            steps.nth(i).get_attribute("data-step"),
            steps.nth(i).get_attribute("data-outcome"),
            steps.nth(i).locator("time").inner_text(),
        )
        for i in range(steps.count())
    ]


def test_an_order_placed_through_the_api_is_listed_with_its_saga_timeline(
    system: System, api: httpx.Client, page: Any
) -> None:
    sku, customer = new_item(api, stock=20), new_customer(api, points=100)
    placed = place(api, customer, sku, 2, redeem=50)
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]
    settled(api, order_id)

    page.goto(f"{system.base_url}/console/orders")
    page.get_by_label("Customer id").fill(customer)
    page.get_by_role("button", name="Filter").click()
    row = page.locator(f'tr[data-order="{order_id}"]')
    assert row.locator("td").nth(2).inner_text().startswith("CONFIRMED")
    assert page.locator("#orders tbody tr").count() == 1
    row.get_by_role("link", name=order_id).click()

    page.wait_for_url(f"**/console/orders/{order_id}")
    assert page.locator("#order-status").inner_text() == "CONFIRMED"
    assert page.locator("#order-settled").inner_text() == "settled"
    assert "22.00 USD" in page.locator("#totals").inner_text()  # 2500 - 10 % - 50 points
    steps = timeline(page)
    names = [name for name, _, _ in steps]
    assert names[:4] == ["create", "reserve", "apply_discount", "confirm"], steps
    assert sorted(names[4:6]) == ["commit_discount", "commit_stock"], steps
    assert names[-1] == "settle" and len(names) == 7, steps
    assert all(outcome == "ok" for _, outcome, _ in steps), steps
    assert all(TIME.match(at) for _, _, at in steps), steps
    shot(page, "order-page")


def test_rejected_orders_show_the_failed_step_and_the_undo_steps(
    system: System, api: httpx.Client, page: Any
) -> None:
    sku, customer = new_item(api, stock=3), new_customer(api, points=10)
    out_of_stock = place(api, customer, sku, 5)
    assert out_of_stock.status_code == 409
    assert out_of_stock.json()["error"]["code"] == "OUT_OF_STOCK"
    # Points are checked after stock is reserved: that reservation is undone (release).
    no_points = place(api, customer, sku, 1, redeem=500)
    assert no_points.json()["error"]["code"] == "INSUFFICIENT_POINTS", no_points.text
    for response in (out_of_stock, no_points):
        settled(api, response.json()["order"]["id"])

    page.goto(f"{system.base_url}/console/orders/{out_of_stock.json()['order']['id']}")
    assert page.locator("#order-status").inner_text() == "REJECTED"
    assert "OUT_OF_STOCK" in page.locator(".facts").first.inner_text()
    steps = [(name, outcome) for name, outcome, _ in timeline(page)]
    # A refused reserve did nothing, so there is nothing to undo (ADR 2).
    assert steps == [("create", "ok"), ("reserve", "failed"), ("reject", "ok"), ("settle", "ok")]
    failed = page.locator('#timeline li[data-outcome="failed"]')
    assert "OUT_OF_STOCK" in failed.inner_text()

    page.goto(f"{system.base_url}/console/orders/{no_points.json()['order']['id']}")
    steps = [(name, outcome) for name, outcome, _ in timeline(page)]
    assert steps[:4] == [
        ("create", "ok"),
        ("reserve", "ok"),
        ("apply_discount", "failed"),
        ("reject", "ok"),
    ], steps
    assert ("release", "ok") in steps[4:] and steps[-1] == ("settle", "ok"), steps
    assert (
        "INSUFFICIENT_POINTS"
        in page.locator('#timeline li[data-step="apply_discount"]').inner_text()
    )
    shot(page, "order-rejected")

    page.goto(f"{system.base_url}/console/")
    rejections = page.locator("#rejections")
    assert "OUT_OF_STOCK" in rejections.inner_text()
    assert "INSUFFICIENT_POINTS" in rejections.inner_text()


def test_restock_from_the_items_page_changes_the_apis_item(
    system: System, api: httpx.Client, page: Any
) -> None:
    sku = new_item(api, stock=4)
    page.goto(f"{system.base_url}/console/items")
    field = page.get_by_label(f"Restock {sku} by")
    field.fill("many")  # refused by the API's own validation, inline, nothing changes
    row = page.locator(f'tr[data-sku="{sku}"]')
    row.get_by_role("button", name="Restock…").click()
    assert "restock" in row.get_by_role("alert").inner_text()
    assert api.get(f"/api/v1/items/{sku}").json()["available"] == 4

    page.get_by_label(f"Restock {sku} by").fill("7")
    row.get_by_role("button", name="Restock…").click()
    assert "Available goes from 4 to 11" in row.get_by_role("status").inner_text()
    assert api.get(f"/api/v1/items/{sku}").json()["available"] == 4  # not before confirming
    row.get_by_role("button", name="Confirm restock").click()
    assert "11 available now" in row.locator(".done").inner_text()
    item = api.get(f"/api/v1/items/{sku}").json()
    assert (item["available"], item["reserved"], item["sold"]) == (11, 0, 0)
    assert row.locator("[data-available]").get_attribute("data-available") == "11"


def test_a_points_adjustment_that_would_go_negative_is_refused_inline(
    system: System, api: httpx.Client, page: Any
) -> None:
    customer = new_customer(api, points=40)
    page.goto(f"{system.base_url}/console/customers/{customer}")
    assert page.locator("#account-points").inner_text() == "40"
    ledger_before = page.locator("#ledger tbody tr").count()
    page.get_by_label("Points to add (negative to take)").fill("-100")
    page.get_by_label("Reason").fill("goodwill reversal")
    page.get_by_role("button", name="Adjust points…").click()
    assert "Take 100 points from" in page.get_by_role("status").inner_text()
    page.get_by_role("button", name="Confirm adjustment").click()
    alert = page.locator("#customer").get_by_role("alert")
    assert "NEGATIVE_BALANCE" in alert.inner_text(), alert.inner_text()
    assert page.locator("#account-points").inner_text() == "40"
    assert page.locator("#ledger tbody tr").count() == ledger_before
    account = api.get(f"/api/v1/customers/{customer}/loyalty").json()
    assert account["points"] == 40

    page.get_by_label("Points to add (negative to take)").fill("25")
    page.get_by_label("Reason").fill("apology")
    page.get_by_role("button", name="Adjust points…").click()
    page.get_by_role("button", name="Confirm adjustment").click()
    expect(page.locator("#account-points")).to_have_text("65")
    expect(page.locator("#ledger tbody tr").first).to_contain_text("apology")
    assert api.get(f"/api/v1/customers/{customer}/loyalty").json()["points"] == 65


def test_keyboard_only_filter_open_an_order_and_restock(
    system: System, api: httpx.Client, page: Any
) -> None:
    sku, customer = new_item(api, stock=9), new_customer(api)
    order_id = place(api, customer, sku, 1).json()["id"]

    page.goto(f"{system.base_url}/console/orders")
    tab_to(page, "#filter-customer")
    page.keyboard.type(customer)
    page.keyboard.press("Enter")
    page.wait_for_url(f"**customer_id={customer}*")
    tab_to(page, f'a[href="/console/orders/{order_id}"]')
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/console/orders/{order_id}")
    assert page.locator("#timeline li.step").count() >= 4

    page.goto(f"{system.base_url}/console/items")
    row = page.locator(f'tr[data-sku="{sku}"]')
    tab_to(page, f'tr[data-sku="{sku}"] input[name="restock"]')
    page.keyboard.type("5")
    page.keyboard.press("Enter")  # submits the form: the confirmation, focused
    row.get_by_role("button", name="Confirm restock").wait_for()
    if not page.evaluate("() => document.activeElement.textContent === 'Confirm restock'"):
        tab_to(page, f'tr[data-sku="{sku}"] button.primary')
    page.keyboard.press("Enter")
    assert "13 available now" in row.locator(".done").inner_text()
    assert api.get(f"/api/v1/items/{sku}").json()["available"] == 13


def test_every_page_passes_axe_labels_every_field_and_fits_a_phone(
    system: System, api: httpx.Client, browser: Any
) -> None:
    sku, customer = new_item(api, stock=2), new_customer(api, points=5)
    order_id = place(api, customer, sku, 1).json()["id"]
    place(api, customer, sku, 50)  # one rejection for the home page
    settled(api, order_id)
    pages = {
        "home": "/console/",
        "orders": "/console/orders",
        "order": f"/console/orders/{order_id}",
        "items": "/console/items",
        "customers": "/console/customers",
        "customer": f"/console/customers/{customer}",
        "login": "/console/login",
    }
    for width, height in ((1280, 900), (390, 844)):
        # axe-core is injected as a script: the test's browser lets it past the page's CSP.
        ctx = browser.new_context(viewport={"width": width, "height": height}, bypass_csp=True)
        try:
            page = ctx.new_page()
            for name, path in pages.items():
                page.goto(f"{system.base_url}{path}")
                assert page.locator("h1").count() == 1, name
                if name == "home":  # 1 left of 2, at or below the threshold (5)
                    assert f"{sku}: 1 available" in page.locator("#low-stock").inner_text()
                    services = page.locator("#events li[data-service]")
                    assert services.count() == 3, services.all_inner_texts()
                    assert all("0 parked" in x for x in services.all_inner_texts())
                if width < 500:  # a phone: nothing wider than the screen but tables
                    wide = page.evaluate(
                        "() => document.documentElement.scrollWidth"
                        " - document.documentElement.clientWidth"
                    )
                    assert wide <= 1, (name, wide)
                    shot(page, f"phone-{name}")
                    continue
                assert unlabelled_fields(page) == [], name
                assert axe_violations(page) == [], name
                shot(page, f"page-{name}")
        finally:
            ctx.close()


def test_cancel_from_the_order_page_after_confirming(
    system: System, api: httpx.Client, page: Any
) -> None:
    sku, customer = new_item(api, stock=5), new_customer(api)
    order_id = place(api, customer, sku, 2).json()["id"]
    settled(api, order_id)
    page.goto(f"{system.base_url}/console/orders/{order_id}")
    page.get_by_role("button", name="Cancel order…").click()
    assert "Cancel order" in page.locator("#order").get_by_role("status").inner_text()
    assert api.get(f"/api/v1/orders/{order_id}").json()["status"] == "CONFIRMED"
    page.get_by_role("button", name="Confirm cancellation").click()
    expect(page.locator("#order-status")).to_have_text("CANCELLED")
    assert api.get(f"/api/v1/orders/{order_id}").json()["status"] == "CANCELLED"
    assert api.get(f"/api/v1/items/{sku}").json()["available"] == 5
    names = [name for name, _, _ in timeline(page)]
    assert "request_cancel" in names and "cancel" in names, names
