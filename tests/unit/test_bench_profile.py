"""bench/profile.py: which part a sample counts in, and how a process's CPU is split."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from bench.profile import part_of, read_stacks, shares

SITE = "/venv/lib/python3.11/site-packages"
LOOP = ["run (/src/orderflow/boot.py:119)", "run_forever (/project/uvloop/loop.c:33192)"]


def test_a_sample_counts_in_the_library_nearest_its_leaf() -> None:
    servicer = "wrapped (/src/orderflow/platform/grpc_server.py:163)"
    structlog = f"_proxy_to_logger ({SITE}/structlog/_base.py:223)"
    dumps = "dumps (/usr/lib/python3.11/json/__init__.py:231)"
    assert part_of([*LOOP, servicer, structlog, dumps]) == "logging"
    execute = f"do_execute ({SITE}/sqlalchemy/engine/default.py:942)"
    assert part_of([*LOOP, servicer, execute, "sqlite3_step (libsqlite3.so.0)"]) == "sql"
    assert part_of([*LOOP, servicer, "uuid4 (/usr/lib/python3.11/uuid.py:723)"]) == "orderflow"
    plan = "StatementPlan.run (/src/orderflow/platform/inline_sql.py:97)"
    assert part_of([*LOOP, servicer, plan]) == "sql"  # sqlite3's C code under it
    cython = f"0x7f42 ({SITE}/grpc/_cython/cygrpc.cpython-311-x86_64-linux-gnu.so)"
    assert part_of([*LOOP, cython]) == "grpc"
    assert part_of(LOOP) == "event loop"


def test_the_follow_up_of_events_and_waiting_are_parts_of_their_own() -> None:
    relay = "OutboxRelay._run (/src/orderflow/events/relay.py:120)"
    execute = f"do_execute ({SITE}/sqlalchemy/engine/default.py:942)"
    assert part_of([*LOOP, relay, execute]) == "events"
    assert part_of([*LOOP, "epoll_pwait (/usr/lib/x86_64-linux-gnu/libc.so.6)"]) == "idle"


def test_threads_split_by_their_samples_or_by_their_name(tmp_path: Path) -> None:
    raw = tmp_path / "orders.txt"
    log = f"_proxy_to_logger ({SITE}/structlog/_base.py:223)"
    execute = f"do_execute ({SITE}/sqlalchemy/engine/default.py:942)"
    idle = "epoll_pwait (/usr/lib/x86_64-linux-gnu/libc.so.6)"
    main = 'process 7:"python -m orderflow serve orders";thread (7): MainThread'
    raw.write_text(
        f"{main};{';'.join(LOOP)};{log} 30\n"
        f"{main};{';'.join(LOOP)};{execute} 10\n"
        f"{main};{';'.join(LOOP)};{idle} 960\n"
        f"thread (8): Thread-2 (_poll_wrapper);{idle} 1000\n"
    )
    samples = read_stacks(raw)
    assert samples[7] == ("MainThread", Counter({"logging": 30, "sql": 10, "idle": 960}))
    threads = {7: ("orderflow", 2.0), 8: ("orderflow", 0.5), 9: ("event_engine", 0.25)}
    assert shares(threads, samples) == {"logging": 1.5, "sql": 0.5, "grpc": 0.75}
