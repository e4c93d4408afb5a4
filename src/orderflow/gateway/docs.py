"""The interactive API docs at /docs, served with no request leaving the gateway.

FastAPI's own /docs page loads Swagger UI from a CDN, so it is blank without internet
access. Here the page references Swagger UI's files vendored in this package
(static/swagger-ui: pinned, with their license and hashes), which the gateway serves under
/docs/assets/. FastAPI's ReDoc page would load from a CDN too; the app turns it off.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs/assets"
SWAGGER_UI = Path(__file__).resolve().parent / "static" / "swagger-ui"


def install_docs(app: FastAPI, path: str = "/docs") -> None:
    """Serve Swagger UI at path (create the app with docs_url=None)."""
    app.mount(ASSETS, StaticFiles(directory=SWAGGER_UI), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(path, include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon-32x32.png",
            # Swagger UI would otherwise ask an online validator for a badge.
            swagger_ui_parameters={"validatorUrl": None},
        )
