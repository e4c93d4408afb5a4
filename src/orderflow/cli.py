"""The `orderflow` command: run everything in one process, serve one component, migrate, ..."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from orderflow import boot, registry
from orderflow.events_cli import events_app

app = typer.Typer(
    help="orderflow: an order-placement backend of gRPC services behind a REST gateway.",
    no_args_is_help=True,
    add_completion=False,
    # Plain help: no type tags, words wrapped whole at any width, and readable in a pipe.
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
app.add_typer(events_app, name="events")

T = TypeVar("T")


class _PlainArguments(typer.core.TyperCommand):
    """Help that shows each argument by its name and help, without a type tag (`<path>`)."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        params = self.get_params(ctx)
        arguments = [
            (p.metavar or p.name, getattr(p, "help", None) or "")
            for p in params
            if p.param_type_name == "argument" and not getattr(p, "hidden", False)
        ]
        options = [
            record
            for p in params
            if p.param_type_name == "option" and (record := p.get_help_record(ctx))
        ]
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        if options:
            with formatter.section("Options"):
                formatter.write_dl(options)


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
    host: Annotated[
        str,
        typer.Option(metavar="HOST", help="address of the gateway (HTTP)"),
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(metavar="PORT", min=0, max=65535, help="HTTP port of the gateway"),
    ] = 8080,
    grpc_port: Annotated[
        int, typer.Option(metavar="PORT", min=0, max=65535, help="gRPC port of the three services")
    ] = 50051,
    grpc_api_port: Annotated[
        int,
        typer.Option(
            metavar="PORT",
            min=0,
            max=65535,
            help="port of the gateway's public gRPC API (on --host)",
        ),
    ] = 8081,
    data_dir: Annotated[
        Path,
        typer.Option(
            metavar="DIR",
            help="where the SQLite files go (one per service), unless a service's "
            "ORDERFLOW_<SERVICE>_DATABASE_URL is set",
        ),
    ] = Path("data"),
    demo: Annotated[bool, typer.Option(help="load a demo catalog and loyalty accounts")] = False,
    grpc_host: Annotated[
        str,
        typer.Option(
            metavar="HOST", help="address of the gRPC server (beyond loopback: mTLS or the flag)"
        ),
    ] = "127.0.0.1",
    insecure_grpc: Annotated[
        bool, typer.Option("--insecure-grpc", help=INSECURE_GRPC_HELP)
    ] = False,
    workers: Annotated[
        str,
        typer.Option(
            metavar="N",
            help="processes for the services beside the gateway's: 0 runs everything in "
            "this one process; 1 to 3 spread the three services over that many, so that "
            "orders use every core; auto: 3 on a machine of more than one core, else 0",
        ),
    ] = "auto",
) -> None:
    """Run everything with one command: three gRPC services on one port, the gateway on HTTP."""
    from orderflow.events.settings import EventsSettings
    from orderflow.platform.logging import configure_logging
    from orderflow.settings import CommonSettings, GatewaySettings

    # Everything a user can get wrong is checked before the heavy imports and migrations.
    common = boot.load_settings(CommonSettings)
    gateway = boot.load_settings(GatewaySettings)
    events = boot.load_settings(EventsSettings)  # ORDERFLOW_NATS_URL, ORDERFLOW_EVENTS_*
    gateway = gateway.model_copy(update={"host": host, "port": port, "grpc_port": grpc_api_port})
    services = boot.one_process_settings(data_dir)
    boot.guard_grpc_bind(grpc_host, common, insecure_grpc, "gRPC")
    boot.check_port(host, port, "--port", "--host")
    boot.check_port(grpc_host, grpc_port, "--grpc-port", "--grpc-host")
    boot.check_port(host, grpc_api_port, "--grpc-api-port", "--host")
    from orderflow.supervisor import resolve_workers

    try:
        count = resolve_workers(workers)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--workers") from None
    configure_logging(
        common.log_level,
        common.log_format,
        component="orderflow",
        sample_rate=common.log_sample_rate,
    )
    auth = boot.auth_for(host)
    from orderflow.platform.telemetry import configure_tracing

    configure_tracing("orderflow", common.otlp_endpoint)
    if count:
        from orderflow.supervisor import run_workers

        boot.run(
            run_workers(
                count=count,
                common=common,
                gateway=gateway,
                grpc_port=grpc_port,
                services=services,
                grpc_host=grpc_host,
                demo=demo,
                auth=auth,
                events=events,
            )
        )
        return
    from orderflow.onebox import run_onebox

    boot.run(
        run_onebox(
            common=common,
            gateway=gateway,
            grpc_port=grpc_port,
            services=services,
            grpc_host=grpc_host,
            demo=demo,
            auth=auth,
            events=events,
        )
    )


def _known_services(names: list[str] | None) -> list[str] | None:
    for name in names or []:
        if name not in registry.SERVICE_NAMES:
            known = ", ".join(registry.SERVICE_NAMES)
            raise typer.BadParameter(f"{name!r} is not a service; the services are {known}")
    return names


@app.command(cls=_PlainArguments)
def migrate(
    services: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="SERVICE",
            help=f"services to migrate, of {', '.join(registry.SERVICE_NAMES)} (default: all)",
            callback=_known_services,
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            min=0,
            max=3600,
            help="seconds to wait for a database that is not up yet",
        ),
    ] = 60.0,
    create_database: Annotated[
        bool,
        typer.Option(
            "--create-database",
            help="first create a PostgreSQL database that does not exist yet "
            "(as the URL's user, who needs the right to create databases)",
        ),
    ] = False,
) -> None:
    """Apply database migrations of the given services (each to its own database)."""
    import structlog

    from orderflow.platform.db import create_database as open_database
    from orderflow.platform.logging import configure_logging
    from orderflow.platform.migrations import (
        create_missing_database,
        current_revision,
        upgrade,
        wait_for_database,
    )
    from orderflow.settings import CommonSettings

    chosen = services or list(registry.SERVICE_NAMES)
    common = boot.load_settings(CommonSettings)
    configured = {name: boot.service_settings(name) for name in chosen}
    configure_logging(common.log_level, common.log_format, component="migrate")
    log = structlog.get_logger("orderflow.migrate")

    async def main() -> None:
        for name, cfg in configured.items():
            setting = f"ORDERFLOW_{name.upper()}_DATABASE_URL"
            if create_database:
                await wait_for_database(
                    name, _maintenance_url(cfg.database_url), setting, wait, log.warning
                )
                if await create_missing_database(cfg.database_url):
                    typer.echo(f"{name}: created the database {cfg.database_url.rsplit('/', 1)[1]}")
            await wait_for_database(name, cfg.database_url, setting, wait, log.warning)
            database = open_database(cfg.database_url, pool_size=1)
            try:
                await upgrade(database, name)
                typer.echo(f"{name}: at revision {await current_revision(database)}")
            finally:
                await database.dispose()

    boot.run(main())


def _maintenance_url(url: str) -> str:
    """The server's `postgres` database, to create another database from (PostgreSQL)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return url
    return parsed.set(database="postgres").render_as_string(hide_password=False)


@app.command(cls=_PlainArguments)
def seed(
    file: Annotated[
        Path | None,
        typer.Argument(
            metavar="FILE",
            help="a JSON file of items and customers (see orderflow.seed)",
        ),
    ] = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="the demo catalog and accounts of `run --demo`")
    ] = False,
    url: Annotated[
        str, typer.Option(metavar="URL", envvar="ORDERFLOW_URL", help="the gateway's address")
    ] = "http://127.0.0.1:8080",
    token: Annotated[
        str | None,
        typer.Option(
            metavar="TOKEN",
            envvar="ORDERFLOW_TOKEN",
            help="an admin bearer token, when the gateway has authentication on "
            "(orderflow token --admin)",
        ),
    ] = None,
    wait: Annotated[
        float,
        typer.Option(
            metavar="SECONDS", min=0, max=3600, help="how long to wait for the gateway to be ready"
        ),
    ] = 30.0,
) -> None:
    """Load items, loyalty tiers and points through the gateway's API; what exists is kept."""
    import httpx

    from orderflow.seed import DEMO, SeedError, client_for, read_seed, wait_until_ready
    from orderflow.seed import seed as load

    if demo == (file is not None):
        typer.echo("give exactly one of --demo and FILE", err=True)
        raise typer.Exit(2)
    try:
        data = DEMO if file is None else read_seed(file)
        with client_for(url, token) as client:
            wait_until_ready(client, wait)
            counts = load(client, data, typer.echo)
    except SeedError as exc:
        typer.echo(f"seed: {exc}", err=True)
        raise typer.Exit(1) from None
    except httpx.HTTPError as exc:
        typer.echo(f"seed: the gateway at {url} stopped answering ({exc})", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"seeded {url}: {counts['created']} created, {counts['kept']} already there")


@app.command()
def token(
    customer: Annotated[
        str | None, typer.Option(metavar="ID", help="a customer token for this customer id")
    ] = None,
    admin: Annotated[bool, typer.Option("--admin", help="an admin token")] = False,
    ttl: Annotated[
        int,
        typer.Option(
            metavar="SECONDS", min=60, help="seconds valid (at most the maximum token lifetime)"
        ),
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
    out: Annotated[
        Path,
        typer.Option(metavar="DIR", help="directory for the CA, keys and certificates"),
    ] = Path("certs"),
    host: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME",
            help="extra DNS name or address every certificate answers to (repeatable)",
        ),
    ] = None,
    days: Annotated[
        int,
        typer.Option(metavar="DAYS", min=1, max=3650, help="validity in days"),
    ] = 365,
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
