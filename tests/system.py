"""Start orderflow as real processes for end-to-end tests: one process, or one per service.

A `System` knows its gateway URL and can stop, kill (SIGKILL) and start any of its
processes, so tests can take a service down, crash the gateway mid-flight, and
bring things back — exactly what an operator would do.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from orderflow.registry import COMPONENT_NAMES, GATEWAY, SERVICE_NAMES

# Under pytest-xdist (`make test` runs two workers) each worker hands out ports from a range
# of its own, below the kernel's ephemeral range: a port is picked here and bound only later
# by the process a test starts, and in that gap the other worker's port 0 (or any outgoing
# connection) could be given the same one. Ports go in order from a random start, so one
# worker does not hand out a port again until it has gone round its whole range.
_PORTS_LOW, _PORTS_HIGH = 12000, 32000
_worker_ports: Iterator[int] | None = None


def _worker_range() -> Iterator[int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    span = (_PORTS_HIGH - _PORTS_LOW) // max(count, 1)
    low = _PORTS_LOW + int(worker.removeprefix("gw")) * span
    first = random.randrange(span)
    return itertools.cycle([*range(low + first, low + span), *range(low, low + first)])


def free_port() -> int:
    """A port nothing listens on now, for a process a test is about to start."""
    global _worker_ports
    if not os.environ.get("PYTEST_XDIST_WORKER", "").startswith("gw"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    if _worker_ports is None:
        _worker_ports = _worker_range()
    for port in itertools.islice(_worker_ports, _PORTS_HIGH - _PORTS_LOW):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use (a service of this machine, or a process still running)
            return port
    raise RuntimeError("no free port left in this worker's range")


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port} after {timeout}s")


@dataclass
class Process:
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.launch()
        self.wait_listening()

    def launch(self) -> None:
        """Start the process, without waiting for it to listen."""
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def wait_listening(self, timeout: float = 20.0) -> None:
        """Wait until the process listens on its port; stop it and raise with the end of its
        log if it does not within timeout, or exits first (no use waiting for that)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.running:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"{self.name} did not start; its log:\n{self.log_path.read_text()[-4000:]}"
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


@dataclass
class System:
    mode: str
    base_url: str
    processes: dict[str, Process] = field(default_factory=dict)
    # The gateway's public gRPC API (host:port).
    grpc_target: str = ""

    def start(self, name: str | None = None) -> None:
        """Start one process, or all: the services side by side (each has its own database),
        then the gateway once they listen, as before."""
        if name:
            self.processes[name].start()
            return
        first = [p for n, p in self.processes.items() if n != GATEWAY]
        try:
            for proc in first:
                proc.launch()
            for proc in first:
                proc.wait_listening()
        except Exception:
            for proc in first:
                proc.stop()
            raise
        if GATEWAY in self.processes:
            self.processes[GATEWAY].start()

    def stop(self, name: str | None = None) -> None:
        targets = [self.processes[name]] if name else list(self.processes.values())[::-1]
        for proc in targets:
            proc.stop()

    def kill(self, name: str) -> None:
        self.processes[name].kill()

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                response = httpx.get(f"{self.base_url}/readyz", timeout=2)
                if response.status_code == 200:
                    break
                last = response.text
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.1)
        else:
            raise TimeoutError(f"{self.mode} system not ready: {last}")
        if self.grpc_target:  # served once the REST app has started
            wait_for_port(
                int(self.grpc_target.rpartition(":")[2]), max(1.0, deadline - time.monotonic())
            )

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name} ---\n{p.log_path.read_text()[-3000:]}"
            for p in self.processes.values()
            if p.log_path.exists()
        )


def start_ready(system: System) -> System:
    """Start every process of system and wait until its gateway is ready; on failure print
    the logs and stop what was started."""
    try:
        system.start()
        system.wait_ready()
    except Exception:
        print(system.logs())
        system.stop()
        raise
    return system


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], timeout: float, what: str, every: float = 0.2
) -> float:
    """Poll an async predicate until it is true; return the seconds it took."""
    start_at = time.monotonic()
    while time.monotonic() - start_at < timeout:
        if await predicate():
            return time.monotonic() - start_at
        await asyncio.sleep(every)
    raise AssertionError(f"not within {timeout}s: {what}")


def _base_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERFLOW_")}
    env.update(
        {
            "ORDERFLOW_LOG_FORMAT": "json",
            "ORDERFLOW_LOG_LEVEL": "WARNING",
            # Tests fire hundreds of orders from one address; the limit has its own tests.
            "ORDERFLOW_GATEWAY_RATE_LIMIT_PER_SECOND": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def one_process(workdir: Path, extra_env: dict[str, str] | None = None) -> System:
    http, grpc_port, api_port = free_port(), free_port(), free_port()
    argv = [
        sys.executable, "-m", "orderflow", "run",
        "--port", str(http), "--grpc-port", str(grpc_port),
        "--grpc-api-port", str(api_port),
        "--data-dir", str(workdir / "data"),
    ]  # fmt: skip
    proc = Process("onebox", argv, _base_env(extra_env or {}), http, workdir / "onebox.log")
    return System(
        "one-process", f"http://127.0.0.1:{http}", {"onebox": proc}, f"127.0.0.1:{api_port}"
    )


def per_service(
    workdir: Path, database_urls: dict[str, str], extra_env: dict[str, str] | None = None
) -> System:
    ports = {name: free_port() for name in COMPONENT_NAMES}
    env = _base_env(extra_env or {})
    for name in SERVICE_NAMES:
        env[f"ORDERFLOW_{name.upper()}_PORT"] = str(ports[name])
        env[f"ORDERFLOW_{name.upper()}_DATABASE_URL"] = database_urls[name]
        env[f"ORDERFLOW_GATEWAY_{name.upper()}_TARGET"] = f"127.0.0.1:{ports[name]}"
    env["ORDERFLOW_GATEWAY_PORT"] = str(ports["gateway"])
    api_port = free_port()
    env["ORDERFLOW_GATEWAY_GRPC_PORT"] = str(api_port)
    system = System(
        "per-service", f"http://127.0.0.1:{ports['gateway']}", grpc_target=f"127.0.0.1:{api_port}"
    )
    for name in COMPONENT_NAMES:
        argv = [sys.executable, "-m", "orderflow", "serve", name]
        system.processes[name] = Process(name, argv, env, ports[name], workdir / f"{name}.log")
    return system
