"""Benchmark POST /api/v1/orders against two floors, in the same run, on this machine; and
PlaceOrder over the gateway's gRPC API beside it (bench/grpc_load.py).

For each mode it starts orderflow as real processes, loads a catalog that never runs
out, drives orders with wrk at fixed concurrencies for a fixed time, samples the
resident memory of every process, then does the same against each floor (FLOORS,
bench/floor.py: floor-7 and floor-4, sequential gRPC calls each doing one small write,
same storage). orderflow is reported as a ratio of each floor, so the figure holds on a
noisy machine. Per level it also counts the CPU of every process, and of the PostgreSQL
and NATS servers under the run, with their work (commits, rows, WAL, messages) per order:
what docs/capacity.md plans from.

    python -m bench.run                                   # every mode, c = 1, 8, 64, 10 s each
    python -m bench.run --modes per-service-sqlite --duration 5 --record bench/RESULTS.md

The per-service modes carry their events over NATS JetStream (--nats-url, default
nats://127.0.0.1:4222; a stream of the run's own, deleted after it). After each level the
run waits until every order confirmed in it is settled (its order.settled event is in
the orders outbox) and every outbox row is published, then reports the outbox lag (p99
of publish time minus creation time of the rows written during the level) and how long
after the level's last confirmation (its reply follows at once) the last order settled.

A run in which orderflow (or a floor) answered anything but 201, or wrk saw socket
errors, is reported as failed and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import psutil

from tests.system import Process, System, free_port, one_process, per_service

if TYPE_CHECKING:
    from orderflow.platform.db import Database

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "order.lua"
MODES = ("per-service-sqlite", "one-process", "per-service-pg")
# Not in the default run: `orderflow run --workers 0` (everything in one process, the
# one-process mode before `--workers`), to compare with one-process (its default).
EXTRA_MODES = ("one-process-single",)
SKUS = 50
CUSTOMERS = 100


@dataclasses.dataclass(frozen=True)
class Floor:
    """A floor (bench/floor.py): a gateway making `calls` sequential gRPC calls, each one
    small write transaction, cycling over the orders, inventory and loyalty servers."""

    name: str
    calls: int
    what: str


# The calls cycle orders, inventory, loyalty: the first four are the synchronous path's
# (CreateOrder, Reserve, Apply, Confirm), the next three the follow-ups a seven-call
# design makes before replying (commit stock, commit points, settle). Each floor runs on
# databases of its own, after orderflow, in the same run.
FLOORS = (
    Floor("floor-7", 7, "create, reserve, apply, confirm, commit stock, commit points, settle"),
    Floor("floor-4", 4, "create, reserve, apply, confirm: the calls on an order's path"),
)
PG_ADMIN = os.environ.get("ORDERFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

_RESULT = re.compile(r"RESULT (.*)")

Say = Callable[[str], None]


@dataclasses.dataclass
class Measurement:
    system: str
    mode: str
    concurrency: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    peak_rss_mb: dict[str, float]
    # CPU time (user + system, children included) each process spent per answered order:
    # steadier than orders/s on a noisy machine, and it shows where the time goes.
    cpu_ms_per_order: dict[str, float] = dataclasses.field(default_factory=dict)
    # Events (ADR 16): p99 of outbox publish delay, and the last order's settlement after
    # the last confirmation; None where not measured (the floor, or no outbox).
    outbox_lag_p99_ms: float | None = None
    settle_lag_ms: float | None = None
    # The same CPU counted until the level's last order settled, the events' follow-up
    # included; the floors' (nothing follows their reply) is their CPU until the last reply.
    cpu_ms_settled: dict[str, float] = dataclasses.field(default_factory=dict)
    # The shared servers under the run (Servers): their CPU per order ("postgres",
    # "nats-server") and their work per order ("pg_commits", "pg_rows_written", "wal_kb",
    # "nats_messages", "nats_kb"), over the same window as cpu_ms_settled (orderflow) or
    # until the last reply (the floors).
    server_cpu_ms_per_order: dict[str, float] = dataclasses.field(default_factory=dict)
    work_per_order: dict[str, float] = dataclasses.field(default_factory=dict)
    # The orders those three are per: every order confirmed in the window (the outboxes
    # say), or the replies counted where there are no events (the floors). None: an
    # earlier run, whose figures are per reply counted.
    orders_in_window: int | None = None
    # The system idle before the first level (idle_cost), kept on the last level's: CPU ms
    # per second of each process and server, and the servers' counters per second; empty
    # where not measured.
    idle_per_s: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def cpu_ms_total(self) -> float:
        return sum(self.cpu_ms_per_order.values())

    @property
    def cpu_ms_settled_total(self) -> float | None:
        """CPU per order of all its processes until settled; None where not measured."""
        return sum(self.cpu_ms_settled.values()) if self.cpu_ms_settled else None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def failed(self) -> bool:
        return self.errors > 0 or self.requests == 0


def parse_wrk(output: str) -> dict[str, int]:
    """The RESULT line the Lua script prints, as numbers. Raises if wrk printed none."""
    match = _RESULT.search(output)
    if not match:
        raise RuntimeError(f"wrk printed no RESULT line:\n{output[-2000:]}")
    return {k: int(v) for k, v in (pair.split("=") for pair in match.group(1).split())}


def measurement(
    system: str,
    mode: str,
    concurrency: int,
    fields: dict[str, int],
    rss: dict[str, float],
    cpu_seconds: dict[str, float] | None = None,
) -> Measurement:
    errors = sum(fields[k] for k in ("non2xx", "connect", "read", "write", "timeout"))
    return Measurement(
        system=system,
        mode=mode,
        concurrency=concurrency,
        requests=fields["requests"],
        seconds=fields["duration_us"] / 1e6,
        p50_ms=fields["p50_us"] / 1000,
        p99_ms=fields["p99_us"] / 1000,
        errors=errors,
        peak_rss_mb=rss,
        cpu_ms_per_order={
            name: seconds * 1000 / fields["requests"] if fields["requests"] else 0.0
            for name, seconds in (cpu_seconds or {}).items()
        },
    )


def per_family(
    pids: dict[str, int], measure: Callable[[psutil.Process], float]
) -> dict[str, float]:
    """measure() summed over each process and its children; a process that is gone is left
    out."""
    totals = {}
    for name, pid in pids.items():
        try:
            proc = psutil.Process(pid)
            totals[name] = sum(measure(p) for p in [proc, *proc.children(recursive=True)])
        except psutil.Error:
            continue
    return totals


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU time of each process and its children so far."""
    return per_family(pids, lambda p: sum(p.cpu_times()[:2]))


class RssSampler:
    """Samples the resident memory of processes (and their children) until stopped."""

    def __init__(self, pids: dict[str, int], every: float = 0.2) -> None:
        self.pids = pids
        self.every = every
        self.peak: dict[str, float] = dict.fromkeys(pids, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, rss in per_family(self.pids, lambda p: p.memory_info().rss).items():
                self.peak[name] = max(self.peak[name], rss / 2**20)
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def listening_pid(port: int) -> int | None:
    """The process listening on a local TCP port; None when none is, or this user may not
    see which (another user's server, not run as root)."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return None
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return int(conn.pid)
    return None


def server_cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU time of each server and its children, the children it has reaped
    included: PostgreSQL runs a process per connection, and one that ended during a level
    counts too. A server that is gone is left out."""

    def own(proc: psutil.Process) -> float:
        t = proc.cpu_times()
        return float(t.user + t.system + t.children_user + t.children_system)

    totals = {}
    for name, pid in pids.items():
        try:
            proc = psutil.Process(pid)
            total = own(proc)
            for child in proc.children():
                with contextlib.suppress(psutil.Error):
                    total += own(child)
        except psutil.Error:
            continue
        totals[name] = total
    return totals


# A PostgreSQL backend (15) publishes its statistics when it goes idle, but at most once a
# second; what is left then is published after ten seconds idle.
PG_STATS_FLUSH_S = 10.5


@dataclasses.dataclass(frozen=True)
class Servers:
    """The shared servers a system runs on, read before and after each level for capacity
    planning (docs/capacity.md): the CPU of the PostgreSQL and NATS servers (`pids`), the
    commits and rows written in the run's PostgreSQL databases and the WAL written (the
    whole cluster's), and the messages and bytes added to the run's JetStream stream.
    Both servers serve the whole machine: their figures hold on a quiet one."""

    pids: dict[str, int]
    # (label, name) of each database: the counters are given in total and per label
    # ("pg_commits.orders", ...), as each service's database may have a server of its own.
    pg_databases: tuple[tuple[str, str], ...] = ()
    nats: tuple[str, str] | None = None  # (url, stream)

    def cpu(self) -> dict[str, float]:
        return server_cpu_seconds(self.pids)

    def work(self, *, flushed: bool = False) -> dict[str, float]:
        """The counters so far. PostgreSQL's lag by up to a second of each connection's
        work; flushed: wait until it is all published first (PG_STATS_FLUSH_S)."""
        if not self.pg_databases and self.nats is None:
            return {}
        if flushed and self.pg_databases:
            time.sleep(PG_STATS_FLUSH_S)
        return asyncio.run(self._work())

    async def _work(self) -> dict[str, float]:
        found: dict[str, float] = {}
        if self.pg_databases:
            import asyncpg

            labels = {name: label for label, name in self.pg_databases}
            conn = await asyncpg.connect(PG_ADMIN, timeout=5)
            try:
                rows = await conn.fetch(
                    "SELECT datname, xact_commit AS commits, "
                    "tup_inserted + tup_updated + tup_deleted AS written "
                    "FROM pg_stat_database WHERE datname = ANY($1::text[])",
                    list(labels),
                )
                wal = await conn.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
            finally:
                await conn.close()
            for key, column in (("pg_commits", "commits"), ("pg_rows_written", "written")):
                per = {labels[row["datname"]]: float(row[column]) for row in rows}
                found[key] = sum(per.values())
                found |= {f"{key}.{label}": value for label, value in per.items()}
            found["wal_kb"] = float(wal) / 1024
        if self.nats is not None:
            import nats

            url, stream = self.nats
            nc = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
            try:
                info = await nc.jetstream().stream_info(stream)
            finally:
                await nc.close()
            found["nats_messages"] = float(info.state.messages)
            found["nats_kb"] = info.state.bytes / 1024
        return found


def servers_of(mode: str, urls: dict[str, str], events_env: dict[str, str]) -> Servers:
    """The servers under a system in `mode` on databases `urls` with `events_env`."""
    pids: dict[str, int] = {}
    pg_databases: tuple[tuple[str, str], ...] = ()
    if mode.endswith("-pg"):
        pg_databases = tuple((label, url.rsplit("/", 1)[1]) for label, url in urls.items())
        pid = listening_pid(urlsplit(PG_ADMIN).port or 5432)
        if pid is not None:
            pids["postgres"] = pid
    stream = None
    if events_env.get("ORDERFLOW_NATS_URL"):
        url = events_env["ORDERFLOW_NATS_URL"]
        stream = (url, events_env["ORDERFLOW_EVENTS_STREAM"])
        pid = listening_pid(urlsplit(url).port or 4222)
        if pid is not None:
            pids["nats-server"] = pid
    return Servers(pids, pg_databases, stream)


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank q-th percentile (0 < q <= 100) of values (not empty)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100)
    return ordered[int(rank) - 1]


@dataclasses.dataclass(frozen=True)
class OutboxRow:
    service: str
    aggregate_id: str
    event_type: str
    created_us: int
    published_us: int | None


@dataclasses.dataclass(frozen=True)
class EventLags:
    """What the outboxes say about one level: None until it is all published and settled."""

    outbox_lag_p99_ms: float
    settle_lag_ms: float
    events: int
    orders: int  # confirmed during the level
    # Confirmed since the level began, those still in flight when the load stopped
    # included: their work is in the level's window, though the load counted no reply.
    begun: int = 0


def event_lags(rows: list[OutboxRow], since_us: int, until_us: int) -> EventLags | None:
    """From the outbox rows created since `since_us`: the lags of a level that ran until
    `until_us`, or None while an order confirmed in it is not settled or a row is not
    published yet. No order confirmed in the level: None as well (nothing to measure)."""
    recent = [r for r in rows if r.created_us >= since_us]
    confirmed = {
        r.aggregate_id: r.created_us
        for r in recent
        if r.event_type == "order.confirmed" and r.created_us <= until_us
    }
    settled = {r.aggregate_id: r.created_us for r in recent if r.event_type == "order.settled"}
    if not confirmed or any(order not in settled for order in confirmed):
        return None
    if any(r.published_us is None for r in recent):
        return None
    lags = [(r.published_us - r.created_us) / 1000 for r in recent if r.published_us is not None]
    last_settled = max(settled[order] for order in confirmed)
    return EventLags(
        outbox_lag_p99_ms=percentile(lags, 99),
        settle_lag_ms=max(last_settled - max(confirmed.values()), 0) / 1000,
        events=len(recent),
        orders=len(confirmed),
        begun=len({r.aggregate_id for r in recent if r.event_type == "order.confirmed"}),
    )


async def read_outboxes(databases: dict[str, Database], since_us: int) -> list[OutboxRow]:
    """The outbox rows created since `since_us` in each service's database."""
    from sqlalchemy import text

    found = []
    for service, database in databases.items():
        async with database.reading() as conn:
            result = await conn.execute(
                text(
                    "SELECT aggregate_id, event_type, created_us, published_us "
                    "FROM outbox WHERE created_us >= :since"
                ),
                {"since": since_us},
            )
            found += [OutboxRow(service, *row) for row in result.all()]
    return found


def wait_for_events(
    urls: dict[str, str], since_us: int, until_us: int, timeout: float = 120.0
) -> EventLags | None:
    """Poll the outboxes until the level's orders are settled and its events published,
    over one connection per database (a new one per poll would show in PostgreSQL's CPU)."""
    from orderflow.platform.db import create_database

    async def wait() -> EventLags | None:
        databases = {service: create_database(url, pool_size=1) for service, url in urls.items()}
        try:
            deadline = time.monotonic() + timeout
            while True:
                rows = await read_outboxes(databases, since_us)
                lags = event_lags(rows, since_us, until_us)
                if lags is not None or time.monotonic() > deadline:
                    return lags
                await asyncio.sleep(0.2)
        finally:
            for database in databases.values():
                await database.dispose()

    return asyncio.run(wait())


def run_wrk(url: str, concurrency: int, seconds: float, skus: int = SKUS) -> dict[str, int]:
    """wrk with bench/order.lua: orders spread over the first `skus` of the catalog."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    env = {**os.environ, "BENCH_SKUS": str(skus), "BENCH_CUSTOMERS": str(CUSTOMERS)}
    out = subprocess.run(
        [
            wrk,
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "5s",
            "-s",
            str(SCRIPT),
            url,
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    return parse_wrk(out.stdout + out.stderr)


def run_grpc_load(target: str, concurrency: int, seconds: float) -> dict[str, int]:
    """PlaceOrder over the gateway's gRPC API (bench/grpc_load.py, a process of its own)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.grpc_load",
            target,
            "--concurrency",
            str(concurrency),
            "--seconds",
            str(seconds),
            "--skus",
            str(SKUS),
            "--customers",
            str(CUSTOMERS),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        cwd=HERE.parent,
    )
    return parse_wrk(out.stdout + out.stderr)


def seed(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for n in range(SKUS):
            response = client.post(
                "/api/v1/items",
                json={"sku": f"BENCH-{n}", "name": f"Bench {n}", "price": 1000, "stock": 10**9},
            )
            if response.status_code not in (201, 409):
                raise RuntimeError(f"seeding failed: {response.status_code} {response.text}")


def wait_http(url: str, timeout: float = 30) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    raise TimeoutError(url)


@contextmanager
def databases(mode: str, workdir: Path, labels: list[str]) -> Iterator[dict[str, str]]:
    if not mode.endswith("-pg"):
        yield {label: f"sqlite+aiosqlite:///{workdir}/{label}.db" for label in labels}
        return
    from tests.conftest import pg_databases_sync

    urls, drop = pg_databases_sync(labels)
    try:
        yield urls
    finally:
        drop()


def orderflow_system(
    mode: str, workdir: Path, urls: dict[str, str], events_env: dict[str, str] | None = None
) -> System:
    # Measured as users run it: at the default log level (a JSON line per call, to a file).
    env = {"ORDERFLOW_LOG_LEVEL": "INFO"}
    if mode.startswith("one-process"):
        system = one_process(workdir, env)
        if mode == "one-process-single":
            system.processes["onebox"].argv += ["--workers", "0"]
        return system
    return per_service(workdir, urls, {**env, **(events_env or {})})


def outbox_urls(mode: str, workdir: Path, urls: dict[str, str]) -> dict[str, str]:
    """Where each service's outbox is: its database (one-process: the run's data dir)."""
    if mode.startswith("one-process"):
        return {
            name: f"sqlite+aiosqlite:///{workdir / 'data' / f'{name}.db'}"
            for name in ("orders", "inventory", "loyalty")
        }
    return urls


@contextmanager
def jetstream(mode: str, nats_url: str) -> Iterator[dict[str, str]]:
    """The settings that put a per-service run on a JetStream stream of its own (deleted
    after it); none for one-process mode (its in-process bus) or without a URL."""
    if mode.startswith("one-process") or not nats_url:
        yield {}
        return
    import uuid

    from orderflow.events import JetStreamBus

    tag = uuid.uuid4().hex[:8]
    bus = JetStreamBus(nats_url, stream=f"BENCH_{tag}", subject_prefix=f"bench{tag}.events")

    async def check() -> None:
        await bus.jetstream()
        await bus.close()

    async def delete() -> None:
        await bus.delete_stream()
        await bus.close()

    asyncio.run(check())  # BrokerUnavailableError: say so before starting anything
    try:
        yield {
            "ORDERFLOW_NATS_URL": nats_url,
            "ORDERFLOW_EVENTS_STREAM": bus.stream,
            "ORDERFLOW_EVENTS_SUBJECT_PREFIX": bus.subject_prefix,
        }
    finally:
        asyncio.run(delete())


def floor_system(mode: str, workdir: Path, urls: dict[str, str], floor: Floor) -> System:
    base = [sys.executable, "-m", "bench.floor"]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    http = free_port()
    system = System(f"{floor.name}-{mode}", f"http://127.0.0.1:{http}")
    logs = workdir
    if mode.startswith("one-process"):
        argv = [*base, "onebox", "--port", str(http), "--grpc-port", str(free_port())]
        for label in ("orders", "inventory", "loyalty"):
            argv += ["--database-url", urls[label]]
        argv += ["--calls", str(floor.calls)]
        system.processes["onebox"] = Process("onebox", argv, env, http, logs / "onebox.log")
        return system
    targets = []
    for label in ("orders", "inventory", "loyalty"):
        port = free_port()
        argv = [*base, "service", "--port", str(port), "--database-url", urls[label]]
        system.processes[label] = Process(label, argv, env, port, logs / f"{label}.log")
        targets.append(f"127.0.0.1:{port}")
    argv = [*base, "gateway", "--port", str(http), "--targets", ",".join(targets)]
    argv += ["--calls", str(floor.calls)]
    system.processes["gateway"] = Process("gateway", argv, env, http, logs / "gateway.log")
    return system


def bench_floor(
    mode: str, floor: Floor, workdir: Path, levels: list[int], seconds: float, say: Say
) -> list[Measurement]:
    """One floor at every level, on fresh databases of its own."""
    workdir.mkdir()
    with databases(mode, workdir, ["orders", "inventory", "loyalty"]) as urls:
        system = floor_system(mode, workdir, urls, floor)
        system.start()
        try:
            wait_http(f"{system.base_url}/healthz")
            return drive(
                system, floor.name, mode, levels, seconds, say, servers=servers_of(mode, urls, {})
            )
        finally:
            system.stop()


def drive(
    system: System,
    name: str,
    mode: str,
    levels: list[int],
    seconds: float,
    say: Callable[[str], None],
    outboxes: dict[str, str] | None = None,
    grpc: bool = False,
    servers: Servers | None = None,
) -> list[Measurement]:
    """Drive POST /api/v1/orders with wrk; grpc: PlaceOrder on the gRPC API instead.
    With outboxes, each level also waits for its orders to be settled by their events."""
    url = f"{system.base_url}/api/v1/orders"
    servers = servers or Servers({})

    def load(concurrency: int, seconds: float) -> dict[str, int]:
        if grpc:
            return run_grpc_load(system.grpc_target, concurrency, seconds)
        return run_wrk(url, concurrency, seconds)

    say(f"  {name}: warming up")
    since_us = time.time_ns() // 1000
    load(8, 2)
    if outboxes:  # the warm-up's follow-up done before the first level counts anything
        wait_for_events(outboxes, since_us, time.time_ns() // 1000)
    results = []
    pids = {n: p.popen.pid for n, p in system.processes.items() if p.popen}
    work_before = servers.work(flushed=True)
    idle: dict[str, float] = {}
    if outboxes and servers.pids:
        # Idle, the relays and consumers poll on: what that costs a second, so that the
        # waits for PostgreSQL's statistics below can be taken off each level's counters.
        idle, work_before = idle_cost(pids, servers)
    for concurrency in levels:
        say(f"  {name}: {concurrency} concurrent clients for {seconds:g}s ...")
        before, servers_before = cpu_seconds(pids), servers.cpu()
        since_us = time.time_ns() // 1000
        with RssSampler(pids) as sampler:
            fields = load(concurrency, seconds)
        until_us = time.time_ns() // 1000
        # CPU until the last reply: the events' follow-up after it is not in orders/s.
        after = cpu_seconds(pids)
        m = measurement(name, mode, concurrency, fields, sampler.peak, _minus(after, before))
        say(
            f"    {m.rps:8.1f} orders/s  p50 {m.p50_ms:6.1f} ms  p99 {m.p99_ms:6.1f} ms"
            f"  errors {m.errors}  CPU {m.cpu_ms_total:.2f} ms/order"
        )
        # The work until settled is over every order confirmed in the window, the ones
        # in flight when the load stopped too (wrk counts none of those; at 64 clients
        # they are a few percent of a level).
        orders = m.requests
        if outboxes:
            lags = wait_for_events(outboxes, since_us, until_us)
            after = cpu_seconds(pids)  # now with the follow-up
            orders = lags.begun if lags is not None else orders
            if lags is None:
                say("    events: orders not all settled (or events unpublished) after 120 s")
                m.errors += 1
            else:
                m.outbox_lag_p99_ms, m.settle_lag_ms = lags.outbox_lag_p99_ms, lags.settle_lag_ms
                say(
                    f"    events: {lags.events} for {lags.orders} orders; outbox lag p99 "
                    f"{lags.outbox_lag_p99_ms:.1f} ms; last settled "
                    f"{lags.settle_lag_ms:.0f} ms after the last reply"
                )
        servers_after = servers.cpu()
        # Every level's PostgreSQL statistics waited for (Servers.work), and the idle
        # polling meanwhile taken off, so each level counts its own work only.
        settled = time.monotonic()
        work_after = servers.work(flushed=True)
        waited = time.monotonic() - settled
        counted = {k: v - idle.get(k, 0.0) * waited for k, v in work_after.items()}
        m.orders_in_window = orders
        m.cpu_ms_settled = per_order(_minus(after, before), orders)
        m.server_cpu_ms_per_order = per_order(_minus(servers_after, servers_before), orders)
        m.work_per_order = per_order(_minus(counted, work_before), orders, 1.0)
        work_before = work_after
        if m.server_cpu_ms_per_order or m.work_per_order:
            say(f"    per order, follow-up included: {_work_line(m)}")
        results.append(m)
    if results:
        results[-1].idle_per_s = idle
    return results


def idle_cost(pids: dict[str, int], servers: Servers) -> tuple[dict[str, float], dict[str, float]]:
    """A system left idle for PG_STATS_FLUSH_S, its statistics waited for beforehand: per
    second, the CPU ms of each process and server and the servers' counters; and the
    counters at the end."""
    start = servers.work()
    started = time.monotonic()
    cpu, server_cpu = cpu_seconds(pids), servers.cpu()
    time.sleep(0 if servers.pg_databases else PG_STATS_FLUSH_S)
    work = servers.work(flushed=True)  # on PostgreSQL, its wait is the idle time
    elapsed = time.monotonic() - started
    used = {**_minus(cpu_seconds(pids), cpu), **_minus(servers.cpu(), server_cpu)}
    rates = {n: v * 1000 / elapsed for n, v in used.items()}
    return rates | {k: v / elapsed for k, v in _minus(work, start).items()}, work


def _minus(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {n: after[n] - before[n] for n in before if n in after}


def per_order(totals: dict[str, float], orders: int, scale: float = 1000.0) -> dict[str, float]:
    """Each total over the orders (seconds to ms with the default scale); {} for none."""
    return {n: v * scale / orders for n, v in totals.items()} if orders else {}


def _work_line(m: Measurement) -> str:
    cpu = ", ".join(f"{n} CPU {ms:.2f} ms" for n, ms in m.server_cpu_ms_per_order.items())
    work = ", ".join(f"{WORK[n][0]} {v:.1f}" for n, v in m.work_per_order.items() if n in WORK)
    total = m.cpu_ms_settled_total
    ours = f"all its processes {total:.2f} ms CPU" if total is not None else ""
    return "; ".join(part for part in (ours, cpu, work) if part)


def idle_rss(system: System) -> dict[str, float]:
    """Each process's resident memory at rest; a worker of `orderflow run` (a child
    process) as `onebox/<its name>`."""
    time.sleep(1.0)
    found = {}
    for name, process in system.processes.items():
        if not process.popen:
            continue
        parent = psutil.Process(process.popen.pid)
        found[name] = parent.memory_info().rss / 2**20
        for child in parent.children():
            args = child.cmdline()
            if "orderflow.worker" in args:
                found[f"{name}/{args[args.index('orderflow.worker') + 1]}"] = (
                    child.memory_info().rss / 2**20
                )
    return found


def bench_mode(
    mode: str,
    levels: list[int],
    seconds: float,
    say: Say,
    nats_url: str = "",
    floors: tuple[Floor, ...] = FLOORS,
) -> dict:
    """orderflow in `mode` over REST and gRPC, then each floor, at every level."""
    say(f"[{mode}]")
    started_mode = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="orderflow-bench-") as tmp:
        workdir = Path(tmp)
        with (
            databases(mode, workdir, ["orders", "inventory", "loyalty"]) as urls,
            jetstream(mode, nats_url) as events_env,
        ):
            if events_env:
                say(f"  events over JetStream: {nats_url}, {events_env['ORDERFLOW_EVENTS_STREAM']}")
            system = orderflow_system(mode, workdir, urls, events_env)
            started = time.monotonic()
            system.start()
            try:
                system.wait_ready(60)
                ready_s = time.monotonic() - started
                idle = idle_rss(system)
                seed(system.base_url)
                outboxes = outbox_urls(mode, workdir, urls)
                servers = servers_of(mode, urls, events_env)
                ours = drive(
                    system, "orderflow", mode, levels, seconds, say, outboxes, False, servers
                )
                # The same orders through the gateway's gRPC API, same system, same run.
                # (the servers measured over REST only: the same work behind the gateway)
                over_grpc = drive(
                    system, "orderflow gRPC", mode, levels, seconds, say, outboxes, True
                )
            finally:
                system.stop()
        measured = {
            floor.name: bench_floor(mode, floor, workdir / floor.name, levels, seconds, say)
            for floor in floors
        }
    say(f"[{mode}] done in {time.monotonic() - started_mode:.0f} s")
    return {
        "mode": mode,
        "events": "JetStream" if nats_url and not mode.startswith("one-process") else "in-process",
        "ready_s": ready_s,
        "idle_rss_mb": idle,
        "orderflow": ours,
        "grpc": over_grpc,
        "floors": measured,
    }


def current_commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()


def report(runs: list[dict], seconds: float) -> str:
    commit = runs[0].get("commit") if runs else None
    commit = commit or current_commit()
    floors = {floor.name: floor for floor in FLOORS}
    named = [floors[n] for n in dict.fromkeys(n for run in runs for n in run["floors"])]
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {platform.machine()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}; "
        f"commit {commit or 'unknown'}; {time.strftime('%Y-%m-%d', time.gmtime())}.",
        "",
        f"Each level runs {seconds:g} s of `POST /api/v1/orders` (1 unit of one of {SKUS} skus, "
        f"{CUSTOMERS} customers) with wrk (1 thread), orderflow at its default log level "
        "(INFO, JSON lines to a file). The floors, in the same run on databases of their "
        "own, make sequential gRPC calls, each one small write transaction, over persistent "
        "channels (bench/floor.py): "
        + "; ".join(f"{f.name} {f.calls} ({f.what})" for f in named)
        + ". *of floor-N* is orderflow's orders/s over that floor's at the same level, "
        "*p99 x floor-4* orderflow's p99 over floor-4's.",
        "",
        "Events: the per-service modes carry them over NATS JetStream, one-process mode over "
        "its in-process bus. After each level the run waits until every order confirmed in "
        "it is settled by its events; *outbox lag p99* is the 99th percentile of publish time "
        "minus creation time of the outbox rows written meanwhile, *settled after last reply* "
        "the time from the level's last confirmation (its reply follows at once) to the "
        "last order.settled event. CPU per order *to reply* counts until the last reply, "
        "*settled* until the last order settled (the events' follow-up included); a floor "
        "has nothing after its reply.",
        "",
        "Per order by process: CPU (user + system) of each process, and of the shared "
        "servers — PostgreSQL (the postmaster and every backend, ended ones included) and "
        "the NATS server — with PostgreSQL's commits and rows written in the run's "
        "databases, the WAL written (whole cluster) and the messages and bytes added to the "
        "run's JetStream stream. The servers serve the whole machine: these hold on a quiet "
        "one. docs/capacity.md plans capacity from them.",
        "",
        "Reproduce: `make bench` (or `python -m bench.run --record bench/RESULTS.md "
        "--json bench/results.json`).",
        "",
    ]
    for run in runs:
        events = f"; events {run['events']}" if run.get("events") else ""
        lines += [
            f"## {run['mode']}",
            "",
            f"Ready in {run['ready_s']:.2f} s{events}; idle resident memory: "
            + ", ".join(f"{n} {mb:.0f} MB" for n, mb in run["idle_rss_mb"].items())
            + ".",
            "",
            *floor_table(run),
            "",
            *by_process_table(run),
            "",
        ]
        if run.get("grpc"):
            lines += grpc_rows(run)
    lines += targets(runs)
    return "\n".join(lines)


def _row(cells: list[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def floor_table(run: dict) -> list[str]:
    """orderflow against each floor, level by level."""
    names = list(run["floors"])
    header = ["clients", "orderflow orders/s"]
    for name in names:
        header += [f"{name} orders/s", f"of {name}"]
    header += ["p50 ms", "p99 ms"]
    header += [f"{name} p50 / p99 ms" for name in names]
    if "floor-4" in names:
        header.append("p99 x floor-4")
    header += [
        f"errors (ours / {' / '.join(names)})",
        "CPU ms/order ours to reply / settled",
        f"CPU ms/order {' / '.join(names)}",
        "outbox lag p99 ms",
        "settled after last reply ms",
        "peak RSS MB",
    ]
    lines = [_row(header), _row(["---:"] * (len(header) - 1) + ["---"])]
    for i, ours in enumerate(run["orderflow"]):
        theirs = [run["floors"][name][i] for name in names]
        cells: list[object] = [ours.concurrency, f"{ours.rps:.1f}"]
        for floor in theirs:
            cells += [f"{floor.rps:.1f}", f"{share_of_floor(ours, floor):.0%}"]
        cells += [f"{ours.p50_ms:.1f}", f"{ours.p99_ms:.1f}"]
        cells += [f"{floor.p50_ms:.1f} / {floor.p99_ms:.1f}" for floor in theirs]
        if "floor-4" in names:
            cells.append(f"{p99_over(ours, run['floors']['floor-4'][i]):.2f}x")
        cells += [
            " / ".join(str(m.errors) for m in (ours, *theirs)),
            f"{_cpu(ours)} / {_ms(ours.cpu_ms_settled_total, 2)}",
            " / ".join(_cpu(floor) for floor in theirs),
            _ms(ours.outbox_lag_p99_ms),
            _ms(ours.settle_lag_ms),
            ", ".join(f"{n} {mb:.0f}" for n, mb in ours.peak_rss_mb.items()),
        ]
        lines.append(_row(cells))
    return lines


WORK = {
    "pg_commits": ("PG commits", 1),
    "pg_rows_written": ("PG rows written", 1),
    "wal_kb": ("WAL kB", 1),
    "nats_messages": ("NATS msgs", 1),
    "nats_kb": ("NATS kB", 2),
}


def by_process_table(run: dict) -> list[str]:
    """CPU ms and work per order by process and shared server, level by level: orderflow
    to its last reply and to its last order settled, then each floor."""
    systems: list[tuple[str, list[Measurement], bool]] = [
        ("orderflow, to reply", run["orderflow"], False),
        ("orderflow, settled", run["orderflow"], True),
    ]
    systems += [(name, ms, False) for name, ms in run["floors"].items()]
    every = [m for _, ms, _ in systems for m in ms]
    processes = list(dict.fromkeys(n for m in every for n in m.cpu_ms_per_order))
    servers = list(dict.fromkeys(n for m in every for n in m.server_cpu_ms_per_order))
    work = [k for k in WORK if any(k in m.work_per_order for m in every)]
    if not processes:
        return ["(no CPU figures in this run)"]
    header = ["clients", "system", *processes, "all", *(f"{n} CPU" for n in servers)]
    header += [WORK[k][0] for k in work]
    lines = [
        "CPU ms per order by process, and the shared servers' CPU and work per order:",
        "",
        _row(header),
        _row(["---:", "---"] + ["---:"] * (len(header) - 2)),
    ]
    for i, level in enumerate(run["orderflow"]):
        for label, ms, settled in systems:
            m = ms[i]
            cpu = m.cpu_ms_settled if settled else m.cpu_ms_per_order
            if settled and not cpu:
                continue
            cells: list[object] = [level.concurrency, label]
            cells += [_ms(cpu.get(n), 2) for n in processes]
            cells.append(_ms(sum(cpu.values()), 2))
            # The servers' figures run until settled: shown once, on orderflow's settled row.
            shown = label != "orderflow, to reply"
            cells += [_ms(m.server_cpu_ms_per_order.get(n) if shown else None, 2) for n in servers]
            cells += [_ms(m.work_per_order.get(k) if shown else None, WORK[k][1]) for k in work]
            lines.append(_row(cells))
    idle = run["orderflow"][-1].idle_per_s
    if idle:
        cpu = ", ".join(f"{n} {v:.1f}" for n, v in idle.items() if n not in WORK and "." not in n)
        counters = ", ".join(f"{WORK[k][0]} {idle[k]:.1f}" for k in WORK if k in idle)
        lines += [
            "",
            "orderflow idle before the first level, per second: CPU ms "
            + cpu
            + (f"; {counters}" if counters else "")
            + "."
            + (
                " (Each level's counters are read once PostgreSQL has published its "
                "statistics, 10 s after; that much idle work is taken off them.)"
                if "pg_commits" in idle
                else ""
            ),
        ]
    return lines


def grpc_rows(run: dict) -> list[str]:
    """PlaceOrder over the gateway's gRPC API beside POST /api/v1/orders, same run."""
    lines = [
        "PlaceOrder over the gateway's gRPC API (bench/grpc_load.py, Python grpc.aio "
        "clients in a process of their own) beside REST (wrk):",
        "",
        "| clients | gRPC orders/s | REST orders/s | gRPC p50 / p99 ms | REST p50 / p99 ms "
        "| errors (gRPC / REST) | CPU ms/order (gRPC / REST) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rpc, rest in zip(run["grpc"], run["orderflow"], strict=True):
        lines.append(
            f"| {rpc.concurrency} | {rpc.rps:.1f} | {rest.rps:.1f} "
            f"| {rpc.p50_ms:.1f} / {rpc.p99_ms:.1f} | {rest.p50_ms:.1f} / {rest.p99_ms:.1f} "
            f"| {rpc.errors} / {rest.errors} | {_cpu(rpc)} / {_cpu(rest)} |"
        )
    return [*lines, ""]


def share_of_floor(ours: Measurement, floor: Measurement) -> float:
    """orderflow's orders/s as a fraction of the floor's at the same concurrency."""
    return ours.rps / floor.rps if floor.rps else 0.0


def p99_over(ours: Measurement, floor: Measurement) -> float:
    """orderflow's p99 as a multiple of the floor's at the same concurrency."""
    return ours.p99_ms / floor.p99_ms if floor.p99_ms else float("inf")


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _ms(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cpu(m: Measurement) -> str:
    return f"{m.cpu_ms_total:.2f}" if m.cpu_ms_per_order else "-"


# What issue 15 asks of these figures (same run, same machine), checked against each run.
TARGET_OF_FLOOR_7 = 1.0  # per-service SQLite, top level: orders/s over floor-7's
TARGET_OF_FLOOR_4 = 0.6
TARGET_PG_OF_FLOOR_7 = 0.8  # per-service PostgreSQL, top level
TARGET_P99_OF_FLOOR_4 = 1.5  # at P99_LEVEL clients
P99_LEVEL = 8
TARGET_OUTBOX_LAG_MS = 250.0  # every level
TARGET_SETTLE_MS = 2000.0  # every level
TARGET_IDLE_MB = 80.0
TARGET_READY_S = 3.0


def _at(ms: list[Measurement], concurrency: int) -> Measurement | None:
    return next((m for m in ms if m.concurrency == concurrency), None)


def targets(runs: list[dict]) -> list[str]:
    """A section saying, from the figures above, which targets this run met."""
    lines = ["## Targets (issue 15)", ""]
    by_mode = {run["mode"]: run for run in runs}
    main = by_mode.get("per-service-sqlite")
    if main is not None:
        ours = max(main["orderflow"], key=lambda m: m.concurrency)
        floors = {name: ms[main["orderflow"].index(ours)] for name, ms in main["floors"].items()}
        if "floor-7" in floors:
            f7 = floors["floor-7"]
            ratio = share_of_floor(ours, f7)
            lines.append(
                f"- per-service SQLite, {ours.concurrency} clients: {ratio:.2f}x floor-7's "
                f"orders/s ({ours.rps:.1f} against {f7.rps:.1f}; target "
                f"≥ {TARGET_OF_FLOOR_7:.1f}x): {verdict(ratio >= TARGET_OF_FLOOR_7)}."
            )
            settled = ours.cpu_ms_settled_total
            if settled is not None and f7.cpu_ms_per_order:
                lines.append(
                    f"- CPU per order, all orderflow processes until settled: {settled:.2f} ms "
                    f"({ours.cpu_ms_total:.2f} until the reply) against floor-7's "
                    f"{f7.cpu_ms_total:.2f} (target ≤): "
                    f"{verdict(settled <= f7.cpu_ms_total)}."
                )
        if "floor-4" in floors:
            ratio = share_of_floor(ours, floors["floor-4"])
            lines.append(
                f"- per-service SQLite, {ours.concurrency} clients: {ratio:.2f}x floor-4's "
                f"orders/s ({floors['floor-4'].rps:.1f}; target ≥ {TARGET_OF_FLOOR_4:.1f}x): "
                f"{verdict(ratio >= TARGET_OF_FLOOR_4)}."
            )
        if main.get("grpc"):
            rpc = max(main["grpc"], key=lambda m: m.concurrency)
            lines.append(
                f"- over gRPC (PlaceOrder), {rpc.concurrency} clients: {rpc.rps:.1f} orders/s, "
                f"p99 {rpc.p99_ms:.0f} ms, {rpc.errors} errors; over REST "
                f"{ours.rps:.1f} orders/s, p99 {ours.p99_ms:.0f} ms."
            )
    pg = by_mode.get("per-service-pg")
    if pg is not None and "floor-7" in pg["floors"]:
        ours = max(pg["orderflow"], key=lambda m: m.concurrency)
        f7 = pg["floors"]["floor-7"][pg["orderflow"].index(ours)]
        ratio = share_of_floor(ours, f7)
        lines.append(
            f"- per-service PostgreSQL, {ours.concurrency} clients: {ratio:.2f}x floor-7's "
            f"orders/s ({ours.rps:.1f} against {f7.rps:.1f}; target "
            f"≥ {TARGET_PG_OF_FLOOR_7:.1f}x): {verdict(ratio >= TARGET_PG_OF_FLOOR_7)}."
        )
    for run in runs:
        ours = _at(run["orderflow"], P99_LEVEL)
        floor4 = _at(run["floors"].get("floor-4", []), P99_LEVEL)
        if ours is not None and floor4 is not None:
            times = p99_over(ours, floor4)
            lines.append(
                f"- {run['mode']}, {P99_LEVEL} clients: p99 {ours.p99_ms:.0f} ms, {times:.2f}x "
                f"floor-4's {floor4.p99_ms:.0f} ms (target ≤ {TARGET_P99_OF_FLOOR_4:.1f}x): "
                f"{verdict(times <= TARGET_P99_OF_FLOOR_4)}."
            )
    for run in runs:
        lags = [m.outbox_lag_p99_ms for m in run["orderflow"]]
        settles = [m.settle_lag_ms for m in run["orderflow"]]
        if any(v is None for v in lags + settles) or not lags:
            lines.append(f"- {run['mode']}: events not measured at every level: NOT met.")
            continue
        worst_lag, worst_settle = max(lags), max(settles)
        ok = worst_lag < TARGET_OUTBOX_LAG_MS and worst_settle <= TARGET_SETTLE_MS
        lines.append(
            f"- {run['mode']}: outbox lag p99 at most {worst_lag:.0f} ms (target under "
            f"{TARGET_OUTBOX_LAG_MS:.0f} ms at every level), last order settled at most "
            f"{worst_settle / 1000:.2f} s after the last reply (target "
            f"{TARGET_SETTLE_MS / 1000:.0f} s): {verdict(ok)}."
        )
    errors = sum(m.errors for run in runs for m in (*run["orderflow"], *run.get("grpc", [])))
    lines.append(f"- errors (orderflow, every mode and level): {errors}: {verdict(errors == 0)}.")
    if main is not None:
        services = {n: mb for n, mb in main["idle_rss_mb"].items() if n != "gateway"}
        worst = max(services.values()) if services else 0.0
        lines.append(
            f"- idle memory per service process: at most {worst:.0f} MB "
            f"(target under {TARGET_IDLE_MB:.0f} MB): {verdict(worst < TARGET_IDLE_MB)}."
        )
    onebox = by_mode.get("one-process")
    if onebox is not None:
        ok = onebox["ready_s"] < TARGET_READY_S
        lines.append(
            f"- one-process mode ready in {onebox['ready_s']:.2f} s "
            f"(target {TARGET_READY_S:.0f} s): {verdict(ok)}."
        )
    lines.append("")
    return lines


def publish(runs: list[dict], seconds: float, record: Path | None) -> None:
    """Print the report, and write it to record if given."""
    text = report(runs, seconds)
    print(text)
    if record:
        record.write_text(text + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument(
        "--nats-url",
        default=os.environ.get("ORDERFLOW_NATS_URL", "nats://127.0.0.1:4222"),
        help="JetStream of the per-service modes ('' : none)",
    )
    parser.add_argument("--record", type=Path, help="write the results (Markdown) here")
    parser.add_argument("--json", type=Path, help="also write raw results as JSON")
    parser.add_argument(
        "--from-json", type=Path, help="only rewrite the report from an earlier run's JSON"
    )
    args = parser.parse_args(argv)
    if args.from_json:
        runs = runs_from_json(json.loads(args.from_json.read_text()))
        seconds = runs[0]["orderflow"][0].seconds if runs else args.duration
        publish(runs, round(seconds), args.record)
        return 0
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES) - set(EXTRA_MODES)
    if unknown:
        known = ", ".join((*MODES, *EXTRA_MODES))
        parser.error(f"unknown modes {sorted(unknown)}; choose from {known}")
    levels = [int(c) for c in args.concurrency.split(",")]
    say = lambda line: print(line, flush=True)  # noqa: E731
    commit = current_commit()
    started = time.monotonic()
    runs = []
    for i, mode in enumerate(modes, 1):
        say(f"mode {i} of {len(modes)} ({time.monotonic() - started:.0f} s so far)")
        runs.append(
            {**bench_mode(mode, levels, args.duration, say, args.nats_url), "commit": commit}
        )
    publish(runs, args.duration, args.record)
    if args.json:
        args.json.write_text(json.dumps(runs_to_json(runs), indent=2))
    # A floor with errors makes its ratio meaningless, so it fails the run as well.
    failed = [m for r in runs for m in measurements(r) if m.failed]
    for m in failed:
        print(
            f"FAILED: {m.system} {m.mode} c={m.concurrency}: {m.errors} errors of {m.requests}",
            file=sys.stderr,
        )
    return 1 if failed else 0


def measurements(run: dict) -> list[Measurement]:
    """Every measurement of a mode's run: orderflow over REST and gRPC, and each floor."""
    return [
        *run["orderflow"],
        *run.get("grpc", []),
        *(m for ms in run["floors"].values() for m in ms),
    ]


def runs_to_json(runs: list[dict]) -> list[dict]:
    return [
        {
            **r,
            "orderflow": [dataclasses.asdict(m) for m in r["orderflow"]],
            "grpc": [dataclasses.asdict(m) for m in r.get("grpc", [])],
            "floors": {n: [dataclasses.asdict(m) for m in ms] for n, ms in r["floors"].items()},
        }
        for r in runs
    ]


def runs_from_json(raw: list[dict]) -> list[dict]:
    """Runs as runs_to_json wrote them; an earlier run's single "floor" is floor-7."""
    runs = []
    for r in raw:
        floors = r.get("floors") or {"floor-7": r["floor"]}
        runs.append(
            {
                **{k: v for k, v in r.items() if k != "floor"},
                "orderflow": [Measurement(**m) for m in r["orderflow"]],
                "grpc": [Measurement(**m) for m in r.get("grpc", [])],
                "floors": {n: [Measurement(**m) for m in ms] for n, ms in floors.items()},
            }
        )
    return runs


if __name__ == "__main__":
    raise SystemExit(main())
