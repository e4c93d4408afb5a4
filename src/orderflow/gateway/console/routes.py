"""The console's pages and actions. Reads and changes go through gateway.operations, the
application layer behind the REST and gRPC APIs, so they are validated, authorised and
refused exactly as there (ADR 27); a refusal is shown next to the form that caused it.

Every action is confirmed before it runs: the first POST only validates and answers a
confirmation (with a fresh idempotency key), the second (`confirm=yes`) runs it. Both
work without JavaScript (full pages); with htmx the same answers replace only the part
of the page the form belongs to.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import jinja2
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from orderflow.errors import OrderflowError, RateLimitedError
from orderflow.gateway import operations as ops
from orderflow.gateway.auth import Principal
from orderflow.gateway.console import attention as attention_mod
from orderflow.gateway.console import charts, session
from orderflow.gateway.console.session import (
    CSRF_FIELD,
    CsrfError,
    LoginRequiredError,
    NotAdminError,
)
from orderflow.gateway.deps import Gateway, GatewayDep, client_address
from orderflow.gateway.errors import http_status
from orderflow.gateway.ports import CONFIRMED, STATUSES, Order
from orderflow.gateway.schemas import ItemPatchIn, PointsIn, TierIn

HERE = Path(__file__).parent
PREFIX = session.PATH
STATIC = f"{PREFIX}/static"
# Tiers offered in the tier field (loyalty accepts whatever ORDERFLOW_LOYALTY_TIERS names).
SUGGESTED_TIERS = ("standard", "silver", "gold")
# Content-Security-Policy of every console page: nothing inline, nothing from elsewhere.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

router = APIRouter(prefix=PREFIX, include_in_schema=False)


@dataclass
class Action:
    """One form's state: as first shown, awaiting confirmation, done, or refused."""

    name: str
    values: dict[str, str] = field(default_factory=dict)
    stage: str = "form"  # form | confirm | done
    message: str = ""
    error: str = ""
    key: str = ""


# -- rendering --------------------------------------------------------------------------------


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["clock"] = _clock
    env.filters["ago"] = _ago
    env.globals["stock_bar"] = charts.stock_bar
    env.globals["statuses"] = STATUSES
    env.globals["tiers"] = SUGGESTED_TIERS
    env.globals["domid"] = _domid
    return env


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


def _clock(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3] if value else "—"


def _ago(value: datetime | None) -> str:
    if value is None:
        return "—"
    seconds = int((datetime.now(UTC) - value).total_seconds())
    if seconds < 120:
        return f"{max(seconds, 0)} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def _domid(value: str) -> str:
    """An element id for any sku or key (ids must not hold spaces or quotes)."""
    return "x" + value.encode().hex()


def _htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    gateway = _gateway(request)
    env: jinja2.Environment = request.app.state.console_templates
    session.ensure_csrf_cookie(request)
    money = _money(gateway)
    html = env.get_template(template).render(
        request=request,
        path=request.url.path,
        static=STATIC,
        prefix=PREFIX,
        csrf_field=CSRF_FIELD,
        csrf=session.csrf_token(request),
        auth_on=gateway.auth.enabled,
        money=money,
        **context,
    )
    response = HTMLResponse(html, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    session.set_cookies(request, response)
    return response


def _money(gateway: Gateway) -> Any:
    units = gateway.common.minor_units
    currency = gateway.common.currency
    digits = len(str(units)) - 1 if units > 1 and str(units).strip("0") == "1" else 0

    def money(minor: int) -> str:
        if digits == 0:
            return f"{minor} {currency}"
        sign = "-" if minor < 0 else ""
        whole, part = divmod(abs(minor), units)
        return f"{sign}{whole}.{part:0{digits}d} {currency}"

    return money


def _say(exc: OrderflowError) -> str:
    return f"{exc.code}: {exc.message}"


async def _form(request: Request) -> dict[str, str]:
    """The fields of a urlencoded form (what browsers and htmx send); the last of repeats."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    body = (await request.body()).decode("utf-8", "replace")
    return {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}


async def _acting(request: Request) -> tuple[Gateway, Principal, dict[str, str]]:
    """An action's gateway, user and fields, once its session and CSRF token check out."""
    gateway = _gateway(request)
    who = session.principal(gateway, request)
    form = await _form(request)
    session.check_csrf(request, form.get(CSRF_FIELD, ""))
    return gateway, who, form


def _number(value: str) -> int | str:
    """An integer field as typed: the int, or the text (which validation then refuses)."""
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        return text


def _key() -> str:
    return f"console-{uuid.uuid4().hex}"


# -- sign in and out ------------------------------------------------------------------------------


@router.get("/login")
async def login_page(request: Request, next: str = "") -> HTMLResponse:
    return render(request, "login.html", next=_safe_next(next), error="")


@router.post("/login")
async def login(request: Request, gateway: GatewayDep) -> Response:
    form = await _form(request)
    session.check_csrf(request, form.get(CSRF_FIELD, ""))
    nxt = _safe_next(form.get("next", ""))
    if not gateway.auth.enabled:
        return RedirectResponse(nxt, status_code=303)
    token = form.get("token", "").strip()
    try:
        who = gateway.auth.authenticate(f"Bearer {token}", client_address(request))
    except OrderflowError as exc:
        status = 429 if isinstance(exc, RateLimitedError) else http_status(exc.code)
        return render(request, "login.html", status=status, next=nxt, error=_say(exc))
    if not who.is_admin:
        return render(
            request,
            "login.html",
            status=403,
            next=nxt,
            error="FORBIDDEN: the console needs an admin token (orderflow token --admin); "
            "this token is a customer's",
        )
    response = RedirectResponse(nxt, status_code=303)
    session.sign_in(request, response, token)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    form = await _form(request)
    session.check_csrf(request, form.get(CSRF_FIELD, ""))
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    session.sign_out(response)
    return response


def _safe_next(value: str) -> str:
    """Where to go after login: a console path only (never another site)."""
    if value.startswith(f"{PREFIX}/") and not value.startswith("//") and "\\" not in value:
        return value
    return f"{PREFIX}/"


# -- home -----------------------------------------------------------------------------------------


@router.get("/")
async def home(request: Request, gateway: GatewayDep) -> HTMLResponse:
    who = session.principal(gateway, request)
    found = await attention_mod.gather(gateway, who)
    return render(request, "home.html", attention=found, **_chart_context(gateway))


@router.get("/attention")
async def attention(request: Request, gateway: GatewayDep) -> HTMLResponse:
    who = session.principal(gateway, request)
    found = await attention_mod.gather(gateway, who)
    return render(request, "_attention.html", attention=found)


@router.get("/charts")
async def chart_panel(request: Request, gateway: GatewayDep) -> HTMLResponse:
    session.principal(gateway, request)
    return render(request, "_charts.html", **_chart_context(gateway))


def _chart_context(gateway: Gateway) -> dict[str, Any]:
    recent = gateway.metrics.recent
    minutes = recent.per_minute()
    latencies = recent.latency()
    totals: dict[str, int] = {}
    for _, counts in minutes:
        for outcome, n in counts.items():
            totals[outcome] = totals.get(outcome, 0) + n
    return {
        "outcomes_chart": charts.outcomes_per_minute(minutes),
        "latency_chart": charts.step_latency(latencies),
        "outcome_totals": totals,
        "outcome_colours": charts.OUTCOME_COLOURS,
        "latencies": latencies,
    }


# -- orders ---------------------------------------------------------------------------------------


@router.get("/orders")
async def orders_page(
    request: Request,
    gateway: GatewayDep,
    status: str = "",
    customer_id: str = "",
    cursor: str = "",
) -> HTMLResponse:
    who = session.principal(gateway, request)
    filters = {"status": status, "customer_id": customer_id.strip()}
    try:
        page = await ops.list_orders(
            gateway, who, filters["customer_id"] or None, status or None, 20, cursor or None
        )
    except OrderflowError as exc:
        return render(
            request,
            "orders.html",
            status=http_status(exc.code),
            orders=[],
            next_url="",
            filters=filters,
            error=_say(exc),
            paged=bool(cursor),
        )
    next_url = ""
    if page.next_cursor:
        query = {k: v for k, v in filters.items() if v}
        next_url = f"{PREFIX}/orders?{urlencode({**query, 'cursor': page.next_cursor})}"
    return render(
        request,
        "orders.html",
        orders=page.entries,
        next_url=next_url,
        filters=filters,
        error="",
        paged=bool(cursor),
    )


@router.get("/orders/{order_id}")
async def order_page(request: Request, gateway: GatewayDep, order_id: str) -> HTMLResponse:
    who = session.principal(gateway, request)
    return await _order_response(request, gateway, who, order_id, Action("cancel"))


async def _order_response(
    request: Request, gateway: Gateway, who: Principal, order_id: str, action: Action
) -> HTMLResponse:
    try:
        history = await ops.order_history(gateway, who, order_id)
    except OrderflowError as exc:
        return render(
            request, "error.html", status=http_status(exc.code), title="Order", error=_say(exc)
        )
    status = 200
    if action.error and not _htmx(request):
        status = 409
    template = "_order.html" if _htmx(request) else "order.html"
    return render(
        request,
        template,
        status=status,
        order=history.order,
        steps=history.steps,
        truncated=history.truncated,
        cancellable=_cancellable(history.order),
        action=action,
    )


def _cancellable(order: Order) -> bool:
    return order.status == CONFIRMED and not order.cancel_requested


@router.post("/orders/{order_id}/cancel")
async def cancel(request: Request, order_id: str) -> HTMLResponse:
    gateway, who, form = await _acting(request)
    action = Action("cancel")
    try:
        if form.get("confirm") != "yes":
            order = await ops.get_order(gateway, who, order_id)
            action.stage = "confirm"
            action.message = (
                f"Cancel order {order.id}? Its stock goes back to available, redeemed "
                "points are refunded and earned points taken back."
            )
        else:
            order = await ops.cancel_order(gateway, who, order_id)
            action.stage = "done"
            action.message = f"Order {order.id} is {order.status}."
    except OrderflowError as exc:
        action.error = _say(exc)
    return await _order_response(request, gateway, who, order_id, action)


# -- items ----------------------------------------------------------------------------------------


@router.get("/items")
async def items_page(request: Request, gateway: GatewayDep, cursor: str = "") -> HTMLResponse:
    who = session.principal(gateway, request)
    return await _items_response(request, gateway, who, cursor, {})


async def _items_response(
    request: Request,
    gateway: Gateway,
    who: Principal,
    cursor: str,
    actions: Mapping[str, Action],
    sku: str = "",
) -> HTMLResponse:
    failed = any(a.error for a in actions.values())
    status = 409 if failed and not _htmx(request) else 200
    if sku and _htmx(request):
        try:
            item = await ops.get_item(gateway, who, sku)
        except OrderflowError as exc:
            return render(request, "error.html", status=200, title="Item", error=_say(exc))
        return render(request, "_item_row.html", item=item, actions=actions)
    try:
        page = await ops.list_items(gateway, who, 50, cursor or None)
    except OrderflowError as exc:
        return render(
            request, "error.html", status=http_status(exc.code), title="Items", error=_say(exc)
        )
    next_url = (
        f"{PREFIX}/items?{urlencode({'cursor': page.next_cursor})}" if page.next_cursor else ""
    )
    return render(
        request,
        "items.html",
        status=status,
        items=page.entries,
        next_url=next_url,
        paged=bool(cursor),
        actions=actions,
    )


@router.post("/items/{sku}/restock")
async def restock(request: Request, sku: str) -> HTMLResponse:
    gateway, who, form = await _acting(request)
    action = Action("restock", {"restock": form.get("restock", "")})
    try:
        body = ops.validated(ItemPatchIn, {"restock": _number(action.values["restock"])})
        assert body.restock is not None
        if form.get("confirm") != "yes":
            item = await ops.get_item(gateway, who, sku)
            action.stage, action.key = "confirm", _key()
            action.message = (
                f"Restock {item.sku} by {body.restock}? Available goes from "
                f"{item.available} to {item.available + body.restock}."
            )
        else:
            item = await ops.update_item(gateway, who, sku, body, form.get("key") or None)
            action.stage = "done"
            action.message = f"Restocked {item.sku}: {item.available} available now."
            action.values = {}
    except OrderflowError as exc:
        action.error = _say(exc)
    return await _items_response(request, gateway, who, "", {sku: action}, sku)


@router.post("/items/{sku}/reprice")
async def reprice(request: Request, sku: str) -> HTMLResponse:
    gateway, who, form = await _acting(request)
    action = Action("reprice", {"price": form.get("price", "")})
    money = _money(gateway)
    try:
        body = ops.validated(ItemPatchIn, {"price": _number(action.values["price"])})
        assert body.price is not None
        if form.get("confirm") != "yes":
            item = await ops.get_item(gateway, who, sku)
            action.stage, action.key = "confirm", _key()
            action.message = (
                f"Change the price of {item.sku} from {money(item.price)} to {money(body.price)}?"
            )
        else:
            item = await ops.update_item(gateway, who, sku, body, form.get("key") or None)
            action.stage = "done"
            action.message = f"{item.sku} now costs {money(item.price)}."
            action.values = {}
    except OrderflowError as exc:
        action.error = _say(exc)
    return await _items_response(request, gateway, who, "", {sku: action}, sku)


# -- customers ------------------------------------------------------------------------------------


@router.get("/customers")
async def customers_page(request: Request, gateway: GatewayDep, customer_id: str = "") -> Response:
    session.principal(gateway, request)
    customer_id = customer_id.strip()
    error = ""
    if customer_id:
        if len(customer_id) <= ops.ID_MAX and "/" not in customer_id:
            target = f"{PREFIX}/customers/{quote(customer_id, safe='')}"
            return RedirectResponse(target, status_code=303)
        error = f"VALIDATION_ERROR: a customer id has 1 to {ops.ID_MAX} characters and no '/'"
    return render(request, "customers.html", status=422 if error else 200, error=error)


@router.get("/customers/{customer_id}")
async def customer_page(
    request: Request, gateway: GatewayDep, customer_id: str, cursor: str = ""
) -> HTMLResponse:
    who = session.principal(gateway, request)
    return await _customer_response(request, gateway, who, customer_id, {}, cursor)


async def _customer_response(
    request: Request,
    gateway: Gateway,
    who: Principal,
    customer_id: str,
    actions: Mapping[str, Action],
    cursor: str = "",
) -> HTMLResponse:
    account = None
    error = ""
    try:
        account = await ops.get_account(gateway, who, customer_id)
    except OrderflowError as exc:
        if exc.code != "NOT_FOUND":
            error = _say(exc)
    entries: list[Any] = []
    next_url = ""
    if account is not None:
        try:
            page = await ops.points_entries(gateway, who, customer_id, 20, cursor or None)
            entries = page.entries
            if page.next_cursor:
                next_url = (
                    f"{PREFIX}/customers/{customer_id}?{urlencode({'cursor': page.next_cursor})}"
                )
        except OrderflowError as exc:
            error = _say(exc)
    failed = any(a.error for a in actions.values())
    status = 409 if failed and not _htmx(request) else 200
    template = "_customer.html" if _htmx(request) else "customer.html"
    return render(
        request,
        template,
        status=status,
        customer_id=customer_id,
        account=account,
        entries=entries,
        next_url=next_url,
        paged=bool(cursor),
        error=error,
        actions={"tier": Action("tier"), "points": Action("points"), **actions},
    )


@router.post("/customers/{customer_id}/tier")
async def set_tier(request: Request, customer_id: str) -> HTMLResponse:
    gateway, who, form = await _acting(request)
    action = Action("tier", {"tier": form.get("tier", "").strip()})
    try:
        body = ops.validated(TierIn, {"tier": action.values["tier"]})
        if form.get("confirm") != "yes":
            action.stage, action.key = "confirm", _key()
            action.message = f"Set the tier of {customer_id} to {body.tier}?"
        else:
            account = await ops.set_tier(gateway, who, customer_id, body, form.get("key") or None)
            action.stage = "done"
            action.message = (
                f"{account.customer_id} is {account.tier} now "
                f"({account.discount_percent} % discount)."
            )
    except OrderflowError as exc:
        action.error = _say(exc)
    return await _customer_response(request, gateway, who, customer_id, {"tier": action})


@router.post("/customers/{customer_id}/points")
async def adjust_points(request: Request, customer_id: str) -> HTMLResponse:
    gateway, who, form = await _acting(request)
    action = Action(
        "points", {"delta": form.get("delta", ""), "reason": form.get("reason", "").strip()}
    )
    try:
        body = ops.validated(
            PointsIn,
            {"delta": _number(action.values["delta"]), "reason": action.values["reason"]},
        )
        if form.get("confirm") != "yes":
            action.stage, action.key = "confirm", _key()
            verb = "Add" if body.delta > 0 else "Take"
            preposition = "to" if body.delta > 0 else "from"
            action.message = (
                f"{verb} {abs(body.delta)} points {preposition} {customer_id} "
                f"(reason: {body.reason})?"
            )
        else:
            account = await ops.adjust_points(
                gateway, who, customer_id, body, form.get("key") or None
            )
            action.stage = "done"
            action.message = f"{account.customer_id} has {account.points} points now."
            action.values = {}
    except OrderflowError as exc:
        action.error = _say(exc)
    return await _customer_response(request, gateway, who, customer_id, {"points": action})


# -- wiring ---------------------------------------------------------------------------------------


def install_console(app: FastAPI) -> None:
    """Serve the console under /console/ on app."""
    app.state.console_templates = _environment()
    app.mount(STATIC, StaticFiles(directory=str(HERE / "static")), name="console-static")
    app.include_router(router)

    async def to_login(request: Request, exc: Exception) -> Response:
        reason = exc.reason if isinstance(exc, LoginRequiredError) else ""
        target = f"{PREFIX}/login?{urlencode({'next': request.url.path})}"
        if _htmx(request):  # htmx follows HX-Redirect with a full page load
            return Response(status_code=200, headers={"HX-Redirect": target})
        if request.method == "GET" and not reason:
            return RedirectResponse(target, status_code=303)
        return render(request, "login.html", status=401, next=request.url.path, error=reason)

    async def not_admin(request: Request, _exc: Exception) -> Response:
        return render(
            request,
            "error.html",
            status=403,
            title="Admins only",
            error="FORBIDDEN: the console needs an admin token; this session's token is not "
            "an admin's. Sign out and sign in with `orderflow token --admin`.",
        )

    async def bad_csrf(request: Request, _exc: Exception) -> Response:
        return render(
            request,
            "error.html",
            status=403,
            title="Refused",
            error="FORBIDDEN: this form was not sent from a console page of this session "
            "(its CSRF token is missing or wrong). Reload the page and try again.",
        )

    app.add_exception_handler(LoginRequiredError, to_login)
    app.add_exception_handler(NotAdminError, not_admin)
    app.add_exception_handler(CsrfError, bad_csrf)


__all__ = ["install_console"]
