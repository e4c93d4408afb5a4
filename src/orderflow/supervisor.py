"""`orderflow run --workers N`: the gateway in the command's process, the services in N
child processes, so that one command uses every core (ADR 35).

From outside nothing changes: the same ports (HTTP, the gateway's gRPC API, and all three
services on --grpc-port), the same data directory (each service its own SQLite file,
written by one process), the same banner, one /metrics with every process's metrics, and
the logs of every process on the command's standard error.

Inside, the command's process runs the gateway, which calls each worker over a Unix
socket in a private directory; the services' gRPC port is a front that passes each call
to the worker hosting its service, with health and reflection of its own; the events go
through the command's in-process bus, served to the workers on another Unix socket
(events.local). Each worker is `python -m orderflow.worker` (orderflow.worker).

A worker that dies is started again (after 1 s, doubling to at most 30 s while it keeps
dying within a minute of its start), and the death is logged with its exit status; while
it is down, /readyz names its services and calls to them answer 503. A worker that fails
before it was first ready stops the command. SIGTERM or SIGINT stops the gateway first
(requests in flight finish), then the workers, within their grace, and nothing is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from orderflow.registry import SERVICE_NAMES
from orderflow.settings import StartupError

log = structlog.get_logger("orderflow.run")

# How the services are spread over N workers: the orders service does the most work per
# order (bench/PROFILE.md), so it is the first to get a process of its own.
GROUPS: Mapping[int, tuple[tuple[str, ...], ...]] = {
    1: (("orders", "inventory", "loyalty"),),
    2: (("orders",), ("inventory", "loyalty")),
    3: (("orders",), ("inventory",), ("loyalty",)),
}
MAX_WORKERS = max(GROUPS)
# `--workers auto` on a machine with more than one core.
AUTO_WORKERS = 3
RESTART_FIRST_DELAY = 1.0
RESTART_MAX_DELAY = 30.0
# A worker that stayed up this long starts again at once if it dies.
STABLE_SECONDS = 60.0
STOP_GRACE_SECONDS = 10.0
HANDLED = (signal.SIGTERM, signal.SIGINT)


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def resolve_workers(value: str) -> int:
    """`--workers`: a number of worker processes (0: everything in one process, at most
    MAX_WORKERS), or `auto`: AUTO_WORKERS when there is more than one core, else 0."""
    if value == "auto":
        return AUTO_WORKERS if cores() > 1 else 0
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{value!r} is neither a number nor auto") from None
    if not 0 <= number <= MAX_WORKERS:
        raise ValueError(f"{number} is not between 0 and {MAX_WORKERS}")
    return number


@dataclass
class Worker:
    """One child process and the services it hosts."""

    name: str
    services: tuple[str, ...]
    listen: str  # its gRPC address: unix:PATH
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    metrics_port: int | None = None
    ready: asyncio.Future[None] | None = None
    restarts: int = 0


def workers_for(count: int, run_dir: str) -> list[Worker]:
    return [
        Worker("+".join(group), group, f"unix:{run_dir}/{'-'.join(group)}.sock")
        for group in GROUPS[count]
    ]


class Supervisor:
    """Starts the workers, starts again one that dies, stops them all."""

    def __init__(self, workers: Sequence[Worker], bus_path: str, env: Mapping[str, str]) -> None:
        self.workers = list(workers)
        self.bus_path = bus_path
        self.env = dict(env)
        self.stopping = False
        self._watchers: list[asyncio.Task[None]] = []
        self._making: set[asyncio.Future[asyncio.subprocess.Process]] = set()
        self._children: list[asyncio.subprocess.Process] = []  # every one started

    def by_service(self) -> dict[str, Worker]:
        return {service: w for w in self.workers for service in w.services}

    def reported_ready(self, name: str, info: Mapping[str, Any]) -> None:
        """Called by the broker when a worker says it is ready."""
        for worker in self.workers:
            if worker.name == name:
                port = info.get("metrics_port")
                worker.metrics_port = int(port) if port else None
                if worker.ready is not None and not worker.ready.done():
                    worker.ready.set_result(None)
                log.info("worker_ready", worker=name, pid=info.get("pid"))

    async def _spawn(self, worker: Worker) -> None:
        worker.ready = asyncio.get_running_loop().create_future()
        worker.metrics_port = None
        argv = [sys.executable, "-m", "orderflow.worker", worker.name]
        argv += ["--services", ",".join(worker.services), "--listen", worker.listen]
        argv += ["--bus", self.bus_path]
        # Its own session: a Ctrl-C in the terminal reaches the command, which stops the
        # gateway before the workers; the workers stop when told.
        worker.process = await self.start_process(argv)
        worker.started_at = time.monotonic()

    async def start_process(self, argv: Sequence[str]) -> asyncio.subprocess.Process:
        """Start a child (in a session of its own) that stop() will stop, even if this
        call is cancelled while the child is being made (a signal during start-up)."""
        making = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                *argv, env=self.env, stdin=asyncio.subprocess.DEVNULL, start_new_session=True
            )
        )
        self._making.add(making)
        making.add_done_callback(self._made)
        return await asyncio.shield(making)

    def _made(self, making: asyncio.Future[asyncio.subprocess.Process]) -> None:
        self._making.discard(making)
        if not making.cancelled() and making.exception() is None:
            self._children.append(making.result())

    async def spawn_all(self) -> None:
        for worker in self.workers:
            await self._spawn(worker)

    async def wait_ready(self, within: float) -> None:
        """Wait until each worker is ready; a worker that exits first, or one not ready in
        time, is a start-up failure (the others are stopped). Then watch them."""
        try:
            for worker in self.workers:
                await self._until_ready(worker, within)
        except BaseException:
            await self.stop()
            raise
        self._watchers = [asyncio.create_task(self._watch(w)) for w in self.workers]

    async def _until_ready(self, worker: Worker, within: float) -> None:
        assert worker.process is not None and worker.ready is not None
        exited: asyncio.Future[Any] = asyncio.ensure_future(worker.process.wait())
        done, _ = await asyncio.wait(
            {worker.ready, exited}, timeout=within, return_when=asyncio.FIRST_COMPLETED
        )
        if worker.ready in done:
            exited.cancel()
            return
        exited.cancel()
        if worker.process.returncode == 2:  # it said what is wrong, in a line or two
            raise SystemExit(2)
        if worker.process.returncode is not None:
            raise StartupError(
                f"the {worker.name} worker stopped while starting "
                f"({describe(worker.process.returncode)}); its log is above",
                exit_code=1,
            )
        raise StartupError(f"the {worker.name} worker was not ready within {within:g} s", 1)

    async def _watch(self, worker: Worker) -> None:
        """Start worker again whenever it dies, until the command stops."""
        delay = RESTART_FIRST_DELAY
        while True:
            assert worker.process is not None
            code = await worker.process.wait()
            if self.stopping:
                return
            up = time.monotonic() - worker.started_at
            if up >= STABLE_SECONDS:
                delay = RESTART_FIRST_DELAY
            log.error(
                "worker_died",
                worker=worker.name,
                services=list(worker.services),
                status=describe(code),
                restart_in_seconds=delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX_DELAY)
            if self.stopping:
                return
            worker.restarts += 1
            await self._spawn(worker)
            log.info("worker_restarted", worker=worker.name, pid=worker.process.pid)

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM every worker, SIGKILL what is left after grace; wait for all."""
        self.stopping = True
        for task in self._watchers:
            task.cancel()
        if self._making:  # a child being made as start-up was cancelled: stop it too
            await asyncio.wait(list(self._making))
        running = [p for p in self._children if p.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        if not running:
            return
        _, late = await asyncio.wait(
            [asyncio.ensure_future(p.wait()) for p in running], timeout=grace
        )
        for process in running:
            if process.returncode is None:
                log.warning("worker_killed", pid=process.pid, grace_seconds=grace)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        if late:
            await asyncio.wait(late, timeout=5)


def describe(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# -- the services' gRPC port ---------------------------------------------------------------


_NOT_FORWARDED = ("grpc-", ":")


class _Forward(grpc.GenericRpcHandler):
    """Passes each call for a service's methods, as bytes, to the worker hosting it."""

    def __init__(
        self,
        channels: Mapping[str, grpc.aio.Channel],
        allowed: frozenset[str] | None,
    ) -> None:
        self._channels = channels  # full service name -> channel to its worker
        self._allowed = allowed

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        channel = self._channels.get(method.split("/")[1] if method.count("/") == 2 else "")
        if channel is None:
            return None
        call = channel.unary_unary(method)
        allowed = self._allowed

        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if allowed is not None:
                from orderflow.platform.grpc_identity import refusal

                refused = refusal(context, allowed)
                if refused is not None:
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, refused)
            metadata = [
                (k, v)
                for k, v in context.invocation_metadata() or ()
                if not k.startswith(_NOT_FORWARDED) and k != "user-agent"
            ]
            try:
                reply: bytes = await call(
                    request, timeout=context.time_remaining(), metadata=metadata
                )
            except grpc.aio.AioRpcError as exc:
                context.set_trailing_metadata(tuple(exc.trailing_metadata() or ()))
                await context.abort(exc.code(), exc.details() or "")
            return reply

        return grpc.unary_unary_rpc_method_handler(forward)


@dataclass
class Front:
    server: grpc.aio.Server
    port: int
    monitor: asyncio.Task[None] | None = field(default=None)

    async def stop(self, grace: float) -> None:
        if self.monitor is not None:
            self.monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.monitor
        await self.server.stop(grace)


async def start_front(
    channels: Mapping[str, grpc.aio.Channel],
    host: str,
    port: int,
    credentials: grpc.ServerCredentials | None,
    health_interval: float,
) -> Front:
    """The services' gRPC port: every service's calls passed to its worker, with health
    (each service as its worker reports it, every health_interval) and reflection."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    from orderflow.platform.grpc_identity import allowed_clients
    from orderflow.platform.grpc_server import SERVER_OPTIONS

    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((_Forward(channels, allowed_clients(credentials)),))
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    names = list(channels)
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    address = f"{host}:{port}"
    bound = (
        server.add_insecure_port(address)
        if credentials is None
        else server.add_secure_port(address, credentials)
    )
    if bound == 0:
        raise OSError(f"could not bind gRPC server to {address}")
    stubs = {name: health_pb2_grpc.HealthStub(channel) for name, channel in channels.items()}

    async def check_all() -> None:
        serving = health_pb2.HealthCheckResponse.SERVING
        all_ok = True
        for name, stub in stubs.items():
            try:
                answer = await stub.Check(
                    health_pb2.HealthCheckRequest(service=name), timeout=health_interval
                )
                status = answer.status
            except grpc.aio.AioRpcError:
                status = health_pb2.HealthCheckResponse.NOT_SERVING
            all_ok = all_ok and status == serving
            await checker.set(name, status)
        await checker.set("", serving if all_ok else health_pb2.HealthCheckResponse.NOT_SERVING)

    async def monitor() -> None:
        while True:
            await asyncio.sleep(health_interval)
            await check_all()

    await check_all()
    await server.start()
    return Front(server, bound, asyncio.create_task(monitor()))


# -- one /metrics for every process ---------------------------------------------------------


class MergedMetrics(Collector):
    """The metrics of local registries and of every worker (fetched from its metrics port
    when collected), one family per name. Process metrics (process_*) get a `process` label
    naming whose they are. Fetching blocks for a few milliseconds per worker on loopback."""

    def __init__(self, local: CollectorRegistry, supervisor: Supervisor) -> None:
        self.local = local
        self.supervisor = supervisor

    def _sources(self) -> Iterable[tuple[str, Iterable[Metric]]]:
        from prometheus_client.parser import text_string_to_metric_families

        yield "gateway", self.local.collect()
        for worker in self.supervisor.workers:
            if worker.metrics_port is None:
                continue
            url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    text = response.read().decode()
            except OSError:
                continue  # down or restarting: its metrics come back with it
            yield worker.name, text_string_to_metric_families(text)

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for source, families in self._sources():
            for family in families:
                target = merged.get(family.name)
                if target is None:
                    target = merged[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                for sample in family.samples:
                    if family.name.startswith("process_"):
                        sample = sample._replace(labels={**sample.labels, "process": source})
                    target.samples.append(sample)
        return merged.values()


# -- the command ------------------------------------------------------------------------------


async def run_workers(
    *,
    count: int,
    common: Any,
    gateway: Any,
    grpc_port: int,
    services: dict[str, Any],
    demo: bool,
    auth: Any = None,
    grpc_host: str = "127.0.0.1",
    events: Any,
) -> None:
    """Run the gateway here and the services in `count` workers until SIGTERM/SIGINT.

    The workers and a migrating process start first, so that they load their code while
    this process loads the gateway's; the workers build their services once the
    migrations are done."""
    from orderflow.events.local import LocalBroker

    run_dir = tempfile.mkdtemp(prefix="orderflow-run-")  # private (0700): the sockets
    workers = workers_for(count, run_dir)
    env = dict(os.environ)
    for name in SERVICE_NAMES:
        env[f"ORDERFLOW_{name.upper()}_DATABASE_URL"] = services[name].database_url
    bus = events.create_bus()  # in-process unless ORDERFLOW_NATS_URL
    supervisor = Supervisor(workers, f"{run_dir}/bus.sock", env)
    broker = LocalBroker(
        bus,
        supervisor.bus_path,
        [w.name for w in workers] if not events.nats_url else [],
        supervisor.reported_ready,
    )
    stack = contextlib.AsyncExitStack()
    # Until the gateway serves (uvicorn then handles them), SIGTERM and SIGINT cancel the
    # start-up, and what was started is stopped below.
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    interrupted: list[int] = []

    def interrupt(sig: int) -> None:
        interrupted.append(sig)
        if main is not None:
            main.cancel()

    for sig in HANDLED:
        loop.add_signal_handler(sig, interrupt, sig)
    try:
        await broker.start()
        behind = [name for name in SERVICE_NAMES if not at_head(name, services[name].database_url)]
        migrating = None
        if behind:
            migrate = ("-m", "orderflow.worker", "migrate", "--migrate")
            migrating = await supervisor.start_process(
                [sys.executable, *migrate, "--services", ",".join(behind)]
            )
        await supervisor.spawn_all()
        await _serve_gateway(
            stack,
            supervisor,
            broker,
            migrating,
            bus=bus,
            common=common,
            gateway=gateway,
            grpc_port=grpc_port,
            grpc_host=grpc_host,
            services=services,
            demo=demo,
            auth=auth,
            before_serving=lambda: [loop.remove_signal_handler(s) for s in HANDLED],
            interrupt=lambda sig: loop.call_soon_threadsafe(interrupt, sig),
        )
    except asyncio.CancelledError:
        if not interrupted:
            raise
        log.warning("stopped_while_starting", signal=signal.Signals(interrupted[0]).name)
    finally:
        await stack.aclose()
        await supervisor.stop()
        await broker.close()
        await bus.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def at_head(service: str, url: str) -> bool:
    """Whether the SQLite file at url is at the service's newest migration already (then
    starting needs no migrating process); False for anything else, which is migrated."""
    import importlib
    import sqlite3

    head = importlib.import_module(f"orderflow.{service}.migrations").HEAD
    scheme, _, path = url.partition(":///")
    if not scheme.startswith("sqlite") or not path or path.startswith(":memory:"):
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            found = db.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return False  # no file yet, or no table: migrate
    return found is not None and found[0] == head


async def _serve_gateway(
    stack: contextlib.AsyncExitStack,
    supervisor: Supervisor,
    broker: Any,
    migrating: asyncio.subprocess.Process | None,
    *,
    bus: Any,
    common: Any,
    gateway: Any,
    grpc_port: int,
    grpc_host: str,
    services: dict[str, Any],
    demo: bool,
    auth: Any,
    before_serving: Callable[[], object],
    interrupt: Callable[[int], object],
) -> None:
    """The command's part once its children are starting: the gateway and the front.
    before_serving: called just before uvicorn takes over SIGTERM and SIGINT."""
    from prometheus_client.process_collector import ProcessCollector

    from orderflow.gateway.app import create_app
    from orderflow.gateway.metrics import GatewayMetrics
    from orderflow.gateway.readiness import SERVICE_NAMES as FULL_NAMES
    from orderflow.gateway.readiness import Readiness
    from orderflow.gateway.rpc import Channels
    from orderflow.gateway.server import metrics_endpoint, serve_both
    from orderflow.onebox import announce, load_demo, services_by_name
    from orderflow.platform.grpc_bind import dial_host
    from orderflow.platform.metrics import ServiceMetrics
    from orderflow.platform.tls import channel_credentials, server_credentials

    code = 0 if migrating is None else await migrating.wait()
    if code == 2:  # it said what the user has to fix
        raise SystemExit(2)
    if code != 0:
        raise StartupError(f"migrations failed ({describe(code)}); not serving", exit_code=1)
    broker.go()
    await supervisor.wait_ready(within=120.0)
    channels = Channels()
    stack.push_async_callback(channels.close)
    by_service = supervisor.by_service()
    to_worker = {name: channels.get(by_service[name].listen) for name in SERVICE_NAMES}
    try:
        front = await start_front(
            {FULL_NAMES[name]: ch for name, ch in to_worker.items()},
            grpc_host,
            grpc_port,
            server_credentials(common),
            services["orders"].health_interval_seconds,
        )
    except OSError:
        raise StartupError(f"cannot listen on {grpc_host}:{grpc_port} (--grpc-port)") from None
    stack.push_async_callback(front.stop, 1.0)
    if demo:
        await load_demo(
            f"{dial_host(grpc_host)}:{front.port}", gateway, channel_credentials(common)
        )
    wired = gateway.model_copy(
        update={f"{name}_target": by_service[name].listen for name in SERVICE_NAMES}
    )
    metrics = GatewayMetrics()
    own = ServiceMetrics(process=False)  # the gRPC API's calls
    ProcessCollector(registry=own.registry)
    metrics.registry.register(MergedMetrics(own.registry, supervisor))
    endpoint = metrics_endpoint(gateway, metrics.registry)
    if endpoint is not None:
        stack.callback(endpoint.close)
    app = create_app(
        wired,
        common,
        auth=auth,
        metrics=metrics,
        events=bus,
        services=services_by_name(to_worker, wired),
        readiness=Readiness.over_grpc(to_worker, timeout=1.0),
    )
    shown = f"{grpc_host}:{front.port}"
    serving = False

    def started(api: Any) -> None:
        nonlocal serving
        serving = True
        announce(common, gateway, shown, services, demo, api.port, supervisor.workers)

    def on_signal(signum: int, _frame: Any) -> None:
        # uvicorn handles SIGTERM/SIGINT while it serves, then raises the signal again to
        # this handler: the workers must still be stopped (by the caller), so no exit here.
        if not serving:
            interrupt(signum)

    before_serving()
    previous = {sig: signal.signal(sig, on_signal) for sig in HANDLED}
    try:
        await serve_both(app, gateway, metrics, started, rpc_metrics=own)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
