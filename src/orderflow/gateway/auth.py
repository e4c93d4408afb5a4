"""Who is calling: JWT bearer tokens with scopes, checked at the gateway.

A customer token (`scope: "orders"`, `sub`: the customer id) places, reads, lists and
cancels its own orders and reads its own loyalty account. An admin token
(`scope: "admin"`) manages items and loyalty and may read any order. Tokens are HS256
(shared secret) or RS256 (public key), with issuer, audience and expiry required;
any other algorithm, `none` included, is refused.

Without auth settings the gateway runs open, as a local admin, which start-up allows
only on a loopback address.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from orderflow.errors import ForbiddenError, NotFoundError, UnauthenticatedError
from orderflow.settings import AuthSettings

CUSTOMER_SCOPE = "orders"
ADMIN_SCOPE = "admin"


@dataclass(frozen=True)
class Principal:
    subject: str
    scopes: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return ADMIN_SCOPE in self.scopes

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
            raise NotFoundError(f"no such {what}")


LOCAL_ADMIN = Principal("local", frozenset({ADMIN_SCOPE, CUSTOMER_SCOPE}))


class Authenticator:
    """Verifies bearer tokens against the configured key."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self.enabled = settings.enabled
        self._key: Any = None
        self._algorithm = ""
        if settings.jwt_secret is not None:
            self._key, self._algorithm = settings.jwt_secret.get_secret_value(), "HS256"
        elif settings.jwt_public_key_file is not None:
            self._key, self._algorithm = settings.jwt_public_key_file.read_text(), "RS256"

    def authenticate(self, authorization: str | None) -> Principal:
        if not self.enabled:
            return LOCAL_ADMIN
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
        return Principal(subject, frozenset(scopes.split()))


def issue_token(
    settings: AuthSettings,
    subject: str,
    scopes: list[str],
    ttl_seconds: int,
    private_key: str | None = None,
) -> str:
    """A signed token for local use (`orderflow token`)."""
    import jwt

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
