"""/docs works with no internet: the page loads Swagger UI from the gateway itself (files
vendored in the package, checked against the hashes they were taken with), and no page the
gateway serves, nor any template it ships, points a browser at another host."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.routing import Route

from orderflow.gateway.app import create_app
from orderflow.gateway.deps import Services
from orderflow.gateway.docs import SWAGGER_UI
from orderflow.gateway.readiness import Readiness
from orderflow.settings import CommonSettings, GatewaySettings
from tests.fakes import Calls, FakeInventory, FakeLoyalty, FakeOrders

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "orderflow"
# The type Python's mimetypes gives .js is text/javascript, or application/javascript on 3.11
# without the system's mime.types: a browser runs both.
CONTENT_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
}
# A URL a browser would load from: anything http(s) but an XML namespace (xmlns="…").
_URL = re.compile(r"""(xmlns(?::[\w-]+)?\s*=\s*["'])?(https?://[^\s"'<>()]+)""")


def foreign_urls(text: str, own_host: str | None = None) -> list[str]:
    found = []
    for match in _URL.finditer(text):
        namespace, url = match.groups()
        if namespace:
            continue
        if own_host is not None and httpx.URL(url).host == own_host:
            continue
        found.append(url)
    return found


class References(HTMLParser):
    """Every src and href of a page, and the URLs its inline script configures."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found += [v for k, v in attrs if k in ("src", "href") and v]
        self._script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._script = False

    def handle_data(self, data: str) -> None:
        if self._script:
            self.found += re.findall(r"""url:\s*['"]([^'"]+)['"]""", data)


@pytest.fixture
async def app() -> FastAPI:
    async def serving() -> str:
        return "SERVING"

    calls = Calls()
    return create_app(
        GatewaySettings(),
        CommonSettings(),
        services=Services(
            FakeOrders(calls), FakeInventory(calls, {"MUG-1": (1250, 10)}), FakeLoyalty(calls, {})
        ),
        readiness=Readiness({"orders": serving, "inventory": serving, "loyalty": serving}),
        recovery=False,
    )


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            yield c


async def test_docs_loads_swagger_ui_from_the_gateway_itself(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    parser = References()
    parser.feed(page.text)
    assert {Path(ref).name for ref in parser.found} >= {
        "swagger-ui-bundle.js",
        "swagger-ui.css",
        "favicon-32x32.png",
        "openapi.json",
    }
    for ref in parser.found:
        assert ref.startswith("/") and not ref.startswith("//"), ref  # this host
        asset = await client.get(ref)
        assert asset.status_code == 200, ref
        suffix = Path(ref).suffix
        if suffix in CONTENT_TYPES:
            assert asset.headers["content-type"].startswith(CONTENT_TYPES[suffix]), ref
            assert asset.content == (SWAGGER_UI / Path(ref).name).read_bytes(), ref
    assert foreign_urls(page.text) == []


async def test_redoc_is_off_since_it_would_load_from_a_cdn(client: httpx.AsyncClient) -> None:
    assert (await client.get("/redoc")).status_code == 404


def test_the_vendored_files_are_the_ones_recorded() -> None:
    """Each vendored file has the hash its README records (copied unchanged from the
    pinned package), and nothing else is there unrecorded."""
    recorded = dict(
        re.findall(
            r"^\| `([^`]+)` \| `([0-9a-f]{64})` \|$", (SWAGGER_UI / "README.md").read_text(), re.M
        )
    )
    assert {"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png", "LICENSE"} <= set(
        recorded
    )
    present = {p.name for p in SWAGGER_UI.iterdir()} - {"README.md"}
    assert present == set(recorded)
    for name, digest in recorded.items():
        assert hashlib.sha256((SWAGGER_UI / name).read_bytes()).hexdigest() == digest, name


async def test_no_page_the_gateway_serves_points_at_another_host(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """Every GET route without parameters is fetched; each HTML page among them (at least
    /docs) may only reference this host."""
    pages = []
    for route in app.routes:
        if isinstance(route, Route) and "GET" in (route.methods or ()) and "{" not in route.path:
            reply = await client.get(route.path)
            if reply.headers.get("content-type", "").startswith("text/html"):
                pages.append(route.path)
                assert foreign_urls(reply.text, own_host="gw") == [], route.path
    assert "/docs" in pages


def test_no_template_the_gateway_ships_points_at_another_host() -> None:
    shipped = [
        p
        for p in PACKAGE.rglob("*")
        if p.suffix in (".html", ".htm", ".j2", ".jinja", ".jinja2") and p.is_file()
    ]
    for path in shipped:
        assert foreign_urls(path.read_text()) == [], path


def test_foreign_urls_sees_links_and_scripts_but_not_namespaces() -> None:
    html = (
        '<svg xmlns="http://www.w3.org/2000/svg"></svg><a href="https://elsewhere.test/x">'
        '<script src="http://cdn.test/a.js"></script><a href="http://gw/docs">'
    )
    assert foreign_urls(html, own_host="gw") == ["https://elsewhere.test/x", "http://cdn.test/a.js"]
