"""Starting components: settings or a clear exit, migrations, and serving one component.

Kept apart from the CLI library so that `orderflow serve <component>` (dispatched here by
`orderflow.__main__`) loads only what serving needs: every megabyte of a long-running
service process counts, the command-line toolkit is not needed once arguments are read.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from pydantic import ValidationError

from orderflow import registry

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
        stop(2, "\n".join(lines))


def run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)


def service_settings(service: str) -> Any:
    """The settings of a service (by name), from ORDERFLOW_<SERVICE>_*, or exit 2."""
    return load_settings(registry.service(service).settings_cls)


async def build_component(
    service: str, settings: Any, common: CommonSettings, *, migrate: bool = True
) -> Component:
    """Build (and by default migrate) the service called service from its settings."""
    return await registry.service(service).build(settings, common, migrate=migrate)


def migrate_in_child(service: str) -> None:
    """Run `orderflow migrate <service>` as a child process: the migration tooling then
    never occupies the serving process's memory."""
    done = subprocess.run([sys.executable, "-m", "orderflow", "migrate", service], check=False)
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
        say(
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

    configure_logging(common.log_level, common.log_format, component=component)
    from orderflow.platform.telemetry import configure_tracing

    configure_tracing(component, common.otlp_endpoint)
    if component == registry.GATEWAY:
        from orderflow.gateway.server import serve_gateway
        from orderflow.settings import GatewaySettings

        gateway_settings = load_settings(GatewaySettings)
        auth = auth_for(gateway_settings.host)
        run(serve_gateway(gateway_settings, common, auth))
        return
    settings = service_settings(component)
    guard_grpc_bind(settings.host, common, insecure_grpc, f"{component} gRPC")
    if migrate:
        migrate_in_child(component)

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
