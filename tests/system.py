"""Start orderflow as real processes for end-to-end tests: one process, or one per service.

A `System` knows its gateway URL and can stop, kill (SIGKILL) and start any of its
processes, so tests can take a service down, crash the gateway mid-flight, and
bring things back — exactly what an operator would do.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from orderflow.registry import COMPONENT_NAMES, SERVICE_NAMES


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(
                f"{self.name} did not start; its log:\n{self.log_path.read_text()[-4000:]}"
            ) from None

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
        for proc in [self.processes[name]] if name else self.processes.values():
            proc.start()

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
