"""Where a gRPC server may listen: loopback, or beyond it only with mutual TLS or when told.

The services' gRPC ports check no bearer token (tokens are checked at the gateway), so a
plaintext port on a reachable address lets anyone change stock or points. A server binds
beyond loopback only when mutual TLS is configured (ORDERFLOW_TLS_*), or with the explicit
`--insecure-grpc` / ORDERFLOW_INSECURE_GRPC=true for a network nothing else can reach
(a compose internal network, a cluster with NetworkPolicies); that start is announced with
a loud warning. Anything else is refused before anything is bound.
"""

from __future__ import annotations

from orderflow.settings import is_loopback

# Addresses meaning "every interface": a client dials loopback instead.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]", "[::]": "[::1]"}


class ExposedGrpcError(Exception):
    """A plaintext gRPC server was asked to listen beyond loopback without being told it may."""


def check_grpc_bind(host: str, *, tls: bool, insecure: bool, what: str = "gRPC") -> str | None:
    """None when binding host is safe; a warning to announce when only `insecure` allows it.

    Raises ExposedGrpcError (a one-line reason naming the fixes) when it is refused.
    """
    if tls or is_loopback(host):
        return None
    if insecure:
        return (
            f"WARNING: {what} listens on {host} in PLAINTEXT without client certificates "
            "(--insecure-grpc / ORDERFLOW_INSECURE_GRPC): anyone who can reach this address "
            "can change stock, orders and points. Use it only on a private network."
        )
    raise ExposedGrpcError(
        f"refusing to serve {what} on {host} without mutual TLS: set ORDERFLOW_TLS_CA_FILE, "
        "ORDERFLOW_TLS_CERT_FILE and ORDERFLOW_TLS_KEY_FILE (see `orderflow certs`), bind to "
        "127.0.0.1, or pass --insecure-grpc (ORDERFLOW_INSECURE_GRPC=true) on a private network"
    )


def dial_host(bind_host: str) -> str:
    """The address a client on this machine dials to reach a server bound to bind_host."""
    return _WILDCARDS.get(bind_host, bind_host)
