"""The `orderflow` command: run everything in one process, serve one component, migrate, ..."""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Callable, Coroutine
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError

app = typer.Typer(
    help="orderflow: an order-placement backend of gRPC services behind a REST gateway.",
    no_args_is_help=True,
    add_completion=False,
)

T = TypeVar("T")


class Service(StrEnum):
    orders = "orders"
    inventory = "inventory"
    loyalty = "loyalty"


class Component(StrEnum):
    orders = "orders"
    inventory = "inventory"
    loyalty = "loyalty"
    gateway = "gateway"


def _settings(factory: Callable[[], T]) -> T:
    """Build a settings object, or stop with a readable message naming the bad variables."""
    try:
        return factory()
    except ValidationError as exc:
        config = getattr(factory, "model_config", {})
        prefix = str(config.get("env_prefix", "ORDERFLOW_"))
        lines = [f"invalid settings ({exc.error_count()} problem(s)):"]
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "(settings)"
            env = f"{prefix}{where.upper()}" if error["loc"] else prefix.rstrip("_")
            lines.append(f"  {env}: {error['msg']}")
        typer.echo("\n".join(lines), err=True)
        raise typer.Exit(2) from None


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)


def _service_settings(service: str) -> Any:
    from orderflow import settings

    cls = {
        "orders": settings.OrdersSettings,
        "inventory": settings.InventorySettings,
        "loyalty": settings.LoyaltySettings,
    }[service]
    return _settings(cls)


async def build_component(
    service: str, service_settings: Any, common: Any, *, migrate: bool = True
) -> Any:
    """Build (and by default migrate) one service from its settings."""
    module = importlib.import_module(f"orderflow.{service}.app")
    return await module.build(service_settings, common, migrate=migrate)


def _migrate_in_child(service: str) -> None:
    """Run `orderflow migrate <service>` as a child process: the migration tooling then
    never occupies the serving process's memory."""
    import subprocess

    done = subprocess.run([sys.executable, "-m", "orderflow.cli", "migrate", service], check=False)
    if done.returncode != 0:
        typer.echo(f"{service}: migrations failed (exit {done.returncode}); not serving", err=True)
        raise typer.Exit(done.returncode)


def _auth_for(host: str) -> Any:
    """The gateway's auth settings; without any, only a loopback address is allowed."""
    from orderflow.settings import AuthSettings, is_loopback

    auth = _settings(AuthSettings)
    if not auth.enabled:
        if not is_loopback(host):
            typer.echo(
                f"refusing to serve on {host} without authentication: set "
                "ORDERFLOW_AUTH_JWT_SECRET (HS256) or ORDERFLOW_AUTH_JWT_PUBLIC_KEY_FILE "
                "(RS256), or bind to 127.0.0.1",
                err=True,
            )
            raise typer.Exit(2)
        typer.echo(
            f"authentication is OFF: anyone who can reach {host} acts as an admin "
            "(allowed only on a loopback address; set ORDERFLOW_AUTH_JWT_SECRET to turn it on)",
            err=True,
        )
    return auth


def _without_rich_when_logging_json(log_format: str) -> None:
    """structlog loads rich, when installed, for pretty tracebacks on a terminal. A served
    component writing JSON logs never uses it, and it would cost ~5 MB in every process."""
    json_logs = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    if json_logs and "structlog" not in sys.modules:
        sys.modules.setdefault("rich", None)  # type: ignore[arg-type]  # "import rich" fails


@app.command()
def serve(
    component: Annotated[Component, typer.Argument(help="which component to run")],
    migrate: Annotated[
        bool,
        typer.Option(help="apply the service's migrations before serving (off when a job does)"),
    ] = True,
) -> None:
    """Run one component in this process (per-service mode); settings from ORDERFLOW_*."""
    from orderflow.settings import CommonSettings

    common = _settings(CommonSettings)
    _without_rich_when_logging_json(common.log_format)
    from orderflow.platform.logging import configure_logging

    configure_logging(common.log_level, common.log_format, component=component.value)
    from orderflow.platform.telemetry import configure_tracing

    configure_tracing(component.value, common.otlp_endpoint)
    if component is Component.gateway:
        from orderflow.gateway.server import serve_gateway
        from orderflow.settings import GatewaySettings

        gateway_settings = _settings(GatewaySettings)
        auth = _auth_for(gateway_settings.host)
        _run(serve_gateway(gateway_settings, common, auth))
        return
    service_settings = _service_settings(component.value)
    if migrate:
        _migrate_in_child(component.value)

    async def main() -> None:
        from orderflow.platform.component import serve_components
        from orderflow.platform.tls import server_credentials

        built = await build_component(component.value, service_settings, common, migrate=False)
        await serve_components(
            [built],
            service_settings.host,
            service_settings.port,
            grace_seconds=service_settings.grace_seconds,
            health_interval=service_settings.health_interval_seconds,
            max_concurrent_rpcs=service_settings.max_concurrent_rpcs,
            credentials=server_credentials(common),
            metrics_port=service_settings.metrics_port,
        )

    _run(main())


@app.command()
def run(
    host: Annotated[str, typer.Option(help="address of the gateway and the gRPC server")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=0, max=65535, help="HTTP port of the gateway")] = 8080,
    grpc_port: Annotated[
        int, typer.Option(min=0, max=65535, help="gRPC port of the three services")
    ] = 50051,
    data_dir: Annotated[
        Path, typer.Option(help="where the SQLite files go (one per service)")
    ] = Path("data"),
    demo: Annotated[bool, typer.Option(help="load a demo catalog and loyalty accounts")] = False,
) -> None:
    """Run everything in one process: three gRPC services on one port, the gateway on HTTP."""
    from orderflow.onebox import run_onebox
    from orderflow.platform.logging import configure_logging
    from orderflow.settings import CommonSettings, GatewaySettings

    common = _settings(CommonSettings)
    gateway = _settings(GatewaySettings)
    gateway = gateway.model_copy(update={"host": host, "port": port})
    auth = _auth_for(host)
    configure_logging(common.log_level, common.log_format, component="orderflow")
    from orderflow.platform.telemetry import configure_tracing

    configure_tracing("orderflow", common.otlp_endpoint)
    _run(
        run_onebox(
            common=common,
            gateway=gateway,
            grpc_port=grpc_port,
            data_dir=data_dir,
            demo=demo,
            announce=lambda line: typer.echo(line, err=True),
            auth=auth,
        )
    )


@app.command()
def migrate(
    services: Annotated[
        list[Service] | None, typer.Argument(help="services to migrate (default: all three)")
    ] = None,
) -> None:
    """Apply database migrations of the given services (each to its own database)."""
    from orderflow.platform.db import create_database
    from orderflow.platform.migrations import current_revision, upgrade

    chosen = [s.value for s in (services or list(Service))]
    configured = {name: _service_settings(name) for name in chosen}

    async def main() -> None:
        for name, cfg in configured.items():
            database = create_database(cfg.database_url, pool_size=1)
            try:
                await upgrade(database, name)
                typer.echo(f"{name}: at revision {await current_revision(database)}")
            finally:
                await database.dispose()

    _run(main())


@app.command()
def token(
    customer: Annotated[
        str | None, typer.Option(help="a customer token for this customer id")
    ] = None,
    admin: Annotated[bool, typer.Option("--admin", help="an admin token")] = False,
    ttl: Annotated[int, typer.Option(min=60, max=30 * 24 * 3600, help="seconds valid")] = 3600,
) -> None:
    """Print a bearer token signed with the configured key (ORDERFLOW_AUTH_*), for local use."""
    from orderflow.gateway.auth import ADMIN_SCOPE, CUSTOMER_SCOPE, issue_token
    from orderflow.settings import AuthSettings

    if admin == (customer is not None):
        typer.echo("give exactly one of --customer ID and --admin", err=True)
        raise typer.Exit(2)
    auth = _settings(AuthSettings)
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
        typer.Option(help="extra DNS name or address of the services (repeatable)"),
    ] = None,
    days: Annotated[int, typer.Option(min=1, max=3650, help="validity in days")] = 365,
) -> None:
    """Make a local CA and certificates for mutual TLS between the gateway and the services."""
    from orderflow.platform.tls import DEFAULT_SERVER_NAMES, make_certs

    names = [*DEFAULT_SERVER_NAMES, *(host or [])]
    files = make_certs(out, names, days)
    typer.echo(f"wrote a CA and certificates to {out}/ (server names: {', '.join(names)})")
    for who, cert, key in (
        ("each service", "server_cert", "server_key"),
        ("the gateway", "gateway_cert", "gateway_key"),
    ):
        typer.echo(
            f"{who}: ORDERFLOW_TLS_CA_FILE={files['ca']} "
            f"ORDERFLOW_TLS_CERT_FILE={files[cert]} ORDERFLOW_TLS_KEY_FILE={files[key]}"
        )


def main() -> None:
    """Entry point of the console script."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        sys.exit(130)


if __name__ == "__main__":
    main()
