"""gRPC carries no token check, so it listens beyond loopback only with mutual TLS or when
told (--insecure-grpc / ORDERFLOW_INSECURE_GRPC), and `run --host` moves only HTTP."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no stubs pinned; only this test uses it
import pytest

from orderflow.platform.tls import make_certs
from tests.system import free_port

SECRET = "exposure-test-secret-that-is-long-enough-0123"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERFLOW_")}
    return {**env, "ORDERFLOW_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1", **extra}


def _plain(ip: str) -> str:
    """gRPC listens on IPv6 sockets: ::ffff:127.0.0.1 is 127.0.0.1."""
    return ip.removeprefix("::ffff:")


def _listening(pid: int) -> set[tuple[str, int]]:
    return {
        (_plain(c.laddr.ip), c.laddr.port)
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _start(
    procs: list[subprocess.Popen[str]], args: list[str], env: dict[str, str], cwd: Path
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "orderflow", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    procs.append(proc)
    return proc


def _wait_listening(proc: subprocess.Popen[str], ports: set[int]) -> set[tuple[str, int]]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}"
            )
        bound = _listening(proc.pid)
        if ports <= {port for _, port in bound}:
            return bound
        time.sleep(0.1)
    raise AssertionError(f"not listening on {ports} after 30 s")


def _stderr_after_stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    return err


def test_run_on_every_interface_keeps_grpc_on_loopback(
    tmp_path: Path, started: list[subprocess.Popen[str]]
) -> None:
    http, grpc_port = free_port(), free_port()
    args = ["run", "--host", "0.0.0.0", "--port", str(http), "--grpc-port", str(grpc_port)]
    args += ["--grpc-api-port", "0", "--data-dir", str(tmp_path / "data")]
    proc = _start(started, args, _env(ORDERFLOW_AUTH_JWT_SECRET=SECRET), tmp_path)
    bound = _wait_listening(proc, {http, grpc_port})
    assert ("0.0.0.0", http) in bound
    # gRPC is bound to loopback alone: no other interface reaches it.
    grpc_addresses = {ip for ip, port in bound if port == grpc_port}
    assert grpc_addresses and all(ipaddress.ip_address(ip).is_loopback for ip in grpc_addresses)


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["run", "--host", "0.0.0.0", "--grpc-host", "0.0.0.0"], {}),
        (["serve", "inventory"], {"ORDERFLOW_INVENTORY_HOST": "0.0.0.0"}),
        (["serve", "orders"], {"ORDERFLOW_ORDERS_HOST": "10.1.2.3"}),
    ],
    ids=["run-grpc-host", "serve-inventory", "serve-orders"],
)
def test_plaintext_grpc_beyond_loopback_refuses_to_start(
    tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    ports = (
        ["--port", str(free_port()), "--grpc-port", str(free_port()), "--grpc-api-port", "0"]
        if args[0] == "run"
        else []
    )
    done = subprocess.run(
        [sys.executable, "-m", "orderflow", *args, *ports],
        env=_env(ORDERFLOW_AUTH_JWT_SECRET=SECRET, **env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    host = env.get("ORDERFLOW_INVENTORY_HOST") or env.get("ORDERFLOW_ORDERS_HOST") or "0.0.0.0"
    message = done.stderr.strip().splitlines()
    assert len(message) <= 2, done.stderr  # a clear message, not a traceback
    assert "refusing to serve" in message[0] and f"on {host} without mutual TLS" in message[0]
    assert "--insecure-grpc" in done.stderr and "ORDERFLOW_TLS_CA_FILE" in done.stderr
    assert not (tmp_path / "data").exists()  # stopped before anything was made


@pytest.mark.parametrize("how", ["flag", "setting", "tls"])
def test_serve_beyond_loopback_when_told_or_with_tls(
    tmp_path: Path, started: list[subprocess.Popen[str]], how: str
) -> None:
    port = free_port()
    env = {
        "ORDERFLOW_INVENTORY_HOST": "0.0.0.0",
        "ORDERFLOW_INVENTORY_PORT": str(port),
        "ORDERFLOW_INVENTORY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/inventory.db",
    }
    args = ["serve", "inventory"]
    if how == "flag":
        args.append("--insecure-grpc")
    elif how == "setting":
        env["ORDERFLOW_INSECURE_GRPC"] = "true"
    else:
        files = make_certs(tmp_path / "certs", ["localhost", "127.0.0.1"])
        env["ORDERFLOW_TLS_CA_FILE"] = str(files["ca"])
        env["ORDERFLOW_TLS_CERT_FILE"] = str(files["inventory_cert"])
        env["ORDERFLOW_TLS_KEY_FILE"] = str(files["inventory_key"])
    proc = _start(started, args, _env(**env), tmp_path)
    bound = {ip for ip, p in _wait_listening(proc, {port}) if p == port}
    assert bound & {"0.0.0.0", "::"}, bound  # every interface
    err = _stderr_after_stop(proc)
    loud = "WARNING: inventory gRPC listens on 0.0.0.0 in PLAINTEXT"
    if how == "tls":
        assert loud not in err
    else:
        assert loud in err, err
