"""The `orderflow` command: run everything in one process, serve one component, migrate, ..."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from orderflow import boot, registry

app = typer.Typer(
    help="orderflow: an order-placement backend of gRPC services behind a REST gateway.",
    no_args_is_help=True,
    add_completion=False,
)

T = TypeVar("T")


INSECURE_GRPC_HELP = (
    "let gRPC listen beyond loopback in plaintext, without client certificates "
    "(ORDERFLOW_INSECURE_GRPC); only on a private network"
)


@app.command(
    help=boot.SERVE_HELP,
    add_help_option=False,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def serve(ctx: typer.Context) -> None:
    # Listed here for `orderflow --help`; its arguments are parsed by the lean serving
    # path alone (orderflow.__main__ sends `orderflow serve ...` there directly).
    boot.serve_main(ctx.args)


@app.command()
def run(
    host: Annotated[str, typer.Option(help="address of the gateway (HTTP)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="HTTP port of the gateway")] = 8080,
    grpc_port: Annotated[
        int, typer.Option(min=0, max=65535, help="gRPC port of the three services")
    ] = 50051,
    data_dir: Annotated[
        Path, typer.Option(help="where the SQLite files go (one per service)")
    ] = Path("data"),
    demo: Annotated[bool, typer.Option(help="load a demo catalog and loyalty accounts")] = False,
    grpc_host: Annotated[
        str, typer.Option(help="address of the gRPC server (beyond loopback: mTLS or the flag)")
    ] = "127.0.0.1",
    insecure_grpc: Annotated[bool, typer.Option(help=INSECURE_GRPC_HELP)] = False,
) -> None:
    """Run everything in one process: three gRPC services on one port, the gateway on HTTP."""
    from orderflow.onebox import run_onebox
    from orderflow.platform.logging import configure_logging
    from orderflow.settings import CommonSettings, GatewaySettings

    common = boot.load_settings(CommonSettings)
    gateway = boot.load_settings(GatewaySettings)
    gateway = gateway.model_copy(update={"host": host, "port": port})
    auth = boot.auth_for(host)
    boot.guard_grpc_bind(grpc_host, common, insecure_grpc, "gRPC")
    configure_logging(common.log_level, common.log_format, component="orderflow")
    from orderflow.platform.telemetry import configure_tracing

    configure_tracing("orderflow", common.otlp_endpoint)
    boot.run(
        run_onebox(
            common=common,
            gateway=gateway,
            grpc_port=grpc_port,
            grpc_host=grpc_host,
            data_dir=data_dir,
            demo=demo,
            announce=lambda line: typer.echo(line, err=True),
            auth=auth,
        )
    )


def _known_services(names: list[str] | None) -> list[str] | None:
    for name in names or []:
        if name not in registry.SERVICE_NAMES:
            known = ", ".join(registry.SERVICE_NAMES)
            raise typer.BadParameter(f"{name!r} is not a service; the services are {known}")
    return names


@app.command()
def migrate(
    services: Annotated[
        list[str] | None,
        typer.Argument(
            help=f"services to migrate, of {', '.join(registry.SERVICE_NAMES)} (default: all)",
            callback=_known_services,
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        float, typer.Option(min=0, max=3600, help="seconds to wait for a database to answer")
    ] = 60.0,
) -> None:
    """Apply database migrations of the given services (each to its own database)."""
    from orderflow.platform.db import create_database
    from orderflow.platform.migrations import current_revision, upgrade

    chosen = services or list(registry.SERVICE_NAMES)
    configured = {name: boot.service_settings(name) for name in chosen}

    async def reachable(name: str, database: Any) -> None:
        # A database started alongside (compose, a Job) may not answer yet: wait, with backoff.
        deadline = time.monotonic() + wait
        delay = 0.5
        while True:
            try:
                await database.ping()
                return
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    typer.echo(f"{name}: database not reachable after {wait:g} s: {exc}", err=True)
                    raise typer.Exit(1) from None
                typer.echo(f"{name}: database not reachable yet; retrying in {delay:g} s", err=True)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def main() -> None:
        for name, cfg in configured.items():
            database = create_database(cfg.database_url, pool_size=1)
            try:
                await reachable(name, database)
                await upgrade(database, name)
                typer.echo(f"{name}: at revision {await current_revision(database)}")
            finally:
                await database.dispose()

    boot.run(main())


@app.command()
def token(
    customer: Annotated[
        str | None, typer.Option(help="a customer token for this customer id")
    ] = None,
    admin: Annotated[bool, typer.Option("--admin", help="an admin token")] = False,
    ttl: Annotated[
        int, typer.Option(min=60, help="seconds valid (at most the maximum token lifetime)")
    ] = 3600,
) -> None:
    """Print a bearer token signed with the configured key (ORDERFLOW_AUTH_*), for local use."""
    from orderflow.gateway.auth import ADMIN_SCOPE, CUSTOMER_SCOPE, issue_token
    from orderflow.settings import AuthSettings

    if admin == (customer is not None):
        typer.echo("give exactly one of --customer ID and --admin", err=True)
        raise typer.Exit(2)
    auth = boot.load_settings(AuthSettings)
    if auth.jwt_secret is None and auth.jwt_private_key_file is None:
        typer.echo(
            "no signing key: set ORDERFLOW_AUTH_JWT_SECRET (HS256) or "
            "ORDERFLOW_AUTH_JWT_PRIVATE_KEY_FILE (RS256)",
            err=True,
        )
        raise typer.Exit(2)
    if customer is not None and not 1 <= len(customer) <= 64:
        typer.echo("--customer must be 1..64 characters", err=True)
        raise typer.Exit(2)
    if ttl > auth.max_token_lifetime_seconds:
        typer.echo(
            f"--ttl {ttl} is longer than the maximum token lifetime of "
            f"{auth.max_token_lifetime_seconds} s (ORDERFLOW_AUTH_MAX_TOKEN_LIFETIME_SECONDS): "
            "the gateway would refuse such a token",
            err=True,
        )
        raise typer.Exit(2)
    private_key = auth.jwt_private_key_file.read_text() if auth.jwt_private_key_file else None
    subject, scopes = ("admin", [ADMIN_SCOPE]) if admin else (str(customer), [CUSTOMER_SCOPE])
    typer.echo(issue_token(auth, subject, scopes, ttl, private_key))


@app.command()
def certs(
    out: Annotated[Path, typer.Option(help="directory for the CA, keys and certificates")] = Path(
        "certs"
    ),
    host: Annotated[
        list[str] | None,
        typer.Option(help="extra DNS name or address every certificate answers to (repeatable)"),
    ] = None,
    days: Annotated[int, typer.Option(min=1, max=3650, help="validity in days")] = 365,
) -> None:
    """Make a local CA and one certificate per component (its name in the SAN) for mutual TLS.

    A service admits only clients named in ORDERFLOW_TLS_ALLOWED_CLIENTS (default: gateway).
    """
    from orderflow.platform.tls import DEFAULT_SERVER_NAMES, GATEWAY_NAME, SERVICE_NAMES, make_certs

    names = [*DEFAULT_SERVER_NAMES, *(host or [])]
    files = make_certs(out, names, days)
    typer.echo(
        f"wrote a CA and a certificate per component to {out}/ (each also valid for "
        f"{', '.join(names)}); keep {files['ca_key']} offline: it signs new certificates"
    )
    for component in (*SERVICE_NAMES, GATEWAY_NAME):
        typer.echo(
            f"{component}: ORDERFLOW_TLS_CA_FILE={files['ca']} "
            f"ORDERFLOW_TLS_CERT_FILE={files[f'{component}_cert']} "
            f"ORDERFLOW_TLS_KEY_FILE={files[f'{component}_key']}"
        )
    typer.echo(f"one process (orderflow run) uses the {GATEWAY_NAME} certificate")


def main() -> None:
    """Entry point of the console script."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)


if __name__ == "__main__":
    main()
