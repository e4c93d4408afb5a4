"""Drive podman and podman-compose from Python, for the container tests and bench/containers.py.

On a machine whose host mounts cgroup v1, podman works only inside a private mount
namespace with cgroup v2 mounted (scripts/podman-env.sh), and every command that touches
the same containers must run in that same namespace: their network namespaces and storage
mounts live there. `PodmanSession` therefore keeps ONE shell open inside it and feeds it
commands one at a time, each with its own output file and exit-status marker.

`Deployment` is one compose project started from deploy/compose/: up, wait for the
gateway, tokens from `orderflow token`, container names, memory of its processes, down.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
HELPER = ROOT / "scripts" / "podman-env.sh"
COMPOSE_DIR = ROOT / "deploy" / "compose"
BIN = Path(sys.executable).parent


class PodmanError(RuntimeError):
    """A command run in the podman session failed or did not finish in time."""


@dataclass
class Result:
    command: str
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def check(self) -> Result:
        if self.returncode != 0:
            raise PodmanError(f"`{self.command}` exited {self.returncode}:\n{self.output[-4000:]}")
        return self


def podman_usable() -> str | None:
    """None when this machine can run the container tests, else the reason it cannot."""
    if os.geteuid() != 0:
        return "needs root (rootful podman in a private mount namespace)"
    for tool in ("podman", "unshare"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode:
            return f"{tool} is not installed"
    if not (BIN / "podman-compose").exists():
        return "podman-compose is not installed in the virtualenv"
    return None


class PodmanSession:
    """One long-lived shell inside scripts/podman-env.sh; run() executes a command in it."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self._env = {
            **os.environ,
            "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            **(env or {}),
        }
        self._dir = Path(tempfile.mkdtemp(prefix="orderflow-podman-"))
        self._counter = itertools.count()
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._proc = subprocess.Popen(
            [str(HELPER), "bash", "--noprofile", "--norc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env=self._env,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.run("true", timeout=30).check()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def run(self, command: str, timeout: float = 300) -> Result:
        """Run a shell command in the session; its output (stdout and stderr) and status."""
        if self._proc.poll() is not None:
            raise PodmanError(f"the podman session has ended (exit {self._proc.returncode})")
        n = next(self._counter)
        out, err = self._dir / f"{n}.out", self._dir / f"{n}.err"
        marker = f"__orderflow_done_{n}_{uuid.uuid4().hex}__"
        assert self._proc.stdin is not None
        self._proc.stdin.write(f"( {command}\n) >{out} 2>{err} </dev/null; echo {marker} $?\n")
        self._proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(left, 0.01))
            except queue.Empty:
                self._interrupt()
                text = "".join(f.read_text(errors="replace") for f in (out, err) if f.exists())
                raise PodmanError(
                    f"`{command}` did not finish in {timeout:.0f} s:\n{text}"
                ) from None
            if line is None:
                raise PodmanError(f"the podman session ended while running `{command}`")
            if line.startswith(marker):
                code = int(line.split()[1])
                result = Result(
                    command, code, out.read_text(errors="replace"), err.read_text(errors="replace")
                )
                out.unlink()
                err.unlink()
                return result

    def podman(self, *args: str, timeout: float = 120) -> Result:
        return self.run(shlex.join(["podman", *args]), timeout=timeout)

    def _children(self) -> list[int]:
        """Processes started by the session's shell (its direct children)."""
        kids = []
        for status in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = status.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self._proc.pid:
                    kids.append(int(status.parent.name))
        return kids

    def _interrupt(self) -> None:
        """Stop the command that overran its time, so that the shell can take the next one."""
        for pid in self._children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                self._proc.stdin.write("exit 0\n")
                self._proc.stdin.flush()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        # The reader ends at the shell's end of output; then both pipes are closed (an
        # open one is a ResourceWarning, which the tests treat as an error).
        self._reader.join(timeout=10)
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        for leftover in self._dir.glob("*"):
            leftover.unlink()
        self._dir.rmdir()

    def __enter__(self) -> PodmanSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def mint_token(secret: str, *, customer: str | None = None, admin: bool = False) -> str:
    """A bearer token from the real `orderflow token` command, signed with secret."""
    who = ["--admin"] if admin else ["--customer", str(customer)]
    done = subprocess.run(
        [str(BIN / "orderflow"), "token", *who],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "ORDERFLOW_AUTH_JWT_SECRET": secret},
    )
    if done.returncode != 0:
        raise RuntimeError(f"orderflow token failed: {done.stderr}")
    return done.stdout.strip()


@dataclass
class Deployment:
    """One compose project from deploy/compose/, driven through a PodmanSession."""

    session: PodmanSession
    compose_file: str  # single.yaml or multi.yaml
    project: str
    http_port: int
    secret: str
    env: dict[str, str] = field(default_factory=dict)
    # Where the gateway's gRPC API is published on this host (0: a free port, picked here).
    grpc_api_port: int = 0

    def __post_init__(self) -> None:
        if not self.grpc_api_port:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self.grpc_api_port = int(sock.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_api(self) -> str:
        return f"127.0.0.1:{self.grpc_api_port}"

    def compose(self, *args: str, timeout: float = 300) -> Result:
        env = {
            "ORDERFLOW_AUTH_JWT_SECRET": self.secret,
            "ORDERFLOW_HTTP_PUBLISH": f"127.0.0.1:{self.http_port}",
            "ORDERFLOW_GRPC_API_PUBLISH": self.grpc_api,
            **self.env,
        }
        assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        command = shlex.join(
            [
                "podman-compose",
                "-p",
                self.project,
                "-f",
                str(COMPOSE_DIR / self.compose_file),
                *args,
            ]
        )
        return self.session.run(f"env {assignments} {command}", timeout=timeout)

    def up(self, *extra: str) -> None:
        self.compose("up", "-d", *extra).check()

    def down(self) -> list[str]:
        """Stop and remove everything of the project; what could not be removed.

        `compose down` alone misses containers added by --scale, so whatever still carries
        the project's label afterwards is removed by label too.
        """
        self.compose("down", "-v", "-t", "5", timeout=180)
        label = f"label=io.podman.compose.project={self.project}"
        for kind, remove in (
            ("ps -a", "rm -f -t 5"),
            ("network ls", "network rm -f"),
            ("volume ls", "volume rm -f"),
        ):
            self.session.run(
                f"podman {kind} -q --filter {label} | xargs -r podman {remove}", timeout=120
            )
        left = []
        for kind in ("ps -a", "network ls", "volume ls"):
            out = self.session.run(f"podman {kind} -q --filter {label}").stdout.split()
            left += [f"{kind.split()[0]} {name}" for name in out]
        return left

    def containers(self, service: str | None = None) -> list[str]:
        """Names of the project's containers (of one compose service), running or not."""
        labels = ["--filter", f"label=io.podman.compose.project={self.project}"]
        if service:
            labels += ["--filter", f"label=com.docker.compose.service={service}"]
        out = self.session.podman("ps", "-a", *labels, "--format", "{{.Names}}").check().stdout
        return sorted(line for line in out.split() if line)

    def wait_ready(self, timeout: float = 180) -> dict[str, object]:
        """Wait until the gateway's /readyz says 200; its last body otherwise raises."""
        deadline = time.monotonic() + timeout
        last: object = "no answer"
        while time.monotonic() < deadline:
            try:
                reply = httpx.get(f"{self.url}/readyz", timeout=3)
                if reply.status_code == 200:
                    body: dict[str, object] = reply.json()
                    return body
                last = reply.text
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(1)
        raise PodmanError(
            f"{self.url}/readyz not ready after {timeout} s: {last}\n{self.diagnostics(15)}"
        )

    def diagnostics(self, lines: int = 40) -> str:
        """Every container's state and the end of its log, for a failure report."""
        parts = [self.session.podman("ps", "-a", "--format", "{{.Names}} {{.Status}}").output]
        for name in self.containers():
            log = self.session.podman("logs", "--tail", str(lines), name).output
            parts.append(f"--- {name}\n{log}")
        return "\n".join(parts)

    def token(self, *, customer: str | None = None, admin: bool = False) -> str:
        return mint_token(self.secret, customer=customer, admin=admin)

    def host_pids(self, container: str) -> list[int]:
        """The host pids of every process in a container (its init and all descendants)."""
        pid = int(
            self.session.podman("inspect", "--format", "{{.State.Pid}}", container)
            .check()
            .stdout.strip()
        )
        parents: dict[int, int] = {}
        for status in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = status.read_text().rsplit(")", 1)[1].split()
                parents[int(status.parent.name)] = int(fields[1])
        found, frontier = [pid], [pid]
        while frontier:
            parent = frontier.pop()
            kids = [p for p, pp in parents.items() if pp == parent]
            found += kids
            frontier += kids
        return found

    def memory(self, container: str) -> tuple[float, float]:
        """(RSS, PSS) in MiB of a container's processes, read from /proc on the host."""
        rss = pss = 0
        for pid in self.host_pids(container):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    key, _, value = line.partition(":")
                    if key == "Rss":
                        rss += int(value.split()[0])
                    elif key == "Pss":
                        pss += int(value.split()[0])
        return rss / 1024, pss / 1024


def build_images(session: PodmanSession, timeout: float = 900) -> float:
    """Build (or bring up to date) the five images; the seconds it took."""
    start = time.monotonic()
    session.run(f"{shlex.quote(str(HELPER))} images", timeout=timeout).check()
    return time.monotonic() - start
