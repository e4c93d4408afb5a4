"""Who uses the console, and proof that a form was sent by a page the console rendered.

With authentication on, an operator signs in with an admin token (`orderflow token
--admin`); the gateway checks it exactly as it checks a bearer token and keeps it in a
cookie the page's scripts cannot read (HttpOnly) and the browser sends to no other site's
requests (SameSite=Strict), scoped to /console. Without auth settings the console is as
open as the API, which start-up allows only on a loopback address.

Every action (a POST) carries a CSRF token: an HMAC of the session under a random value
the browser holds in a second HttpOnly cookie (a signed double submit, ADR 29). A page of
another site can neither read that cookie nor the token rendered into our pages, so it
cannot forge an action; no server-side state is kept, so any gateway replica checks it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fastapi import Request, Response

from orderflow.errors import ForbiddenError, UnauthenticatedError
from orderflow.gateway.auth import Principal
from orderflow.gateway.deps import Gateway, client_address

PATH = "/console"
TOKEN_COOKIE = "orderflow_console_token"
CSRF_COOKIE = "orderflow_console_csrf"
CSRF_FIELD = "csrf_token"
_CSRF_CONTEXT = b"orderflow-console-csrf-v1|"


class LoginRequiredError(Exception):
    """No valid admin session: the console's pages send the browser to the login form."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class NotAdminError(Exception):
    """A valid token that is not an admin's (a customer token): refused with 403."""


class CsrfError(Exception):
    """An action without the CSRF token of this browser's session: refused with 403."""


def principal(gateway: Gateway, request: Request) -> Principal:
    """The console's user: the local admin without auth, else the admin whose token the
    session cookie holds. LoginRequiredError without a (valid) one, NotAdminError for a
    token that is not an admin's."""
    token = request.cookies.get(TOKEN_COOKIE, "")
    if not gateway.auth.enabled:
        return gateway.auth.authenticate(None)
    if not token:
        raise LoginRequiredError()
    try:
        who = gateway.auth.authenticate(f"Bearer {token}", client_address(request))
    except UnauthenticatedError as exc:
        raise LoginRequiredError(exc.message) from None
    except ForbiddenError:
        raise NotAdminError() from None
    if not who.is_admin:
        raise NotAdminError()
    return who


def csrf_secret(request: Request) -> str:
    """This browser's CSRF value (set by ensure_csrf_cookie on the pages it loaded)."""
    return request.cookies.get(CSRF_COOKIE, "") or str(getattr(request.state, "new_csrf", ""))


def csrf_token(request: Request) -> str:
    """The token forms carry: HMAC(this browser's CSRF value, its session token)."""
    secret = csrf_secret(request)
    if not secret:
        return ""
    session = request.cookies.get(TOKEN_COOKIE, "")
    return hmac.new(secret.encode(), _CSRF_CONTEXT + session.encode(), hashlib.sha256).hexdigest()


def check_csrf(request: Request, submitted: str) -> None:
    """CsrfError unless submitted is this browser's token for its session."""
    expected = csrf_token(request) if request.cookies.get(CSRF_COOKIE) else ""
    if not expected or not hmac.compare_digest(expected, submitted):
        raise CsrfError()


def ensure_csrf_cookie(request: Request) -> None:
    """Give a browser without a CSRF value one, before its page renders tokens from it."""
    if not request.cookies.get(CSRF_COOKIE):
        request.state.new_csrf = secrets.token_urlsafe(32)


def set_cookies(request: Request, response: Response) -> None:
    """Set the CSRF cookie chosen for this request, if any."""
    new = getattr(request.state, "new_csrf", "")
    if new:
        _set(request, response, CSRF_COOKIE, new, max_age=None)


def sign_in(request: Request, response: Response, token: str) -> None:
    """Keep the token for this browser session (an expired one sends it back to login)."""
    _set(request, response, TOKEN_COOKIE, token, max_age=None)


def sign_out(response: Response) -> None:
    response.delete_cookie(TOKEN_COOKIE, path=PATH, httponly=True, samesite="strict")


def _set(request: Request, response: Response, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
