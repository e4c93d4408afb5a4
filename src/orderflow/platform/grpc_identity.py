"""Which clients a service admits under mutual TLS: a certificate from the CA is not enough.

The TLS handshake proves that the CA signed the client's certificate; it says nothing of
whose it is. A service's own certificate, or anything else a shared CA signed, would pass.
So every call also checks the client's identity, a DNS name in its certificate's SAN,
against a list (ORDERFLOW_TLS_ALLOWED_CLIENTS, by default `gateway`), and is refused with
PERMISSION_DENIED otherwise. The list travels with the server credentials, so whatever
builds a server from `platform.tls.server_credentials()` gets the check.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc

SAN_KEY = "x509_subject_alternative_name"


class ClientCheckingCredentials(grpc.ServerCredentials):
    """Mutual-TLS server credentials that also carry the client identities to admit."""

    def __init__(self, inner: grpc.ServerCredentials, allowed_clients: Iterable[str]) -> None:
        super().__init__(inner._credentials)
        self.allowed_clients = frozenset(allowed_clients)


def allowed_clients(credentials: grpc.ServerCredentials | None) -> frozenset[str] | None:
    """The identities credentials admit, or None when they check none (plaintext)."""
    if isinstance(credentials, ClientCheckingCredentials):
        return credentials.allowed_clients
    return None


def peer_names(context: grpc.aio.ServicerContext) -> list[str]:
    """The names in the SAN of the calling client's certificate (empty without TLS)."""
    values = (context.auth_context() or {}).get(SAN_KEY, ())
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


def refusal(context: grpc.aio.ServicerContext, allowed: frozenset[str]) -> str | None:
    """None when the caller's certificate names an allowed identity; else why not."""
    names = peer_names(context)
    if any(name in allowed for name in names):
        return None
    shown = ", ".join(names[:3]) or "no name"
    return (
        f"client certificate ({shown}) is not one of the allowed clients "
        f"({', '.join(sorted(allowed))}); see ORDERFLOW_TLS_ALLOWED_CLIENTS"
    )
