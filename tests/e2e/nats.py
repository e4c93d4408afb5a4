"""A NATS server with JetStream that a test starts itself: a free port, its store in a
directory of the test's, stopped and started again like any process of a System."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.system import free_port, wait_for_port

IN_CI = os.environ.get("CI", "").lower() == "true"


def nats_binary() -> str:
    """nats-server (Debian's package installs it in /usr/sbin); skipped when missing,
    except under CI=true, where that fails the test."""
    found = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin")
    if found is None:
        if IN_CI:
            pytest.fail("nats-server is required under CI=true (apt-get install nats-server)")
        pytest.skip("nats-server is not installed")
    return found


class NatsServer:
    def __init__(self, workdir: Path) -> None:
        self.binary = nats_binary()
        self.port = free_port()
        self.store = workdir / "nats"
        self.log_path = workdir / "nats.log"
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store)]
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None
