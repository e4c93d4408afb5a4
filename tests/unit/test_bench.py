"""The benchmark counts errors and calls a run with failures failed (against a real server)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from bench.run import (
    FLOORS,
    OutboxRow,
    Servers,
    cpu_seconds,
    event_lags,
    floor_system,
    listening_pid,
    measurement,
    parse_wrk,
    percentile,
    report,
    run_wrk,
    runs_from_json,
    runs_to_json,
    server_cpu_seconds,
)
from tests.conftest import PG_ADMIN_DSN, PgDatabases
from tests.system import free_port, wait_for_port

NATS_URL = os.environ.get("ORDERFLOW_TEST_NATS", "nats://127.0.0.1:4222")
IN_CI = os.environ.get("CI", "").lower() == "true"

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
    # An order in flight when the load stopped: confirmed after it, settled too.
    rows.append(_row("orders", "o-3", "order.confirmed", 2_100_000, 2_101_000))
    rows.append(_row("orders", "o-3", "order.settled", 2_200_000, 2_201_000))
    lags = event_lags(rows, since, until)
    assert lags is not None
    assert (lags.orders, lags.begun, lags.events) == (2, 3, 8)
    # Publish delays 2, 1, 1, 50, 1, 1, 1, 1 ms: the p99 (nearest rank) is the largest.
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
        "floors": {"floor-7": [floor]},
        "commit": "abc1234",
    }
    text = report([run], 10)
    assert "Ready in 1.00 s; events JetStream;" in text
    table = floor_rows(text)
    assert table[0]["outbox lag p99 ms"] == "12.3"
    assert table[0]["settled after last reply ms"] == "456.0"
    # Not measured: shown as such, not as zero.
    ours.outbox_lag_p99_ms = None
    assert floor_rows(report([run], 10))[0]["outbox lag p99 ms"] == "-"


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
        "floors": {"floor-7": [floor]},
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


# -- both floors -------------------------------------------------------------------------


def floor_rows(text: str) -> list[dict[str, str]]:
    """The first table of a report (orderflow beside the floors), as {header: cell} rows."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| clients |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(header)
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


def _at(system: str, concurrency: int, rps: int, p99_ms: float, cpu: dict[str, float]) -> Any:
    fields = parse_wrk(
        f"RESULT requests={rps * 10} duration_us=10000000 p50_us=1000 "
        f"p99_us={int(p99_ms * 1000)} non2xx=0 connect=0 read=0 write=0 timeout=0"
    )
    seconds = {name: ms * rps * 10 / 1000 for name, ms in cpu.items()}
    return measurement(system, "per-service-sqlite", concurrency, fields, {}, seconds)


def two_floor_run() -> dict[str, Any]:
    ours = [
        _at("orderflow", 8, 100, 60.0, {"orders": 4.0, "gateway": 3.0}),
        _at("orderflow", 64, 220, 400.0, {"orders": 3.0, "gateway": 2.0}),
    ]
    for m, lag in zip(ours, (40.0, 120.0), strict=True):
        m.outbox_lag_p99_ms, m.settle_lag_ms = lag, 300.0
        m.cpu_ms_settled = {"orders": m.cpu_ms_per_order["orders"] + 1.0, "gateway": 2.0}
        m.server_cpu_ms_per_order = {"nats-server": 0.5}
        m.work_per_order = {"nats_messages": 5.0, "nats_kb": 2.5}
    return {
        "mode": "per-service-sqlite",
        "events": "JetStream",
        "ready_s": 1.0,
        "idle_rss_mb": {"orders": 70.0, "gateway": 60.0},
        "orderflow": ours,
        "floors": {
            "floor-7": [
                _at("floor-7", 8, 80, 50.0, {"orders": 2.0, "gateway": 2.0}),
                _at("floor-7", 64, 200, 300.0, {"orders": 2.0, "gateway": 3.0}),
            ],
            "floor-4": [
                _at("floor-4", 8, 160, 50.0, {"orders": 1.0, "gateway": 1.0}),
                _at("floor-4", 64, 400, 150.0, {"orders": 1.0, "gateway": 1.0}),
            ],
        },
        "commit": "abc1234",
    }


def test_the_floors_are_seven_and_four_calls() -> None:
    assert [(f.name, f.calls) for f in FLOORS] == [("floor-7", 7), ("floor-4", 4)]


def test_report_sets_orderflow_beside_both_floors() -> None:
    text = report([two_floor_run()], 10)
    at8, at64 = floor_rows(text)
    assert (at64["orderflow orders/s"], at64["floor-7 orders/s"], at64["floor-4 orders/s"]) == (
        "220.0",
        "200.0",
        "400.0",
    )
    assert (at64["of floor-7"], at64["of floor-4"]) == ("110%", "55%")
    assert at8["p99 x floor-4"] == "1.20x"
    assert at64["errors (ours / floor-7 / floor-4)"] == "0 / 0 / 0"
    assert at64["CPU ms/order ours to reply / settled"] == "5.00 / 6.00"
    assert at64["CPU ms/order floor-7 / floor-4"] == "5.00 / 2.00"
    assert "floor-4 4 (create, reserve, apply, confirm" in text
    # The targets, judged from those figures.
    assert "64 clients: 1.10x floor-7's orders/s (220.0 against 200.0; target ≥ 1.0x): met" in text
    assert "64 clients: 0.55x floor-4's orders/s (400.0; target ≥ 0.6x): NOT met" in text
    assert "8 clients: p99 60 ms, 1.20x floor-4's 50 ms (target ≤ 1.5x): met" in text
    assert "until settled: 6.00 ms (5.00 until the reply) against floor-7's 5.00" in text
    assert "outbox lag p99 at most 120 ms" in text and "at most 0.30 s" in text


def test_report_breaks_cpu_and_work_down_by_process_and_server() -> None:
    text = report([two_floor_run()], 10)
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| clients | system |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    assert header == [
        "clients",
        "system",
        "orders",
        "gateway",
        "all",
        "nats-server CPU",
        "NATS msgs",
        "NATS kB",
    ]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[start + 2 :]]
    rows = [r for r in rows if r[0] == "64"]
    assert rows == [
        ["64", "orderflow, to reply", "3.00", "2.00", "5.00", "-", "-", "-"],
        ["64", "orderflow, settled", "4.00", "2.00", "6.00", "0.50", "5.0", "2.50"],
        ["64", "floor-7", "2.00", "3.00", "5.00", "-", "-", "-"],
        ["64", "floor-4", "1.00", "1.00", "2.00", "-", "-", "-"],
    ]


def test_results_json_keeps_both_floors_and_reads_an_earlier_single_floor() -> None:
    run = two_floor_run()
    again = runs_from_json(json.loads(json.dumps(runs_to_json([run]))))
    assert again[0]["floors"] == run["floors"]
    assert again[0]["orderflow"] == run["orderflow"]
    # A results.json from before floor-4: its one floor was floor-7.
    earlier = runs_to_json([run])[0]
    earlier["floor"] = earlier.pop("floors")["floor-7"]
    [read] = runs_from_json([earlier])
    assert list(read["floors"]) == ["floor-7"]
    assert "| of floor-7 |" in report([read], 10)


@pytest.mark.parametrize(
    ("floor", "writes"),
    [
        # create, reserve, apply, confirm
        (FLOORS[1], {"orders": 2, "inventory": 1, "loyalty": 1}),
        # ... then commit stock, commit points, settle
        (FLOORS[0], {"orders": 3, "inventory": 2, "loyalty": 2}),
    ],
    ids=lambda v: getattr(v, "name", ""),
)
def test_a_floor_makes_its_calls_each_one_write(
    tmp_path: Path, floor: Any, writes: dict[str, int]
) -> None:
    urls = {label: f"sqlite+aiosqlite:///{tmp_path}/{label}.db" for label in writes}
    system = floor_system("per-service-sqlite", tmp_path, urls, floor)
    system.start()
    try:
        with httpx.Client(base_url=system.base_url, timeout=10) as client:
            for _ in range(5):
                assert client.post("/api/v1/orders").status_code == 201
    finally:
        system.stop()
    for label, per_order in writes.items():
        with sqlite3.connect(tmp_path / f"{label}.db") as db:
            assert db.execute("SELECT count(*) FROM floor_writes").fetchone()[0] == 5 * per_order


# -- the shared servers ----------------------------------------------------------------------

FORKING_SERVER = textwrap.dedent(
    """
    import subprocess, sys, time
    # A child that spins for half a second of CPU, then ends and is reaped.
    spin = "import time\\nwhile time.process_time() < 0.5: pass"
    subprocess.run([sys.executable, "-c", spin], check=True)
    print("reaped", flush=True)
    time.sleep(30)
    """
)


def test_server_cpu_counts_the_children_it_reaped() -> None:
    # PostgreSQL's backends end with their connections: their CPU must still count.
    server = subprocess.Popen([sys.executable, "-c", FORKING_SERVER], stdout=subprocess.PIPE)
    out = server.stdout
    assert out is not None
    try:
        assert out.readline() == b"reaped\n"
        used = server_cpu_seconds({"server": server.pid})
        assert 0.45 <= used["server"] <= 2.0
        assert cpu_seconds({"server": server.pid})["server"] < 0.45  # its own only
    finally:
        server.kill()
        server.wait()
        out.close()
    assert server_cpu_seconds({"gone": server.pid}) == {}


def test_listening_pid_names_the_server_on_a_port(flaky_server: str) -> None:
    port = int(flaky_server.split(":")[2].split("/")[0])
    pid = listening_pid(port)
    assert pid is not None
    assert b"server.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert listening_pid(free_port()) is None


@pytest.mark.postgres
def test_servers_count_commits_and_rows_in_the_run_databases_only() -> None:
    dbs = PgDatabases()  # no server: skipped, or failed under CI=true
    name = asyncio.run(dbs.create("bench")).rsplit("/", 1)[1]
    other = asyncio.run(dbs.create("other")).rsplit("/", 1)[1]
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]

    async def session(db: str, *statements: str) -> None:
        # A backend publishes its statistics as it ends, so none are pending after this.
        conn = await asyncpg.connect(f"{base}/{db}")
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    try:
        asyncio.run(session(name, "CREATE TABLE t (id int PRIMARY KEY, n int)"))
        servers = Servers({}, (("bench", name),))
        before = wait_stable(servers)
        asyncio.run(
            session(
                name,
                "INSERT INTO t VALUES (1, 0), (2, 0), (3, 0)",
                "UPDATE t SET n = 1 WHERE id = 1",
                "DELETE FROM t WHERE id = 2",
            )
        )
        asyncio.run(session(other, "CREATE TABLE u (id int)", "INSERT INTO u VALUES (1)"))
        after = wait_stable(servers, until=lambda w: w["pg_commits"] > before["pg_commits"])
        # Three statements and the connection's start, each a transaction; five rows;
        # nothing of the other database.
        assert after["pg_commits"] - before["pg_commits"] == 4
        assert after["pg_rows_written"] - before["pg_rows_written"] == 5
        assert after["pg_rows_written.bench"] == after["pg_rows_written"]  # per database too
        assert after["wal_kb"] > before["wal_kb"]
    finally:
        asyncio.run(dbs.drop_all())


def wait_stable(servers: Servers, until: Any = None, timeout: float = 10.0) -> dict[str, float]:
    """The counters once two readings a little apart agree (an ended backend's statistics
    arrive just after it ends), and `until` holds of them."""
    deadline = time.monotonic() + timeout
    last = servers.work()
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = servers.work()
        if now["pg_commits"] == last["pg_commits"] and (until is None or until(now)):
            return now
        last = now
    raise AssertionError(f"PostgreSQL's statistics did not settle: {last}")


def test_servers_count_messages_on_the_run_stream() -> None:
    from orderflow.events import BrokerUnavailableError, JetStreamBus, WireMessage
    from orderflow.events.registry import EVENT_TYPES

    tag = uuid.uuid4().hex[:10]

    def on_stream(work: Any) -> None:
        """work(bus) on a stream of the test's own, on an event loop of its own."""

        async def run() -> None:
            bus = JetStreamBus(NATS_URL, stream=f"TEST_{tag}", subject_prefix=f"test{tag}.ev")
            try:
                await work(bus)
            finally:
                await bus.close()

        asyncio.run(run())

    async def publish(bus: JetStreamBus) -> None:
        body = b"x" * 100
        messages = [WireMessage(EVENT_TYPES[0], {"ce-id": f"{tag}-{i}"}, body) for i in range(3)]
        assert await bus.publish(messages, 5.0) == 3

    async def create(bus: JetStreamBus) -> None:
        await bus.jetstream()

    async def delete(bus: JetStreamBus) -> None:
        await bus.delete_stream()

    try:
        on_stream(create)
    except BrokerUnavailableError as exc:
        if IN_CI:
            pytest.fail(f"NATS is required under CI=true: {exc}")
        pytest.skip(f"NATS JetStream not reachable at {NATS_URL}: {exc}")
    try:
        servers = Servers({}, (), (NATS_URL, f"TEST_{tag}"))
        before = servers.work()
        on_stream(publish)
        after = servers.work()
        assert after["nats_messages"] - before["nats_messages"] == 3
        assert after["nats_kb"] - before["nats_kb"] >= 0.3  # three 100-byte bodies and more
    finally:
        on_stream(delete)


# -- the hot item ----------------------------------------------------------------------------


def test_hot_item_report_sets_one_sku_beside_fifty() -> None:
    from bench.hot_item import report as hot_report

    def at(skus: int, concurrency: int, rps: int) -> Any:
        m = _at("sql", concurrency, rps, 10.0, {})
        m.mode = "1 sku" if skus == 1 else f"{skus} skus"
        return m

    results = {"sql": [at(1, 8, 400), at(50, 8, 1600), at(1, 64, 450), at(50, 64, 2000)]}
    text = hot_report(results, 10, "python -m bench.hot_item --parts sql")
    assert "| sql | 8 | 400.0 | 1.0 / 10.0 | 1600.0 | 1.0 / 10.0 | 0.25 | 0 / 0 |" in text
    assert "| sql | 64 | 450.0 |" in text
    assert "Reproduce: `python -m bench.hot_item --parts sql`" in text


@pytest.mark.postgres
@pytest.mark.skipif(
    shutil.which("pgbench") is None and not IN_CI,
    reason="pgbench not installed (apt-get install postgresql-client); under CI=true this fails",
)
def test_hot_item_sql_part_reserves_on_one_row_and_on_fifty(tmp_path: Path) -> None:
    from bench.hot_item import part_sql

    said: list[str] = []
    results = part_sql([4], 1, said.append, tmp_path)
    assert [(m.mode, m.concurrency) for m in results] == [("1 sku", 4), ("50 skus", 4)]
    for m in results:
        assert m.requests > 10 and not m.failed
        assert 0 < m.p50_ms <= m.p99_ms
    # Each committed reservation took exactly one unit: stock and rows agree.
    assert any(line.startswith("  sql: ") and line.endswith(": equal") for line in said)


# -- capacity ----------------------------------------------------------------------------------


def test_capacity_scales_the_measured_cpu_and_work_per_order() -> None:
    from bench.capacity import plan

    top = _at("orderflow", 64, 50, 900.0, {"orders": 9.0})
    top.mode = "per-service-pg"
    top.cpu_ms_settled = {"orders": 10.0, "inventory": 5.0, "loyalty": 6.0, "gateway": 3.0}
    top.server_cpu_ms_per_order = {"postgres": 8.0, "nats-server": 2.0}
    top.work_per_order = {
        "pg_commits": 8.0,
        "pg_commits.orders": 4.0,
        "pg_rows_written": 30.0,
        "wal_kb": 12.0,
        "nats_messages": 5.0,
        "nats_kb": 2.5,
    }
    low = _at("orderflow", 8, 30, 300.0, {"orders": 12.0})
    run = {"mode": "per-service-pg", "orderflow": [low, top], "floors": {}, "commit": "abc"}
    text = plan([run])
    assert "Basis: `per-service-pg` at 64 clients, commit abc: 50.0 orders/s" in text
    # orders: 1,000/s x 10 ms = 10 cores; at 60% a core each, 17 replicas, and one spare.
    assert "| orders | 10.00 | 1,000 x 10.00 / 1000 = 10.0 | ceil(10.0 / 0.6) + 1 = 18 |" in text
    assert "10,000 x 10.00 / 1000 = 100.0 | ceil(100.0 / 0.6) + 1 = 168 |" in text
    assert "| commits (orders database) | 4.0 | 4,000/s | 40,000/s |" in text
    assert "| WAL | 12.0 kB | 11.7 MB/s | 117.2 MB/s |" in text
    assert "| CPU | 8.00 ms | 8.0 cores used, 14 provisioned |" in text
    # 18 orders replicas, each pool opening up to 20 connections.
    assert "| connections, orders database | 20 per replica | 360 |" in text
    assert "| messages | 5.0 | 5,000/s | 50,000/s |" in text
