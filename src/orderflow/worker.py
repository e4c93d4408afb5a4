"""One child process of `orderflow run --workers N`: some of the services, on a Unix socket.

Started by the command's supervisor (orderflow.supervisor), never by hand:

    python -m orderflow.worker NAME --services orders,inventory --listen unix:PATH --bus PATH

It builds its services as `orderflow serve` does (each on its own database from
ORDERFLOW_<SERVICE>_DATABASE_URL, once the command says it has migrated them), hosts them
on one gRPC server at --listen, carries their events over the command's bus (--bus,
events.local; or JetStream when ORDERFLOW_NATS_URL is set), serves its metrics on a free
loopback port for the gateway's /metrics, then tells the command it is ready. It stops on
SIGTERM/SIGINT, and when the command's bus goes away (the command is gone). Like
`orderflow serve`, it loads only what serving its services needs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import Any


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m orderflow.worker")
    parser.add_argument("name", help="this worker's name, as the command knows it")
    parser.add_argument("--services", required=True, help="comma-separated service names")
    parser.add_argument("--listen", default="", help="gRPC address, e.g. unix:/run/x.sock")
    parser.add_argument("--bus", default="", help="the command's event bus (a Unix socket)")
    parser.add_argument(
        "--migrate", action="store_true", help="only migrate the services' databases, then exit"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    from orderflow import boot, registry
    from orderflow.settings import CommonSettings

    common = boot.load_settings(CommonSettings)
    if args.migrate:
        # As `orderflow migrate SERVICE...` without the command line toolkit: the command
        # waits for this before its workers build their services.
        from orderflow.platform.logging import configure_logging

        configure_logging(common.log_level, common.log_format, component="migrate")
        configured = {name: boot.service_settings(name) for name in args.services.split(",")}
        boot.run(migrate(configured))
        return
    # Never the rich tracebacks of a terminal: ~5 MB and a tenth of a second per worker.
    sys.modules.setdefault("rich", None)  # type: ignore[arg-type]  # "import rich" fails
    from orderflow.platform.logging import configure_logging

    configure_logging(
        common.log_level,
        common.log_format,
        component=args.name,
        sample_rate=common.log_sample_rate,
    )
    from orderflow.platform.telemetry import configure_tracing

    configure_tracing(args.name, common.otlp_endpoint)
    services = args.services.split(",")
    settings = {name: boot.service_settings(name) for name in services}
    for name in services:
        registry.service(name)  # KeyError for a name that is not a service
    from orderflow.events.settings import EventsSettings

    events = boot.load_settings(EventsSettings)
    boot.run(serve_worker(args.name, settings, common, args.listen, args.bus, events))


async def migrate(configured: dict[str, Any]) -> None:
    """Bring each service's database (by name: its settings) to its newest migration,
    waiting up to 60 s for one that is not up yet; one that cannot be (it does not exist)
    stops with a message naming the setting (StartupError, exit 2)."""
    import structlog

    from orderflow import boot
    from orderflow.platform.db import create_database
    from orderflow.platform.migrations import upgrade, wait_for_database

    log = structlog.get_logger("orderflow.migrate")
    for name, cfg in configured.items():
        await wait_for_database(name, cfg.database_url, boot.env_name(cfg), 60.0, log.warning)
        database = create_database(cfg.database_url, pool_size=1)
        try:
            await upgrade(database, name)
        finally:
            await database.dispose()


async def serve_worker(
    name: str, settings: dict[str, Any], common: Any, listen: str, bus_path: str, events: Any
) -> None:
    """Serve the services of settings (by name) until told to stop, or the command is gone."""
    import structlog

    from orderflow import registry
    from orderflow.events.local import LocalBus
    from orderflow.platform.component import Component, start_events
    from orderflow.platform.grpc_server import create_server
    from orderflow.platform.metrics import serve_metrics

    log = structlog.get_logger("orderflow.worker")
    # The command's bus: the events' transport (unless on JetStream), and in any case how
    # this worker says it is ready and learns that the command is gone.
    command = LocalBus(bus_path, name, events.events_subject_prefix)
    await command.connect()
    bus = None if events.nats_url else command
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    components: list[Component] = []
    running = endpoint = None
    orphaned = False
    try:
        # The command migrates every database in a process of its own meanwhile (so
        # the migration tooling is never in a worker's memory), and says when it is done.
        await first_of(command.go, command.lost, stop)
        if not command.go.is_set():
            return
        for service, cfg in settings.items():
            definition = registry.service(service)
            components.append(await definition.build(cfg, common, migrate=False, bus=bus))
        if listen.startswith("unix:"):  # a socket file left by a worker that died
            with contextlib.suppress(FileNotFoundError):
                os.unlink(listen.removeprefix("unix:"))
        first = next(iter(settings.values()))
        running = await create_server(
            [c.spec for c in components],
            address=listen,
            health_interval=first.health_interval_seconds,
            max_concurrent_rpcs=first.max_concurrent_rpcs,
            reflection=False,  # the command's front serves it for every service
        )
        await start_events(components, running.metrics.registry)
        endpoint = serve_metrics(running.metrics.registry, "127.0.0.1", 0)
        await command.ready({"pid": os.getpid(), "metrics_port": endpoint.port})
        await first_of(command.lost, stop)
        if command.lost.is_set() and not stop.is_set():
            log.warning("worker_orphaned", worker=name, reason="the command is gone")
            orphaned = True
        log.info("worker_stopping", worker=name)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if endpoint is not None:
            endpoint.close()
        if running is not None:
            await running.stop(first.grace_seconds)
        for component in components:  # relays and consumers first, then the databases
            if component.events is not None:
                await component.events.stop()
        await command.close()
        for component in components:
            await component.close()
        if orphaned:  # the command did not live to remove its private directory
            for path in (listen.removeprefix("unix:"), bus_path):
                with contextlib.suppress(OSError):
                    os.unlink(path)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(bus_path))  # once the last worker has gone


async def first_of(*events: asyncio.Event) -> None:
    """Wait until one of events is set."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


if __name__ == "__main__":
    main()
