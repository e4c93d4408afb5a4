"""The benchmark counts errors and calls a run with failures failed (against a real server)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.run import cpu_seconds, measurement, parse_wrk, run_wrk
from tests.system import free_port, wait_for_port

FLAKY_SERVER = textwrap.dedent(
    """
    import itertools, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    counter = itertools.count()
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            status = 500 if next(counter) % 4 == 0 else int(sys.argv[2])
            self.send_response(status)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
        def log_message(self, *args):
            pass
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
    """
)


@pytest.fixture
def flaky_server(tmp_path: Path) -> Iterator[str]:
    script = tmp_path / "server.py"
    script.write_text(FLAKY_SERVER)
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(script), str(port), "201"])
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}/api/v1/orders"
    finally:
        proc.kill()
        proc.wait()


def test_parse_wrk_reads_the_result_line() -> None:
    fields = parse_wrk(
        "Running 1s test\nRESULT requests=120 duration_us=1000000 p50_us=1500 p99_us=9000 "
        "non2xx=3 connect=0 read=1 write=0 timeout=2\n"
    )
    m = measurement("orderflow", "x", 8, fields, {})
    assert (m.requests, m.errors, m.rps, m.p99_ms) == (120, 6, 120.0, 9.0)
    assert m.failed


def test_a_clean_run_is_not_failed() -> None:
    fields = parse_wrk(
        "RESULT requests=10 duration_us=2000000 p50_us=1 p99_us=2 non2xx=0 connect=0 "
        "read=0 write=0 timeout=0"
    )
    assert not measurement("orderflow", "x", 1, fields, {}).failed


def test_missing_result_line_is_an_error_not_a_zero() -> None:
    with pytest.raises(RuntimeError):
        parse_wrk("wrk: connection refused\n")


@pytest.mark.skipif(
    shutil.which("wrk") is None and os.environ.get("CI") != "true",
    reason="wrk not installed (apt-get install wrk); under CI=true this fails instead",
)
def test_errors_from_a_real_server_are_counted_and_fail_the_run(flaky_server: str) -> None:
    fields = run_wrk(flaky_server, concurrency=4, seconds=1)
    m = measurement("orderflow", "x", 4, fields, {})
    assert m.requests > 20
    # Every fourth answer is a 500: wrk counts them as non-2xx.
    assert m.requests // 4 - 4 <= fields["non2xx"] <= m.requests // 4 + 4
    assert m.failed


def test_cpu_per_order_is_cpu_time_over_answered_orders() -> None:
    fields = parse_wrk(
        "RESULT requests=200 duration_us=1000000 p50_us=1 p99_us=2 non2xx=0 connect=0 "
        "read=0 write=0 timeout=0"
    )
    m = measurement("orderflow", "x", 8, fields, {}, {"gateway": 0.3, "orders": 0.5})
    assert m.cpu_ms_per_order == {"gateway": 1.5, "orders": 2.5}
    assert m.cpu_ms_total == 4.0


def test_cpu_seconds_reads_a_busy_process_and_skips_a_gone_one() -> None:
    # It spins until it has used half a second of CPU (however busy the machine is), says
    # so, then sleeps: its CPU time is then known whatever else the machine is doing.
    spin = (
        "import time\nwhile time.process_time() < 0.5: pass\n"
        "print('spun', flush=True)\ntime.sleep(30)"
    )
    busy = subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE)
    out = busy.stdout
    assert out is not None
    try:
        assert out.readline() == b"spun\n"
        used = cpu_seconds({"busy": busy.pid})
        # Half a second of spinning plus start-up, read in clock ticks (0.01 s).
        assert 0.45 <= used["busy"] <= 1.5
    finally:
        busy.kill()
        busy.wait()
        out.close()
    assert cpu_seconds({"gone": busy.pid}) == {}
