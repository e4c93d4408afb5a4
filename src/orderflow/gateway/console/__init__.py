"""The operator console: server-rendered pages (Jinja2 + htmx) under /console/ (issue 16).

`install_console(app)` adds its routes, its static files (htmx, vendored; the stylesheet)
and the handlers that send a browser without a session to the login form.
"""

from __future__ import annotations

from orderflow.gateway.console.routes import install_console

__all__ = ["install_console"]
