"""The hot-item limit: how many reservations a second one sku's row takes on PostgreSQL.

Every reservation of a sku updates that sku's one `items` row (available -> reserved), and
PostgreSQL holds the row's lock from the UPDATE until the transaction's commit is durable:
reservations of one sku run one after the other, however many cores there are. This
measures that at each concurrency with every reservation on ONE sku, then spread over 50
(the catalog of bench/run.py; as one sku split into 50 rows would spread them), one after
the other, on the local PostgreSQL:

- `sql`: Reserve's transaction as SQL, from pgbench (C, no Python in the way): UPDATE the
  item ... RETURNING, INSERT the reservation, COMMIT — on a database migrated by orderflow
  itself. The row's own ceiling on this PostgreSQL.
- `sql-update-last`: the same with the INSERT first, so the row is locked for the UPDATE
  and the COMMIT only: what reordering Reserve's statements would give.
- `service`: the inventory service alone (`orderflow serve inventory`, its events on a
  JetStream stream of the run's own), ReserveStock over gRPC from a load process of its
  own. After each level the reserved stock is checked against the reservations answered.
- `system`: orderflow per service on PostgreSQL with JetStream, as `make bench` runs it,
  POST /api/v1/orders with wrk: the inventory row is then written twice per order
  (reserved when placed, sold when the order's event is handled).

    python -m bench.hot_item                              # every part, 1, 8, 32 clients, 10 s
    python -m bench.hot_item --parts sql --duration 5 --record bench/HOT_ITEM.md

Run it on a quiet machine (the notes' QUIET protocol): it measures a limit.
docs/capacity.md reads the recorded figures (bench/HOT_ITEM.md).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import grpc

from bench.grpc_load import nearest_rank
from bench.run import (
    SKUS,
    Measurement,
    databases,
    jetstream,
    measurement,
    orderflow_system,
    parse_wrk,
    run_wrk,
    seed,
    wait_for_events,
)
from tests.system import Process, _base_env, free_port

HERE = Path(__file__).resolve().parent
PARTS = ("sql", "sql-update-last", "service", "system")
STOCK = 10**9  # the most an item may hold; runs out at no rate this machine reaches
PRICE = 1000
Say = Callable[[str], None]

# Reserve's transaction on PostgreSQL (inventory/storage.py: take_stock, add_if_absent),
# one unit of one sku: the statements orderflow sends, as pgbench sends them. The row is
# locked from the UPDATE to the end of the COMMIT.
_TAKE = """UPDATE items SET available = available - 1, reserved = reserved + 1, updated_us = 1
  WHERE sku = 'HOT-' || :n AND available >= 1 RETURNING price, available;
"""
_RECORD = """INSERT INTO reservations (order_id, state, currency, lines, created_us, updated_us)
  VALUES (md5(random()::text || clock_timestamp()::text), 'RESERVED', 'USD',
          '[{"sku": "HOT", "quantity": 1, "unit_price": 1000}]', 1, 1)
  ON CONFLICT (order_id) DO NOTHING;
"""
_SCRIPT = "\\set n random(0, :skus - 1)\nBEGIN;\n{}{}END;\n"
PGBENCH_SCRIPTS = {
    # As orderflow does it: take the stock, record the reservation, commit.
    "sql": _SCRIPT.format(_TAKE, _RECORD),
    # The same statements with the stock taken last: the row is locked for one statement
    # and the commit, not for the round trip of the INSERT too.
    "sql-update-last": _SCRIPT.format(_RECORD, _TAKE),
}
_TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")
_FAILED = re.compile(r"number of failed transactions: (\d+)")
_DONE = re.compile(r"number of transactions actually processed: (\d+)")


# -- sql: pgbench --------------------------------------------------------------------------


def migrate_inventory(url: str) -> None:
    env = _base_env({"ORDERFLOW_INVENTORY_DATABASE_URL": url})
    subprocess.run(
        [sys.executable, "-m", "orderflow", "migrate", "inventory"],
        env=env,
        check=True,
        capture_output=True,
    )


def psql(url: str, sql: str) -> str:
    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    out = subprocess.run(
        ["psql", dsn, "-qAtX", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def add_hot_items(url: str, count: int) -> None:
    psql(
        url,
        "INSERT INTO items (sku, name, price, currency, available, reserved, sold, received, "
        "created_us, updated_us, low_stock) "
        f"SELECT 'HOT-' || n, 'Hot ' || n, {PRICE}, 'USD', {STOCK}, 0, 0, {STOCK}, 1, 1, false "
        f"FROM generate_series(0, {count - 1}) AS n",
    )


def run_pgbench(
    url: str, concurrency: int, seconds: float, skus: int, workdir: Path, part: str = "sql"
) -> dict:
    """pgbench's RESULT fields (as bench/order.lua prints them) for Reserve's transaction."""
    pgbench = shutil.which("pgbench")
    if pgbench is None:
        raise SystemExit("pgbench is not installed (Debian: apt-get install postgresql-client)")
    script = workdir / f"{part}.sql"
    script.write_text(PGBENCH_SCRIPTS[part])
    logs = workdir / f"log-{part}-{skus}-{concurrency}"
    logs.mkdir()
    parts = urlsplit(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    out = subprocess.run(
        [
            pgbench,
            "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432),
            "-U", parts.username or "postgres", parts.path.lstrip("/"),
            "-n", "-M", "prepared", "-f", str(script), "-D", f"skus={skus}",
            "-c", str(concurrency), "-j", str(min(concurrency, 2)), "-T", str(round(seconds)),
            "-l", f"--log-prefix={logs}/tx",
        ],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    text = out.stdout + out.stderr
    tps = _TPS.search(text)
    done = _DONE.search(text)
    if out.returncode != 0 or tps is None or done is None:
        raise RuntimeError(f"pgbench failed:\n{text[-3000:]}")
    # Per-transaction log lines: client, transaction, latency in µs, script, epoch s, µs.
    latencies = [
        int(line.split()[2]) for log in logs.iterdir() for line in log.read_text().splitlines()
    ]
    failed = _FAILED.search(text)
    requests = int(done.group(1))
    return {
        "requests": requests,
        "duration_us": int(requests / float(tps.group(1)) * 1e6) if requests else 0,
        "p50_us": nearest_rank(latencies, 50),
        "p99_us": nearest_rank(latencies, 99),
        "non2xx": int(failed.group(1)) if failed else 0,
        "connect": 0,
        "read": 0,
        "write": 0,
        "timeout": 0,
    }


def part_sql(
    levels: list[int], seconds: float, say: Say, workdir: Path, part: str = "sql"
) -> list[Measurement]:
    results = []
    with databases("per-service-pg", workdir, ["inventory"]) as urls:
        url = urls["inventory"]
        migrate_inventory(url)
        add_hot_items(url, SKUS)
        for concurrency, skus in itertools.product(levels, (1, SKUS)):
            fields = run_pgbench(url, concurrency, seconds, skus, workdir, part)
            results.append(_measured(part, skus, concurrency, fields, say))
        reserved = int(psql(url, "SELECT sum(reserved) FROM items"))
        rows = int(psql(url, "SELECT count(*) FROM reservations"))
        _check(say, part, reserved, rows, "units reserved", "reservation rows")
    return results


# -- service: the inventory service alone, ReserveStock over gRPC ----------------------------


async def reserve_load(target: str, concurrency: int, seconds: float, skus: int) -> dict[str, int]:
    """ReserveStock at a fixed concurrency for a fixed time: RESULT fields."""
    from orderflow.inventory.v1 import inventory_pb2 as pb
    from orderflow.inventory.v1 import inventory_pb2_grpc as pb_grpc

    counter = itertools.count()
    latencies: list[int] = []
    failures = timeouts = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.InventoryServiceStub(channel)
        started = time.perf_counter()
        end = started + seconds

        async def client() -> None:
            nonlocal failures, timeouts
            while time.perf_counter() < end:
                request = pb.ReserveStockRequest(
                    order_id=str(uuid.uuid4()),
                    lines=[pb.StockLine(sku=f"HOT-{next(counter) % skus}", quantity=1)],
                )
                sent = time.perf_counter()
                try:
                    await stub.ReserveStock(request, timeout=10)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        timeouts += 1
                    else:
                        failures += 1
                latencies.append(int((time.perf_counter() - sent) * 1e6))

        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "duration_us": int(elapsed * 1e6),
        "p50_us": nearest_rank(latencies, 50),
        "p99_us": nearest_rank(latencies, 99),
        "non2xx": failures,
        "connect": 0,
        "read": 0,
        "write": 0,
        "timeout": timeouts,
    }


def run_reserve_load(target: str, concurrency: int, seconds: float, skus: int) -> dict:
    """reserve_load in a process of its own, so its CPU is not the driver's."""
    out = subprocess.run(
        [
            sys.executable, "-m", "bench.hot_item", "load", target,
            "--concurrency", str(concurrency), "--seconds", str(seconds), "--skus", str(skus),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        cwd=HERE.parent,
    )  # fmt: skip
    return parse_wrk(out.stdout + out.stderr)


async def _items(target: str, create: int = 0) -> int:
    """Create HOT-0.. (create > 0); the units reserved over every HOT item."""
    from orderflow.inventory.v1 import inventory_pb2 as pb
    from orderflow.inventory.v1 import inventory_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.InventoryServiceStub(channel)
        for n in range(create):
            await stub.CreateItem(
                pb.CreateItemRequest(sku=f"HOT-{n}", name=f"Hot {n}", price=PRICE, stock=STOCK),
                timeout=10,
            )
        reserved = 0
        for n in range(SKUS):
            reply = await stub.GetItem(pb.GetItemRequest(sku=f"HOT-{n}"), timeout=10)
            reserved += reply.item.reserved
        return reserved


def part_service(
    levels: list[int], seconds: float, say: Say, workdir: Path, nats_url: str
) -> list[Measurement]:
    results = []
    with (
        databases("per-service-pg", workdir, ["inventory"]) as urls,
        jetstream("per-service-pg", nats_url) as events_env,
    ):
        port = free_port()
        env = _base_env(
            {
                **events_env,
                "ORDERFLOW_LOG_LEVEL": "INFO",  # as bench/run.py runs it
                "ORDERFLOW_INVENTORY_PORT": str(port),
                "ORDERFLOW_INVENTORY_DATABASE_URL": urls["inventory"],
            }
        )
        argv = [sys.executable, "-m", "orderflow", "serve", "inventory"]
        service = Process("inventory", argv, env, port, workdir / "inventory.log")
        service.start()
        try:
            target = f"127.0.0.1:{port}"
            asyncio.run(_items(target, create=SKUS))
            run_reserve_load(target, 8, 2, SKUS)  # warm-up
            answered = asyncio.run(_items(target))
            for concurrency, skus in itertools.product(levels, (1, SKUS)):
                fields = run_reserve_load(target, concurrency, seconds, skus)
                m = _measured("service", skus, concurrency, fields, say)
                answered += m.requests - m.errors
                results.append(m)
            reserved = asyncio.run(_items(target))
            _check(say, "service", reserved, answered, "units reserved", "reservations answered")
        finally:
            service.stop()
    return results


# -- system: orderflow per service on PostgreSQL, wrk ---------------------------------------


def part_system(
    levels: list[int], seconds: float, say: Say, workdir: Path, nats_url: str
) -> list[Measurement]:
    results = []
    mode = "per-service-pg"
    with (
        databases(mode, workdir, ["orders", "inventory", "loyalty"]) as urls,
        jetstream(mode, nats_url) as events_env,
    ):
        system = orderflow_system(mode, workdir, urls, events_env)
        system.start()
        try:
            system.wait_ready(60)
            seed(system.base_url)
            url = f"{system.base_url}/api/v1/orders"
            run_wrk(url, 8, 2)  # warm-up
            for concurrency, skus in itertools.product(levels, (1, SKUS)):
                since_us = time.time_ns() // 1000
                fields = run_wrk(url, concurrency, seconds, skus=skus)
                m = _measured("system", skus, concurrency, fields, say)
                if wait_for_events(urls, since_us, time.time_ns() // 1000) is None:
                    say("    orders not all settled after 120 s")
                    m.errors += 1
                results.append(m)
        finally:
            system.stop()
    return results


# -- the run -------------------------------------------------------------------------------


def _measured(part: str, skus: int, concurrency: int, fields: dict, say: Say) -> Measurement:
    m = measurement(part, f"{skus} sku" if skus == 1 else f"{skus} skus", concurrency, fields, {})
    say(
        f"  {part}, {m.mode}, {concurrency} clients: {m.rps:8.1f} reservations/s  "
        f"p50 {m.p50_ms:6.1f} ms  p99 {m.p99_ms:6.1f} ms  errors {m.errors}"
    )
    return m


def _check(say: Say, part: str, got: int, want: int, what: str, against: str) -> None:
    """Stock conservation after a part: one unit per reservation, no more, no less."""
    ok = got == want
    say(f"  {part}: {got} {what}, {want} {against}: {'equal' if ok else 'NOT EQUAL'}")
    if not ok:
        raise SystemExit(f"{part}: {what} {got} != {against} {want}")


def report(
    results: dict[str, list[Measurement]], seconds: float, command: str, when: str = ""
) -> str:
    """The results as Markdown; `when`: the run's date and commit (default: now, HEAD)."""
    when = when or f"{time.strftime('%Y-%m-%d', time.gmtime())}, commit {_commit()}"
    lines = [
        "# Hot item: reservations a second on one sku's row (PostgreSQL)",
        "",
        f"Each level runs {seconds:g} s with every reservation on one sku, then spread over "
        f"{SKUS} skus, same clients; {when}. Parts (bench/hot_item.py): *sql* Reserve's "
        "transaction from pgbench; *sql-update-last* the same with its UPDATE after the "
        "INSERT; *service* ReserveStock on the inventory service alone over gRPC; *system* "
        "POST /api/v1/orders on orderflow per service (PostgreSQL, JetStream) with wrk. "
        "docs/capacity.md reads these.",
        "",
        f"Reproduce: `{command}`.",
        "",
        "| part | clients | one sku /s | p50 / p99 ms | 50 skus /s | p50 / p99 ms "
        "| one sku / 50 skus | errors (one / 50) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for part, ms in results.items():
        one = [m for m in ms if m.mode == "1 sku"]
        spread = [m for m in ms if m.mode != "1 sku"]
        for a, b in zip(one, spread, strict=True):
            lines.append(
                f"| {part} | {a.concurrency} | {a.rps:.1f} | {a.p50_ms:.1f} / {a.p99_ms:.1f} "
                f"| {b.rps:.1f} | {b.p50_ms:.1f} / {b.p99_ms:.1f} "
                f"| {a.rps / b.rps if b.rps else 0:.2f} | {a.errors} / {b.errors} |"
            )
    return "\n".join([*lines, ""])


def _commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["load"]:
        parser = argparse.ArgumentParser(prog="bench.hot_item load")
        parser.add_argument("target")
        parser.add_argument("--concurrency", type=int, default=8)
        parser.add_argument("--seconds", type=float, default=10.0)
        parser.add_argument("--skus", type=int, default=1)
        args = parser.parse_args(argv[1:])
        fields = asyncio.run(reserve_load(args.target, args.concurrency, args.seconds, args.skus))
        print("RESULT " + " ".join(f"{k}={v}" for k, v in fields.items()), flush=True)
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument(
        "--nats-url", default=os.environ.get("ORDERFLOW_NATS_URL", "nats://127.0.0.1:4222")
    )
    parser.add_argument("--record", type=Path, help="write the results (Markdown) here")
    parser.add_argument("--json", type=Path, help="also write raw results as JSON")
    parser.add_argument(
        "--from-json", type=Path, help="only rewrite the report from an earlier run's JSON"
    )
    args = parser.parse_args(argv)
    if args.from_json:
        raw = json.loads(args.from_json.read_text())
        results = {p: [Measurement(**m) for m in ms] for p, ms in raw["parts"].items()}
        text = report(results, raw["seconds"], raw["command"], raw["when"])
        print(text)
        if args.record:
            args.record.write_text(text)
        return 0
    parts = [p for p in args.parts.split(",") if p]
    if set(parts) - set(PARTS):
        parser.error(f"parts are {', '.join(PARTS)}")
    levels = [int(c) for c in args.concurrency.split(",")]
    say = lambda line: print(line, flush=True)  # noqa: E731
    results: dict[str, list[Measurement]] = {}
    with tempfile.TemporaryDirectory(prefix="orderflow-hot-") as tmp:
        for part in parts:
            say(f"[{part}]")
            workdir = Path(tmp) / part
            workdir.mkdir()
            if part.startswith("sql"):
                results[part] = part_sql(levels, args.duration, say, workdir, part)
            elif part == "service":
                results[part] = part_service(levels, args.duration, say, workdir, args.nats_url)
            else:
                results[part] = part_system(levels, args.duration, say, workdir, args.nats_url)
    command = (
        f"python -m bench.hot_item --parts {','.join(parts)} --concurrency {args.concurrency} "
        f"--duration {args.duration:g}"
    )
    when = f"{time.strftime('%Y-%m-%d', time.gmtime())}, commit {_commit()}"
    text = report(results, args.duration, command, when)
    print(text)
    if args.record:
        args.record.write_text(text)
    if args.json:
        parts_json = {p: [dataclasses.asdict(m) for m in ms] for p, ms in results.items()}
        args.json.write_text(
            json.dumps(
                {
                    "when": when,
                    "seconds": args.duration,
                    "command": command,
                    "parts": parts_json,
                },
                indent=2,
            )
        )
    failed = [m for ms in results.values() for m in ms if m.failed]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
