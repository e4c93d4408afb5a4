"""Where the CPU of one order goes: each process of a per-service system, by part.

Starts orderflow one process per service (SQLite, or PostgreSQL with --mode per-service-pg;
events over NATS JetStream as `make bench` runs it, default log level INFO), seeds the
bench catalog and drives POST /api/v1/orders with wrk, twice at the same concurrency:

1. measured: the CPU time (user + system) of every process and of each of its threads,
   with nothing else attached: CPU ms per order by process;
2. profiled: py-spy samples every process (native frames included, so that time in
   gRPC's Cython core and in SQLite shows as such) while the same load runs; each
   thread's CPU is split by the parts its samples fall in.

Each part's figure is (1)'s CPU of the process times the part's share of it in (2). The
floor (bench/floor.py: N sequential gRPC calls, one small write each) is measured the same
way in the same run, so figures can be read as ratios to it on a noisy machine.

    python -m bench.profile                          # 64 clients, 10 s, floors of 4 and 7 calls
    python -m bench.profile --clients 8 --seconds 5 --json /tmp/profile.json --stacks /tmp/stacks

A part is the first library met walking a sample's stack from its leaf toward its root
(`PARTS`); the standard library and the interpreter are skipped on the way, so json.dumps
called by structlog counts as logging and uuid4 called by orderflow as orderflow. Samples
whose stack holds the event relay or consumers (or the NATS client) count as `events`
whatever their leaf: the follow-up of an order, off its request path. Threads py-spy
cannot see (gRPC core's own C threads) count by their name.
--stacks keeps each process's collapsed stacks (open them in speedscope, or make a
flame graph of them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from bench.run import (
    databases,
    jetstream,
    orderflow_system,
    run_wrk,
    seed,
    wait_for_events,
    wait_http,
)
from tests.system import Process, System, free_port

LABELS = ["orders", "inventory", "loyalty"]
ROOT = Path(__file__).resolve().parent.parent

# (part, patterns): a frame belongs to the first part one of whose patterns it contains.
# Frames of no part (the standard library, the interpreter, libc) are walked past.
PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("logging", ("/structlog/", "/logging/__init__.py", "/logging/handlers.py")),
    ("metrics", ("/prometheus_client/",)),
    ("tracing", ("/opentelemetry/",)),
    ("validation", ("/pydantic/", "/pydantic_core/", "pydantic_core.", "/annotated_types/")),
    (
        "http",
        (
            "/uvicorn/",
            "/starlette/",
            "/fastapi/",
            "/httptools/",
            "httptools.",
            "/h11/",
            "/anyio/",
            "/orderflow/gateway/http_limits.py",  # uvicorn's protocol, with limits
        ),
    ),
    ("protobuf", ("/google/protobuf/", "/google/_upb/", "_pb2.py")),
    ("grpc", ("/grpc/", "/grpc_status/", "/grpc_health/", "/grpc_reflection/", "_pb2_grpc.py")),
    (
        "sql",
        (
            "/sqlalchemy/",
            "/sqlite3/",
            "_sqlite3",
            "libsqlite",
            "/aiosqlite/",
            "asyncpg",
            "/orderflow/platform/inline_sql.py",  # statements run on sqlite3 (ADR 33)
        ),
    ),
    ("floor", ("/bench/floor.py",)),
    # Below what runs on the loop, only its root frames (boot.run) are orderflow's own.
    ("event loop", ("uvloop", "/asyncio/", "libuv", "_asynciomodule")),
    ("orderflow", ("/orderflow/",)),
]
# Frames that put a whole sample in `events`: the relay, the consumers, the NATS client.
EVENTS = ("/orderflow/events/relay.py", "/orderflow/events/consumer.py", "/nats/")
# Columns of the report, in order.
ORDER = [
    "http",
    "validation",
    "grpc",
    "protobuf",
    "sql",
    "orderflow",
    "logging",
    "metrics",
    "tracing",
    "event loop",
    "floor",
    "other",
    "events",
]

_THREAD = re.compile(r"^thread \((0x[0-9a-fA-F]+|\d+)\)")


# Leaf functions of a thread that waits (py-spy, pausing the process for native stacks,
# cannot tell by the thread's state): its sample is no CPU.
WAITING = ("epoll_wait", "epoll_pwait", "poll ", "ppoll", "select", "nanosleep", "fdatasync")
# Threads other than the event loop's, by their name: what their CPU is spent on.
THREADS = [
    ("_poll", "grpc"),  # grpc.aio's poller thread
    ("event_engine", "grpc"),  # gRPC core's own C threads: its I/O and timers
    ("grpc", "grpc"),
    ("lifeguard", "grpc"),
    ("default-execu", "grpc"),
    ("resolver-exec", "grpc"),
    ("libuv-worker", "event loop"),  # uvloop's thread pool
    ("_conn", "sql"),  # aiosqlite's connection threads
    ("serve_forever", "metrics"),  # prometheus_client's HTTP server
    ("process_request", "metrics"),
]


def part_of(frames: list[str]) -> str:
    """The part of one sample, frames from root to leaf ("idle" for a waiting thread)."""
    leaf = frames[-1] if frames else ""
    if leaf.startswith(WAITING) or any("PyThread_acquire_lock" in f for f in frames[-4:]):
        return "idle"
    if any(marker in frame for frame in frames for marker in EVENTS):
        return "events"
    for frame in reversed(frames):
        for part, patterns in PARTS:
            if any(p in frame for p in patterns):
                return part
    return "other"


def read_stacks(path: Path) -> dict[int, tuple[str, Counter[str]]]:
    """py-spy's raw (collapsed) output as samples per part, per thread id (with its name)."""
    found: dict[int, tuple[str, Counter[str]]] = {}
    if not path.exists():
        return found
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if frames[0].startswith("process "):  # --subprocesses names the process first
            frames = frames[1:]
        match = _THREAD.match(frames[0])
        if not match:
            continue
        name = frames[0].partition(": ")[2]
        _, parts = found.setdefault(int(match.group(1), 0), (name, Counter()))
        parts[part_of(frames[1:])] += int(count)
    return found


def thread_times(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds so far of each thread of pid (and of its children), with its name."""
    times: dict[int, tuple[str, float]] = {}
    try:
        proc = psutil.Process(pid)
        family = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return times
    for member in family:
        try:
            threads = member.threads()
        except psutil.Error:
            continue
        for thread in threads:
            try:
                name = Path(f"/proc/{member.pid}/task/{thread.id}/comm").read_text().strip()
            except OSError:
                name = "?"
            times[thread.id] = (name, thread.user_time + thread.system_time)
    return times


def used(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict:
    return {
        tid: (name, seconds - before.get(tid, (name, 0.0))[1])
        for tid, (name, seconds) in after.items()
    }


@dataclasses.dataclass
class Run:
    """One system under one load: orders/s, CPU ms per order by process, and by part."""

    system: str
    clients: int
    orders_per_s: float
    errors: int
    cpu_ms: dict[str, float]
    parts_ms: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    # CPU ms per order of each process's threads, by thread name (the measured phase).
    threads_ms: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    # The profiled phase's own orders/s and errors (py-spy pauses the processes it samples).
    profiled_orders_per_s: float = 0.0
    profiled_errors: int = 0

    @property
    def cpu_total(self) -> float:
        return sum(self.cpu_ms.values())


def pids_of(system: System) -> dict[str, int]:
    return {n: p.popen.pid for n, p in system.processes.items() if p.popen}


def load(url: str, clients: int, seconds: float, pids: dict[str, int]) -> tuple[dict, dict]:
    """wrk's figures and the CPU each thread of each process used meanwhile."""
    before = {n: thread_times(pid) for n, pid in pids.items()}
    fields = run_wrk(url, clients, seconds)
    after = {n: thread_times(pid) for n, pid in pids.items()}
    return fields, {n: used(before[n], after[n]) for n in pids}


def spied(
    url: str,
    clients: int,
    seconds: float,
    pids: dict[str, int],
    rate: int,
    stacks: Path,
    native: bool,
) -> tuple[dict, dict, dict[str, dict[int, tuple[str, Counter[str]]]]]:
    """load() with py-spy recording every process meanwhile."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    recorders = {}
    for name, pid in pids.items():
        out = stacks / f"{name}.txt"
        argv = [spy, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw"]
        argv += ["--threads", "--full-filenames", "--subprocesses"]
        argv += ["--native"] if native else ["--nonblocking"]
        argv += ["--duration", str(round(seconds + 1)), "--output", str(out)]
        recorders[name] = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
    time.sleep(0.5)  # attached before the load starts
    fields, threads = load(url, clients, seconds, pids)
    samples = {}
    for name, recorder in recorders.items():
        _, err = recorder.communicate(timeout=seconds + 60)
        if recorder.returncode != 0:
            raise RuntimeError(f"py-spy failed on {name}: {err[-2000:]}")
        samples[name] = read_stacks(stacks / f"{name}.txt")
    return fields, threads, samples


def shares(
    threads: dict[int, tuple[str, float]], samples: dict[int, tuple[str, Counter[str]]]
) -> dict[str, float]:
    """A process's CPU seconds by part: the event loop's thread (the one that runs Python)
    split as its busy samples are, every other thread by its name (THREADS)."""
    out: Counter[str] = Counter()
    for tid, (comm, seconds) in threads.items():
        name, seen = samples.get(tid, (comm, Counter()))
        by_name = [part for prefix, part in THREADS if prefix in name or comm.startswith(prefix)]
        busy = {part: n for part, n in seen.items() if part != "idle"}
        if name != "MainThread" and by_name:
            out[by_name[0]] += seconds
        elif busy:
            total = sum(busy.values())
            for part, count in busy.items():
                out[part] += seconds * count / total
        else:
            out["other"] += seconds
    return dict(out)


def measure(
    system: System,
    name: str,
    args: argparse.Namespace,
    stacks: Path,
    settle: Callable[[int, int], None],
    say: Callable[[str], None],
) -> Run:
    clients, seconds, rate = args.clients, args.seconds, args.rate
    url = f"{system.base_url}/api/v1/orders"
    pids = pids_of(system)
    say(f"  {name}: warming up")
    since = time.time_ns() // 1000
    run_wrk(url, 8, 2)
    settle(since, time.time_ns() // 1000)
    say(f"  {name}: {clients} clients for {seconds:g} s, measured")
    since = time.time_ns() // 1000
    fields, threads = load(url, clients, seconds, pids)
    settle(since, time.time_ns() // 1000)
    requests = fields["requests"] or 1
    cpu_ms = {n: sum(s for _, s in t.values()) * 1000 / requests for n, t in threads.items()}
    errors = sum(fields[k] for k in ("non2xx", "connect", "read", "write", "timeout"))
    rps = fields["requests"] / (fields["duration_us"] / 1e6)
    say(f"    {rps:.1f} orders/s, {errors} errors, CPU {sum(cpu_ms.values()):.2f} ms/order")
    run = Run(name, clients, rps, errors, cpu_ms)
    for process, used_by in threads.items():
        by_name: Counter[str] = Counter()
        for thread_name, seconds_used in used_by.values():
            by_name[thread_name] += seconds_used * 1000 / requests
        run.threads_ms[process] = {n: round(ms, 3) for n, ms in by_name.most_common()}
    if rate <= 0:
        return run
    say(f"  {name}: {clients} clients for {seconds:g} s, under py-spy")
    (stacks / name).mkdir(parents=True, exist_ok=True)
    since = time.time_ns() // 1000
    fields, spied_threads, samples = spied(
        url, clients, seconds, pids, rate, stacks / name, args.native
    )
    settle(since, time.time_ns() // 1000)
    run.profiled_orders_per_s = fields["requests"] / (fields["duration_us"] / 1e6)
    run.profiled_errors = sum(fields[k] for k in ("non2xx", "connect", "read", "write", "timeout"))
    say(f"    {run.profiled_orders_per_s:.1f} orders/s, {run.profiled_errors} errors")
    for process, threads_used in spied_threads.items():
        split = shares(threads_used, samples[process])
        total = sum(split.values()) or 1.0
        run.parts_ms[process] = {
            part: run.cpu_ms[process] * seconds_used / total for part, seconds_used in split.items()
        }
    return run


def floor_system(workdir: Path, urls: dict[str, str], calls: int) -> System:
    """The per-service floor (as bench.run builds it), making `calls` calls per order."""
    base = [sys.executable, "-m", "bench.floor"]
    # This checkout's orderflow (its platform layer is the floor's too), whatever is installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    http = free_port()
    system = System(f"floor-{calls}", f"http://127.0.0.1:{http}")
    targets = []
    for label in LABELS:
        port = free_port()
        argv = [*base, "service", "--port", str(port), "--database-url", urls[label]]
        system.processes[label] = Process(
            label, argv, env, port, workdir / f"floor{calls}-{label}.log"
        )
        targets.append(f"127.0.0.1:{port}")
    argv = [*base, "gateway", "--port", str(http), "--targets", ",".join(targets)]
    argv += ["--calls", str(calls)]
    system.processes["gateway"] = Process(
        "gateway", argv, env, http, workdir / f"floor{calls}-gw.log"
    )
    return system


@contextmanager
def started(system: System, ready: Callable[[], None]) -> Iterator[System]:
    system.start()
    try:
        ready()
        yield system
    finally:
        system.stop()


def _nothing(_since: int, _until: int) -> None:
    """The floor has no events to wait for."""


def profile(args: argparse.Namespace, say: Callable[[str], None]) -> list[Run]:
    runs = []
    with tempfile.TemporaryDirectory(prefix="orderflow-profile-") as tmp:
        workdir = Path(tmp)
        stacks = args.stacks or workdir / "stacks"
        with (
            databases(args.mode, workdir, LABELS) as urls,
            jetstream(args.mode, args.nats_url) as events_env,
        ):
            system = orderflow_system(args.mode, workdir, urls, events_env)

            def settle(since: int, until: int) -> None:
                if wait_for_events(urls, since, until) is None:
                    say("    events: not all settled after 120 s")

            def ready() -> None:
                system.wait_ready(60)
                seed(system.base_url)

            say(f"[orderflow, {args.mode}]")
            with started(system, ready):
                runs.append(measure(system, "orderflow", args, stacks, settle, say))
        for calls in args.floor_calls:
            (workdir / f"floor{calls}").mkdir()
            with databases(args.mode, workdir / f"floor{calls}", LABELS) as urls:
                floor = floor_system(workdir, urls, calls)
                say(f"[floor, {calls} calls]")
                with started(floor, lambda f=floor: wait_http(f"{f.base_url}/healthz")):
                    runs.append(measure(floor, f"floor-{calls}", args, stacks, _nothing, say))
    return runs


def report(runs: list[Run], args: argparse.Namespace) -> str:
    floors = [r for r in runs if r.system.startswith("floor")]
    lines = [
        f"{args.clients} clients, {args.seconds:g} s per phase, py-spy at {args.rate} Hz; "
        f"commit {current_commit()}; {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC.",
        "",
        "| system | orders/s | errors | CPU ms/order | "
        + " | ".join(f"÷ {f.system}" for f in floors)
        + " | by process (ms/order) |",
        "|---|---:|---:|---:|" + "---:|" * len(floors) + "---|",
    ]
    for run in runs:
        ratios = " | ".join(f"{run.cpu_total / f.cpu_total:.2f}" for f in floors)
        by_process = ", ".join(f"{n} {ms:.2f}" for n, ms in run.cpu_ms.items())
        lines.append(
            f"| {run.system} | {run.orders_per_s:.1f} | {run.errors} | {run.cpu_total:.2f} "
            f"| {ratios} | {by_process} |"
        )
    for run in runs:
        if not run.parts_ms:
            continue
        parts = [p for p in ORDER if any(p in v for v in run.parts_ms.values())]
        lines += [
            "",
            f"{run.system}: CPU ms per order by process and part (profiled at "
            f"{run.profiled_orders_per_s:.1f} orders/s, {run.profiled_errors} errors)",
            "",
            "| process | " + " | ".join(parts) + " | total |",
            "|---|" + "---:|" * (len(parts) + 1),
        ]
        totals: Counter[str] = Counter()
        for process, split in run.parts_ms.items():
            totals.update(split)
            cells = " | ".join(f"{split.get(p, 0.0):.2f}" for p in parts)
            lines.append(f"| {process} | {cells} | {sum(split.values()):.2f} |")
        cells = " | ".join(f"**{totals.get(p, 0.0):.2f}**" for p in parts)
        lines.append(f"| all | {cells} | **{sum(totals.values()):.2f}** |")
    return "\n".join(lines)


def current_commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    ).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--mode",
        choices=["per-service-sqlite", "per-service-pg"],
        default="per-service-sqlite",
        help="storage of the services and the floors (per-service-pg: the local PostgreSQL)",
    )
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples/s (0: no profile)")
    parser.add_argument(
        "--floor-calls", default="4,7", help="floors to run, by calls per order ('': none)"
    )
    parser.add_argument(
        "--nats-url",
        default=os.environ.get("ORDERFLOW_NATS_URL", "nats://127.0.0.1:4222"),
        help="JetStream for the events ('': none)",
    )
    parser.add_argument(
        "--native",
        action="store_true",
        help="native frames too (gRPC's C core, SQLite): py-spy then pauses each process "
        "for each sample, which slows it down",
    )
    parser.add_argument("--stacks", type=Path, help="keep py-spy's collapsed stacks here")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    args.floor_calls = [int(c) for c in args.floor_calls.split(",") if c]
    say = lambda line: print(line, flush=True)  # noqa: E731
    runs = profile(args, say)
    print(report(runs, args))
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in runs], indent=2))
    return 1 if any(r.errors for r in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
