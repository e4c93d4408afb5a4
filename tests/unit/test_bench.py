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

from bench.run import (
    OutboxRow,
    cpu_seconds,
    event_lags,
    measurement,
    parse_wrk,
    percentile,
    report,
    run_wrk,
)
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


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 99) == 99.0
    assert percentile(values, 50) == 50.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([5.0, 1.0, 3.0], 100) == 5.0


def _row(service: str, order: str, kind: str, created: int, published: int | None) -> OutboxRow:
    return OutboxRow(service, order, kind, created, published)


def test_event_lags_wait_for_every_order_settled_and_every_row_published() -> None:
    since, until = 1_000_000, 2_000_000
    rows = [
        # Before the level: not counted.
        _row("orders", "o-old", "order.confirmed", 900_000, 999_000),
        _row("orders", "o-1", "order.confirmed", 1_100_000, 1_102_000),
        _row("inventory", "o-1", "stock.committed", 1_105_000, 1_106_000),
        _row("orders", "o-1", "order.settled", 1_110_000, 1_111_000),
        _row("orders", "o-2", "order.confirmed", 1_900_000, 1_950_000),
        _row("inventory", "o-2", "stock.committed", 1_960_000, None),
    ]
    # o-2 is not settled yet, and a row is unpublished.
    assert event_lags(rows, since, until) is None
    rows[-1] = _row("inventory", "o-2", "stock.committed", 1_960_000, 1_961_000)
    assert event_lags(rows, since, until) is None
    rows.append(_row("orders", "o-2", "order.settled", 2_300_000, None))
    assert event_lags(rows, since, until) is None  # settled, but its event unpublished
    rows[-1] = _row("orders", "o-2", "order.settled", 2_300_000, 2_301_000)
    lags = event_lags(rows, since, until)
    assert lags is not None
    assert (lags.orders, lags.events) == (2, 6)
    # Publish delays 2, 1, 1, 50, 1, 1 ms: the p99 (nearest rank) is the largest.
    assert lags.outbox_lag_p99_ms == 50.0
    # Last confirmation at 1.9 s, last settlement at 2.3 s.
    assert lags.settle_lag_ms == 400.0


def test_event_lags_need_an_order_to_measure() -> None:
    assert event_lags([], 0, 10) is None
    only_items = [_row("inventory", "MUG-1", "item.changed", 5, 6)]
    assert event_lags(only_items, 0, 10) is None


def test_report_shows_the_event_lags_per_level() -> None:
    fields = parse_wrk(
        "RESULT requests=100 duration_us=1000000 p50_us=1000 p99_us=2000 non2xx=0 connect=0 "
        "read=0 write=0 timeout=0"
    )
    ours = measurement("orderflow", "per-service-sqlite", 8, fields, {"orders": 80.0})
    ours.outbox_lag_p99_ms, ours.settle_lag_ms = 12.34, 456.0
    floor = measurement("floor", "per-service-sqlite", 8, fields, {"orders": 40.0})
    run = {
        "mode": "per-service-sqlite",
        "events": "JetStream",
        "ready_s": 1.0,
        "idle_rss_mb": {"orders": 70.0},
        "orderflow": [ours],
        "floor": [floor],
        "commit": "abc1234",
    }
    text = report([run], 10)
    assert "Ready in 1.00 s; events JetStream;" in text
    header = next(line for line in text.splitlines() if line.startswith("| clients"))
    assert "| outbox lag p99 ms | settled after last reply ms |" in header
    row = next(line for line in text.splitlines() if line.startswith("| 8 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[9:11] == ["12.3", "456.0"]
    assert len(cells) == len(header.strip("|").split("|"))
    # The floor has no events: shown as such, not as zero.
    floor.outbox_lag_p99_ms = None
    ours.outbox_lag_p99_ms = None
    text = report([run], 10)
    row = next(line for line in text.splitlines() if line.startswith("| 8 |"))
    assert [c.strip() for c in row.strip("|").split("|")][9] == "-"


def test_report_puts_grpc_beside_rest_and_in_the_closing_note() -> None:
    def at(rps: int, p99_us: int, errors: int = 0) -> dict[str, int]:
        return parse_wrk(
            f"RESULT requests={rps} duration_us=1000000 p50_us=1000 p99_us={p99_us} "
            f"non2xx={errors} connect=0 read=0 write=0 timeout=0"
        )

    rest = measurement("orderflow", "per-service-sqlite", 64, at(300, 90_000), {})
    rpc = measurement("orderflow gRPC", "per-service-sqlite", 64, at(420, 70_000, 1), {})
    floor = measurement("floor", "per-service-sqlite", 64, at(400, 50_000), {})
    run = {
        "mode": "per-service-sqlite",
        "ready_s": 1.0,
        "idle_rss_mb": {"orders": 70.0},
        "orderflow": [rest],
        "grpc": [rpc],
        "floor": [floor],
    }
    text = report([run], 10)
    row = next(line for line in text.splitlines() if line.startswith("| 64 | 420.0 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:6] == ["64", "420.0", "300.0", "1.0 / 70.0", "1.0 / 90.0", "1 / 0"]
    assert "over gRPC (PlaceOrder), 64 clients: 420.0 orders/s, p99 70 ms, 1 errors" in text
    assert rpc.failed  # a gRPC error fails the run as a REST one does
    del run["grpc"]  # an older run's JSON has no gRPC rows: the report still renders
    assert "over gRPC" not in report([run], 10)


def test_grpc_load_percentiles_are_nearest_rank() -> None:
    from bench.grpc_load import nearest_rank

    values = list(range(1, 101))
    assert (nearest_rank(values, 50), nearest_rank(values, 99)) == (50, 99)
    assert nearest_rank([], 99) == 0
