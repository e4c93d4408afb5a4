"""Who is calling: JWT bearer tokens with scopes, checked at the gateway.

A customer token (`scope: "orders"`, `sub`: the customer id) places, reads, lists and
cancels its own orders and reads its own loyalty account. An admin token
(`scope: "admin"`) manages items and loyalty and may read any order. Tokens are HS256
(shared secret) or RS256 (public key), with issuer, audience and expiry required;
any other algorithm, `none` included, is refused. A token must carry a known scope, live
no longer than the configured maximum, and be short: a longer Authorization header is
refused before any decoding, so that no token can hold the event loop. Failed attempts
are limited per client address (429 beyond the limit).

Without auth settings the gateway runs open, as a local admin, which start-up allows
only on a loopback address.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from orderflow.errors import ForbiddenError, NotFoundError, UnauthenticatedError
from orderflow.gateway.ratelimit import RateLimiter
from orderflow.settings import AuthSettings

CUSTOMER_SCOPE = "orders"
ADMIN_SCOPE = "admin"
KNOWN_SCOPES = frozenset({CUSTOMER_SCOPE, ADMIN_SCOPE})


@dataclass(frozen=True)
class Principal:
    subject: str
    scopes: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return ADMIN_SCOPE in self.scopes

    @property
    def key(self) -> str:
        """Who this is across kinds (rate limits): an admin and a customer whose id is
        `admin` are two different callers."""
        return f"{'admin' if self.is_admin else 'customer'}:{self.subject}"

    def require_admin(self) -> None:
        if not self.is_admin:
            raise ForbiddenError("this needs an admin token", needed_scope=ADMIN_SCOPE)

    def require_customer(self, customer_id: str) -> None:
        """Acting as customer_id: the customer itself, or an admin (403 otherwise)."""
        if not self.may_see(customer_id):
            raise ForbiddenError("a customer token acts only for its own customer id")

    def may_see(self, customer_id: str) -> bool:
        return self.is_admin or (CUSTOMER_SCOPE in self.scopes and self.subject == customer_id)

    def check_owner(self, customer_id: str, what: str) -> None:
        """Reading someone else's data looks exactly like reading nothing: 404."""
        if not self.may_see(customer_id):
            raise not_found(what)


def not_found(what: str) -> NotFoundError:
    """The one 404 for a record the caller may not see or that does not exist: the same
    status, headers and body either way, so a token cannot probe which ids exist."""
    return NotFoundError(f"no such {what}")


@contextmanager
def as_if_missing(what: str) -> Iterator[None]:
    """Turn a service's own NotFoundError (which names the id) into not_found(what)."""
    try:
        yield
    except NotFoundError:
        raise not_found(what) from None


LOCAL_ADMIN = Principal("local", frozenset({ADMIN_SCOPE, CUSTOMER_SCOPE}))


class Authenticator:
    """Verifies bearer tokens against the configured key."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self.enabled = settings.enabled
        # Failed authentications per client address.
        self.failures = RateLimiter(
            settings.failure_limit_per_second,
            settings.failure_limit_burst,
            what="failed authentications from this address",
        )
        self._key: Any = None
        self._algorithm = ""
        if settings.jwt_secret is not None:
            self._key, self._algorithm = settings.jwt_secret.get_secret_value(), "HS256"
        elif settings.jwt_public_key_file is not None:
            self._key, self._algorithm = settings.jwt_public_key_file.read_text(), "RS256"

    def authenticate(self, authorization: str | None, address: str = "unknown") -> Principal:
        """The caller of a request from address: 401 for a bad token, or 429 once address
        has sent too many bad ones; 403 for a token with no known scope. A good token is
        never limited here, so one client behind a shared address cannot lock out the rest.
        """
        if not self.enabled:
            return LOCAL_ADMIN
        try:
            return self._verify(authorization)
        except UnauthenticatedError:
            self.failures.take(f"address:{address}")
            raise

    def _verify(self, authorization: str | None) -> Principal:
        if authorization and len(authorization) > self.settings.max_token_bytes:
            # Before anything parses it: decoding costs ~130 ms per MB on the event loop.
            raise UnauthenticatedError(
                f"the token is longer than {self.settings.max_token_bytes} bytes"
            )
        if not authorization:
            raise UnauthenticatedError("a bearer token is required (Authorization: Bearer …)")
        import jwt  # here: a gateway without auth never loads the crypto toolkit (~13 MB)

        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthenticatedError("the Authorization header must be 'Bearer <token>'")
        try:
            claims = jwt.decode(
                token.strip(),
                self._key,
                algorithms=[self._algorithm],
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=self.settings.leeway_seconds,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise UnauthenticatedError("the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise UnauthenticatedError(f"the token is not valid: {exc}") from None
        subject = claims.get("sub")
        scopes = claims.get("scope", "")
        if not isinstance(subject, str) or not subject or not isinstance(scopes, str):
            raise UnauthenticatedError("the token's sub and scope claims are malformed")
        longest = self.settings.max_token_lifetime_seconds
        issued, expires = claims["iat"], claims["exp"]
        leeway = self.settings.leeway_seconds
        if expires - issued > longest or expires - time.time() > longest + leeway:
            raise UnauthenticatedError(f"the token lives longer than the maximum of {longest} s")
        principal = Principal(subject, frozenset(scopes.split()))
        if not principal.scopes & KNOWN_SCOPES:
            raise ForbiddenError(
                "the token carries no known scope", needed_scope=" or ".join(sorted(KNOWN_SCOPES))
            )
        return principal


def issue_token(
    settings: AuthSettings,
    subject: str,
    scopes: list[str],
    ttl_seconds: int,
    private_key: str | None = None,
) -> str:
    """A signed token for local use (`orderflow token`), never beyond the maximum lifetime."""
    import jwt

    if ttl_seconds > settings.max_token_lifetime_seconds:
        raise ValueError(
            f"a token may live at most {settings.max_token_lifetime_seconds} s "
            "(ORDERFLOW_AUTH_MAX_TOKEN_LIFETIME_SECONDS)"
        )

    now = int(time.time())
    claims = {
        "sub": subject,
        "scope": " ".join(scopes),
        "iss": settings.issuer,
        "aud": settings.audience,
        "iat": now,
        "exp": now + ttl_seconds,
    }
    if settings.jwt_secret is not None:
        return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")
    if private_key is None:
        raise ValueError("RS256 tokens need the private key (ORDERFLOW_AUTH_JWT_PRIVATE_KEY_FILE)")
    return jwt.encode(claims, private_key, algorithm="RS256")
