"""Starting components: settings or a clear exit, migrations, and serving one component.

Whatever a user can get wrong at start-up (a bad setting, a busy port, a database that
does not exist) ends in a line or two naming the setting or port, and exit code 2; ports
are checked before any migration runs.

Kept apart from the CLI library so that `orderflow serve <component>` (dispatched here by
`orderflow.__main__`) loads only what serving needs: every megabyte of a long-running
service process counts, the command-line toolkit is not needed once arguments are read.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from pydantic import ValidationError
from pydantic_settings import SettingsError

from orderflow import registry
from orderflow.settings import StartupError

if TYPE_CHECKING:
    from orderflow.platform.component import Component
    from orderflow.settings import CommonSettings

T = TypeVar("T")


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def stop(code: int, message: str) -> NoReturn:
    say(message)
    raise SystemExit(code)


def load_settings(factory: Callable[[], T]) -> T:
    """Build a settings object, or stop (exit 2) with a message naming the bad variables."""
    config = getattr(factory, "model_config", {})
    prefix = str(config.get("env_prefix", "ORDERFLOW_"))
    try:
        return factory()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "(settings)"
            env = f"{prefix}{where.upper()}" if error["loc"] else prefix.rstrip("_")
            message = error["msg"].removeprefix("Value error, ")  # our validators' own words
            problems.append(f"{env}: {message}")
        if len(problems) == 1:
            stop(2, f"invalid setting {problems[0]}")
        stop(2, "\n".join([f"invalid settings ({len(problems)} problems):", *problems]))
    except SettingsError as exc:  # a value that must be JSON is not
        field = re.search(r'field "(\w+)"', str(exc))
        env = f"{prefix}{field.group(1).upper()}" if field else prefix.rstrip("_")
        cause = f" ({exc.__cause__})" if exc.__cause__ else ""
        stop(2, f"invalid setting {env}: not valid JSON{cause}")


def env_name(settings: Any, field: str = "database_url") -> str:
    """The variable that sets a field of a settings object, e.g. ORDERFLOW_ORDERS_PORT."""
    return f"{type(settings).model_config.get('env_prefix', 'ORDERFLOW_')}{field.upper()}"


def env_names(settings: Any, port_field: str = "port") -> tuple[str, str]:
    """The variables that set a component's port and its host."""
    return env_name(settings, port_field), env_name(settings, "host")


def check_port(host: str, port: int, port_setting: str, host_setting: str) -> None:
    """Stop (exit 2) unless host:port is free to listen on. Run before anything slow
    (migrations), so that a busy port is reported at once and with its setting."""
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror:
        stop(2, f"cannot listen on {host} ({host_setting}): no such host name")
    with socket.socket(family, kind, proto) as probe:
        # As a server binds: a port only in TIME_WAIT is free, one that is listened on is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                stop(
                    2,
                    f"port {port} on {host} is already in use ({port_setting}): "
                    "stop what is using it, or choose another port",
                )
            if exc.errno == errno.EADDRNOTAVAIL:
                stop(
                    2,
                    f"cannot listen on {host}:{port} ({host_setting}): "
                    "that address is not one of this machine's",
                )
            stop(2, f"cannot listen on {host}:{port} ({port_setting}): {exc.strerror}")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run coro to the end; a StartupError from it stops the process with its message."""
    try:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            return asyncio.run(coro)
        return uvloop.run(coro)
    except StartupError as exc:
        stop(exc.exit_code, str(exc))


def service_settings(service: str) -> Any:
    """The settings of a service (by name), from ORDERFLOW_<SERVICE>_*, or exit 2."""
    return load_settings(registry.service(service).settings_cls)


def one_process_settings(data_dir: Path) -> dict[str, Any]:
    """Each service's settings, with its database under data_dir unless its
    ORDERFLOW_<SERVICE>_DATABASE_URL is set; a bad value stops start-up (exit 2)."""
    chosen: dict[str, Any] = {}
    for definition in registry.SERVICES:
        cfg = load_settings(definition.settings_cls)
        if "database_url" not in cfg.model_fields_set:
            url = f"sqlite+aiosqlite:///{(data_dir / f'{definition.name}.db').resolve()}"
            cfg = cfg.model_copy(update={"database_url": url})
        chosen[definition.name] = cfg
    return chosen


async def build_component(
    service: str, settings: Any, common: CommonSettings, *, migrate: bool = True
) -> Component:
    """Build (and by default migrate) the service called service from its settings."""
    return await registry.service(service).build(settings, common, migrate=migrate)


def migrate_in_child(service: str) -> None:
    """Run `orderflow migrate <service>` as a child process: the migration tooling then
    never occupies the serving process's memory."""
    argv = [sys.executable, "-m", "orderflow", "migrate", service]
    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=False)
    if done.stdout.strip():  # what it did ("orders: at revision 0001"), as a log event
        import structlog

        structlog.get_logger("orderflow.migrate").info("migrations", result=done.stdout.strip())
    if done.returncode == 2:  # the child said what the user has to fix
        raise SystemExit(2)
    if done.returncode != 0:
        stop(done.returncode, f"{service}: migrations failed (exit {done.returncode}); not serving")


def auth_for(host: str) -> Any:
    """The gateway's auth settings; without any, only a loopback address is allowed."""
    from orderflow.settings import AuthSettings, is_loopback

    auth = load_settings(AuthSettings)
    if not auth.enabled:
        if not is_loopback(host):
            stop(
                2,
                f"refusing to serve on {host} without authentication: set "
                "ORDERFLOW_AUTH_JWT_SECRET (HS256) or ORDERFLOW_AUTH_JWT_PUBLIC_KEY_FILE "
                "(RS256), or bind to 127.0.0.1",
            )
        import structlog

        structlog.get_logger("orderflow.auth").warning(
            f"authentication is OFF: anyone who can reach {host} acts as an admin "
            "(allowed only on a loopback address; set ORDERFLOW_AUTH_JWT_SECRET to turn it on)"
        )
    return auth


def guard_grpc_bind(host: str, common: Any, insecure: bool, what: str) -> None:
    """Stop (exit 2) before a plaintext gRPC server would listen beyond loopback, unless
    told it may (--insecure-grpc / ORDERFLOW_INSECURE_GRPC); then warn loudly."""
    from orderflow.platform.grpc_bind import ExposedGrpcError, check_grpc_bind

    try:
        warning = check_grpc_bind(
            host, tls=common.tls, insecure=insecure or common.insecure_grpc, what=what
        )
    except ExposedGrpcError as exc:
        stop(2, str(exc))
    if warning:
        say(warning)


def without_rich_when_logging_json(log_format: str) -> None:
    """structlog loads rich, when installed, for pretty tracebacks on a terminal. A served
    component writing JSON logs never uses it, and it would cost ~5 MB in every process."""
    json_logs = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    if json_logs and "structlog" not in sys.modules:
        sys.modules.setdefault("rich", None)  # type: ignore[arg-type]  # "import rich" fails


def serve(component: str, migrate: bool = True, insecure_grpc: bool = False) -> None:
    """Run one component in this process (per-service mode); settings from ORDERFLOW_*.

    insecure_grpc: a service may listen beyond loopback without mutual TLS.
    """
    from orderflow.settings import CommonSettings

    common = load_settings(CommonSettings)
    without_rich_when_logging_json(common.log_format)
    from orderflow.platform.logging import configure_logging

    configure_logging(
        common.log_level,
        common.log_format,
        component=component,
        sample_rate=common.log_sample_rate,
    )
    from orderflow.platform.telemetry import configure_tracing

    configure_tracing(component, common.otlp_endpoint)
    if component == registry.GATEWAY:
        from orderflow.settings import GatewaySettings

        gateway_settings = load_settings(GatewaySettings)
        check_port(gateway_settings.host, gateway_settings.port, *env_names(gateway_settings))
        check_port(
            gateway_settings.host,
            gateway_settings.grpc_port,
            *env_names(gateway_settings, "grpc_port"),
        )
        auth = auth_for(gateway_settings.host)
        from orderflow.gateway.server import serve_gateway

        run(serve_gateway(gateway_settings, common, auth))
        return
    settings = service_settings(component)
    guard_grpc_bind(settings.host, common, insecure_grpc, f"{component} gRPC")
    check_port(settings.host, settings.port, *env_names(settings))
    check_port(settings.host, settings.metrics_port, *env_names(settings, "metrics_port"))
    if migrate:
        # A database that does not exist is said at once, before a child is started.
        from orderflow.platform.migrations import refuse_lasting_problem

        run(refuse_lasting_problem(component, settings.database_url, env_name(settings)))
        migrate_in_child(component)
    from orderflow.events.settings import EventsSettings

    # ORDERFLOW_NATS_URL, ORDERFLOW_EVENTS_*: named at once when wrong (after the database
    # checks, which need none of the events code loaded).
    load_settings(EventsSettings)

    async def main() -> None:
        from orderflow.platform.component import serve_components
        from orderflow.platform.tls import server_credentials

        built = await build_component(component, settings, common, migrate=False)
        await serve_components(
            [built],
            settings.host,
            settings.port,
            grace_seconds=settings.grace_seconds,
            health_interval=settings.health_interval_seconds,
            max_concurrent_rpcs=settings.max_concurrent_rpcs,
            credentials=server_credentials(common),
            metrics_port=settings.metrics_port,
        )

    run(main())


SERVE_HELP = "Run one component in this process (per-service mode); settings from ORDERFLOW_*."


def serve_parser() -> argparse.ArgumentParser:
    """The one parser of `orderflow serve` (the full CLI lists the command and defers here)."""
    parser = argparse.ArgumentParser(prog="orderflow serve", description=SERVE_HELP)
    parser.add_argument(
        "component", choices=registry.COMPONENT_NAMES, help="which component to run"
    )
    parser.add_argument(
        "--migrate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="apply the service's migrations before serving (off when a job does; default: on)",
    )
    parser.add_argument(
        "--insecure-grpc",
        action="store_true",
        help="let a service listen beyond loopback in plaintext, without client certificates "
        "(ORDERFLOW_INSECURE_GRPC); only on a private network",
    )
    return parser


def serve_main(argv: list[str]) -> None:
    """`orderflow serve ...`, without loading the command-line toolkit."""
    args = serve_parser().parse_args(argv)
    serve(args.component, args.migrate, args.insecure_grpc)
