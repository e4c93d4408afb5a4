"""`orderflow events tail | parked | redrive`, run as the real command against real
databases (SQLite and PostgreSQL, one per service) and real NATS JetStream (127.0.0.1:4222
or ORDERFLOW_TEST_NATS; a stream and subject prefix of each test's own).

The services' databases here hold the event tables (what each service's migration
creates) and events written through the machinery (`append`, a consumer that parks), as a
running service would leave them.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData

from orderflow.events import (
    BrokerUnavailableError,
    ConsumerRunner,
    Event,
    EventTables,
    InProcessBus,
    JetStreamBus,
    append,
    event_tables,
    list_parked,
)
from orderflow.events.v1 import events_pb2
from orderflow.platform.db import Database, Rollback, UnitOfWork, create_database

NATS_URL = os.environ.get("ORDERFLOW_TEST_NATS", "nats://127.0.0.1:4222")
IN_CI = os.environ.get("CI", "").lower() == "true"
SERVICES = ("orders", "inventory", "loyalty")
CE_KEYS = {"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data"}


@dataclass
class ServiceDb:
    name: str
    url: str
    database: Database
    tables: EventTables

    def begin(self) -> UnitOfWork:
        return UnitOfWork(self.database)

    async def emit(self, *messages: Any, fail: bool = False) -> list[Event]:
        async with self.begin() as uow:
            events = await append(uow.connection, self.tables, *messages)
            if fail:
                raise Rollback
            await uow.commit()
        return events


@dataclass
class Dbs:
    """One database per service, and the environment that points the CLI at them."""

    services: dict[str, ServiceDb]
    env: dict[str, str]
    cwd: Path

    def __getitem__(self, name: str) -> ServiceDb:
        return self.services[name]


@pytest.fixture
async def dbs(make_db_url: Callable[[str], Awaitable[str]], tmp_path: Path) -> AsyncIterator[Dbs]:
    services = {}
    for name in SERVICES:
        url = await make_db_url(name)
        database = create_database(url)
        metadata = MetaData()
        tables = event_tables(metadata)
        async with database.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        services[name] = ServiceDb(name, url, database, tables)
    env = {f"ORDERFLOW_{n.upper()}_DATABASE_URL": s.url for n, s in services.items()}
    yield Dbs(services, env, tmp_path)
    for service in services.values():
        await service.database.dispose()


def _base_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ORDERFLOW_") or k == "ORDERFLOW_TEST_NATS"
    }
    return {**env, **extra}


async def cli(
    *args: str, env: Mapping[str, str], cwd: Path, timeout: float = 30.0
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orderflow",
        "events",
        *args,
        env=_base_env(env),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"`events {' '.join(args)}` did not end: {err.decode()}") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Tail:
    """A running `orderflow events tail ...`, read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, *args: str, env: Mapping[str, str], cwd: Path) -> Tail:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "orderflow",
            "events",
            "tail",
            *args,
            env=_base_env(env),
            cwd=cwd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        tail = cls(proc)
        assert proc.stderr is not None
        # It says what it follows once it has taken its starting point.
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert line.startswith(b"following"), line
        return tail

    async def events(self, n: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        assert self.proc.stdout is not None
        out = []
        for _ in range(n):
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            assert line, "tail ended early"
            out.append(json.loads(line))
        return out

    async def nothing_more(self, wait: float = 1.5) -> None:
        assert self.proc.stdout is not None
        with pytest.raises(TimeoutError):
            line = await asyncio.wait_for(self.proc.stdout.readline(), wait)
            raise AssertionError(f"unexpected line: {line!r}")

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
        await self.proc.communicate()


def confirmed(order_id: str, total: int = 1250) -> events_pb2.OrderConfirmed:
    return events_pb2.OrderConfirmed(
        order_id=order_id,
        customer_id="c-1",
        lines=[events_pb2.OrderLine(sku="MUG-1", quantity=1, unit_price=total)],
        currency="USD",
        subtotal=total,
        total=total,
        points_earned=total // 100,
    )


def assert_cloudevent(line: dict[str, Any], event: Event) -> None:
    assert set(line) >= CE_KEYS
    assert line["specversion"] == "1.0"
    assert line["id"] == event.id
    assert line["source"] == f"orderflow/{event.source}"
    assert line["type"] == event.type.ce_type
    assert line["subject"] == event.subject
    assert line["datacontenttype"] == "application/json"
    assert line["time"].endswith("Z")


# -- tail from the outboxes (no broker) ---------------------------------------------------


async def test_tail_from_start_prints_every_committed_event_of_every_service(
    dbs: Dbs,
) -> None:
    first = await dbs["orders"].emit(confirmed("o-1", 1250), confirmed("o-2", 300))
    with pytest.raises(Rollback):
        await dbs["orders"].emit(confirmed("o-rolled-back"), fail=True)
    [stock] = await dbs["inventory"].emit(events_pb2.StockCommitted(order_id="o-1"))
    [points] = await dbs["loyalty"].emit(
        events_pb2.PointsChanged(
            customer_id="c-1", delta=12, balance=512, reason="earned", order_id="o-1"
        )
    )
    code, out, err = await cli("tail", "--from-start", "--count", "4", env=dbs.env, cwd=dbs.cwd)
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 4
    by_id = {line["id"]: line for line in lines}
    expected = [*first, stock, points]
    assert set(by_id) == {e.id for e in expected}
    for event in expected:
        assert_cloudevent(by_id[event.id], event)
    # One service's events keep their order.
    assert [line["subject"] for line in lines if line["source"] == "orderflow/orders"] == [
        "o-1",
        "o-2",
    ]
    assert by_id[first[0].id]["data"]["total"] == "1250"  # int64 in proto3 JSON
    assert by_id[first[0].id]["data"]["lines"][0]["sku"] == "MUG-1"
    assert by_id[points.id]["data"]["balance"] == "512"
    assert "o-rolled-back" not in out


async def test_tail_follows_new_events_only_and_filters_by_type(dbs: Dbs) -> None:
    await dbs["orders"].emit(confirmed("o-before"))
    tail = await Tail.start("--type", "order.confirmed", "--poll", "0.1", env=dbs.env, cwd=dbs.cwd)
    try:
        await dbs["orders"].emit(events_pb2.OrderSettled(order_id="o-before"))
        [new] = await dbs["orders"].emit(confirmed("o-new"))
        await dbs["inventory"].emit(events_pb2.StockCommitted(order_id="o-new"))
        [line] = await tail.events(1)
        assert_cloudevent(line, new)
        await tail.nothing_more()
        [later] = await dbs["orders"].emit(confirmed("o-later"))
        [line] = await tail.events(1)
        assert line["id"] == later.id
    finally:
        await tail.stop()
    # The type can also be given as its ce-type.
    code, out, err = await cli(
        "tail",
        "--from-start",
        "--type",
        "orderflow.order.settled.v1",
        "--count",
        "1",
        env=dbs.env,
        cwd=dbs.cwd,
    )
    assert code == 0, err
    assert json.loads(out)["type"] == "orderflow.order.settled.v1"


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_tail_shows_an_event_that_commits_after_one_with_a_higher_seq(dbs: Dbs) -> None:
    orders = dbs["orders"]
    tail: Tail | None = None
    try:
        # Open before tail starts: its seq is below the highest committed when it starts.
        async with orders.begin() as before_start:
            [late] = await append(before_start.connection, orders.tables, confirmed("o-slow"))
            await orders.emit(confirmed("o-fast"))  # committed before tail: not shown
            tail = await Tail.start("--poll", "0.1", env=dbs.env, cwd=dbs.cwd)
            async with orders.begin() as while_running:
                # Drawn while tail runs, committed after a higher seq was shown.
                [later] = await append(
                    while_running.connection, orders.tables, confirmed("o-slow-2")
                )
                [newer] = await orders.emit(confirmed("o-newer"))
                [line] = await tail.events(1)
                assert line["id"] == newer.id
                await while_running.commit()
            [line] = await tail.events(1)
            assert line["id"] == later.id
            await before_start.commit()
        [line] = await tail.events(1)
        assert line["id"] == late.id
        await tail.nothing_more(1.0)
    finally:
        if tail is not None:
            await tail.stop()


async def test_tail_in_one_process_mode_reads_the_data_dir(tmp_path: Path) -> None:
    """`orderflow run --data-dir D` keeps D/<service>.db; tail --data-dir D reads them."""
    data = tmp_path / "state"
    data.mkdir()
    url = f"sqlite+aiosqlite:///{data / 'orders.db'}"
    database = create_database(url)
    metadata = MetaData()
    tables = event_tables(metadata)
    try:
        async with database.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        orders = ServiceDb("orders", url, database, tables)
        [event] = await orders.emit(confirmed("o-1"))
    finally:
        await database.dispose()
    code, out, err = await cli(
        "tail", "--from-start", "--count", "1", "--data-dir", str(data), env={}, cwd=tmp_path
    )
    assert code == 0, err
    assert json.loads(out)["id"] == event.id
    # The services that never ran there have no file: noted, not created.
    assert "inventory: no database at" in err
    assert not (data / "inventory.db").exists()


async def test_tail_says_what_is_wrong(dbs: Dbs, tmp_path: Path) -> None:
    code, _, err = await cli("tail", "--type", "order.shipped", env=dbs.env, cwd=dbs.cwd)
    assert code == 2 and "unknown event type" in err
    # No database anywhere.
    code, _, err = await cli("tail", env={}, cwd=tmp_path)
    assert code == 2 and "no service database found" in err
    # A database without the event tables (not migrated).
    bare = f"sqlite+aiosqlite:///{tmp_path / 'bare.db'}"
    database = create_database(bare)
    async with database.engine.begin() as conn:
        await conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    await database.dispose()
    code, _, err = await cli(
        "tail", env={**dbs.env, "ORDERFLOW_ORDERS_DATABASE_URL": bare}, cwd=dbs.cwd
    )
    assert code == 2
    assert "orders: database" in err and "orderflow migrate orders" in err
    # No broker where ORDERFLOW_NATS_URL says.
    code, _, err = await cli(
        "tail", env={**dbs.env, "ORDERFLOW_NATS_URL": "nats://127.0.0.1:1"}, cwd=dbs.cwd
    )
    assert code == 2 and "no JetStream at nats://127.0.0.1:1" in err


# -- tail from JetStream -------------------------------------------------------------------


@pytest.fixture
async def stream() -> AsyncIterator[tuple[JetStreamBus, dict[str, str]]]:
    tag = uuid.uuid4().hex[:10]
    bus = JetStreamBus(NATS_URL, stream=f"TEST_{tag}", subject_prefix=f"test{tag}.events")
    try:
        await bus.jetstream()
    except BrokerUnavailableError as exc:
        if IN_CI:
            pytest.fail(f"required under CI=true: NATS at {NATS_URL}: {exc}")
        pytest.skip(f"NATS JetStream not reachable at {NATS_URL}: {exc}")
    env = {
        "ORDERFLOW_NATS_URL": NATS_URL,
        "ORDERFLOW_EVENTS_STREAM": bus.stream,
        "ORDERFLOW_EVENTS_SUBJECT_PREFIX": bus.subject_prefix,
    }
    yield bus, env
    await bus.delete_stream()
    await bus.close()


async def test_tail_reads_the_stream_from_its_start_or_only_new_events(
    stream: tuple[JetStreamBus, dict[str, str]], tmp_path: Path
) -> None:
    bus, env = stream
    old = [Event.new(confirmed("o-1")), Event.new(events_pb2.StockCommitted(order_id="o-1"))]
    assert await bus.publish([e.wire() for e in old], 5.0) == 2
    code, out, err = await cli("tail", "--from-start", "--count", "2", env=env, cwd=tmp_path)
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    for line, event in zip(lines, old, strict=True):
        assert_cloudevent(line, event)
    assert lines[0]["data"]["orderId"] == "o-1"

    tail = await Tail.start("--type", "stock.committed", env=env, cwd=tmp_path)
    try:
        new = [
            Event.new(confirmed("o-2")),
            Event.new(events_pb2.StockCommitted(order_id="o-2")),
            Event.new(events_pb2.StockCommitted(order_id="o-3")),
        ]
        # Published until the ordered consumer (push) has surely been set up.
        assert await bus.publish([e.wire() for e in new], 5.0) == 3
        lines = await tail.events(2)
        assert [line["id"] for line in lines] == [new[1].id, new[2].id]
        await tail.nothing_more()
    finally:
        await tail.stop()


async def test_tail_from_the_outbox_even_with_a_broker(
    dbs: Dbs, stream: tuple[JetStreamBus, dict[str, str]]
) -> None:
    _, env = stream
    [event] = await dbs["orders"].emit(confirmed("o-unpublished"))
    code, out, err = await cli(
        "tail", "--outbox", "--from-start", "--count", "1", env={**dbs.env, **env}, cwd=dbs.cwd
    )
    assert code == 0, err
    assert json.loads(out)["id"] == event.id


# -- parked and redrive ----------------------------------------------------------------------


@dataclass
class Consumer:
    """inventory's consumer of order.confirmed over the in-process bus, whose handler
    fails for the orders in `broken`; effects are recorded in `done`."""

    db: ServiceDb
    bus: InProcessBus
    runner: ConsumerRunner[UnitOfWork]
    broken: set[str]
    done: list[str]


@pytest.fixture
async def consumer(dbs: Dbs) -> AsyncIterator[Consumer]:
    bus = InProcessBus()
    broken: set[str] = set()
    done: list[str] = []

    async def handle(uow: UnitOfWork, event: Event) -> None:
        assert isinstance(event.data, events_pb2.OrderConfirmed)
        if event.data.order_id in broken:
            raise ValueError(f"sku MUG-1 unknown for {event.data.order_id}")
        done.append(event.data.order_id)

    db = dbs["inventory"]
    runner: ConsumerRunner[UnitOfWork] = ConsumerRunner(
        "inventory",
        bus,
        db.begin,
        db.tables,
        {"order.confirmed": handle},
        max_attempts=2,
        fetch_timeout=0.05,
        retry_delay=0.01,
        redrive_every=0.1,
    )
    await runner.start()
    yield Consumer(db, bus, runner, broken, done)
    await runner.stop()


async def park(consumer: Consumer, order_id: str) -> Event:
    consumer.broken.add(order_id)
    event = Event.new(confirmed(order_id))
    # Taken once the consumer has parked it (after max_attempts failures).
    assert await consumer.bus.publish([event.wire()], 10.0) == 1
    return event


async def test_parked_lists_and_redrive_handles_a_parked_event(
    dbs: Dbs, consumer: Consumer
) -> None:
    code, out, err = await cli("parked", env=dbs.env, cwd=dbs.cwd)
    assert code == 0, err
    assert out == "" and "0 parked event(s)" in err
    poison = await park(consumer, "o-poison")

    code, out, err = await cli("parked", env=dbs.env, cwd=dbs.cwd)
    assert code == 0, err
    head, row = out.splitlines()
    assert head.split() == [
        "ID",
        "CONSUMER",
        "TYPE",
        "SUBJECT",
        "ATTEMPTS",
        "PARKED",
        "AT",
        "LAST",
        "ERROR",
    ]
    assert row.split()[:5] == [poison.id, "inventory", "order.confirmed", "o-poison", "2"]
    assert "sku MUG-1 unknown for o-poison" in row
    code, out, err = await cli("parked", "--json", env=dbs.env, cwd=dbs.cwd)
    [listed] = [json.loads(line) for line in out.splitlines()]
    assert {k: listed[k] for k in ("id", "consumer", "type", "subject", "attempts")} == {
        "id": poison.id,
        "consumer": "inventory",
        "type": "order.confirmed",
        "subject": "o-poison",
        "attempts": 2,
    }
    assert listed["nats_subject"] == "orderflow.events.order.confirmed"
    assert "ValueError" in listed["last_error"] and listed["parked_at"].endswith("+00:00")

    # Still broken: redriven, fails again, stays parked with one attempt more.
    code, out, err = await cli("redrive", poison.id, env=dbs.env, cwd=dbs.cwd)
    assert code == 1, err
    assert f"failed again: {poison.id} by inventory (attempts 3)" in out
    assert [p.attempts for p in await list_parked(consumer.db.begin, consumer.db.tables)] == [3]
    assert consumer.done == []

    # Fixed: redriven, handled once, gone from the list.
    consumer.broken.clear()
    code, out, err = await cli("redrive", poison.id, env=dbs.env, cwd=dbs.cwd)
    assert code == 0, err
    assert f"handled: {poison.id} by inventory" in out
    assert consumer.done == ["o-poison"]
    code, out, _ = await cli("parked", env=dbs.env, cwd=dbs.cwd)
    assert out == ""
    # Nothing left to redrive.
    code, _, err = await cli("redrive", poison.id, env=dbs.env, cwd=dbs.cwd)
    assert code == 1 and f"no parked event {poison.id}" in err
    assert consumer.done == ["o-poison"]


async def test_redrive_without_a_running_consumer_waits_then_says_so(
    dbs: Dbs, consumer: Consumer
) -> None:
    poison = await park(consumer, "o-later")
    await consumer.runner.stop()  # the service is down
    consumer.broken.clear()
    started = time.monotonic()
    code, out, err = await cli("redrive", poison.id, "--wait", "1", env=dbs.env, cwd=dbs.cwd)
    assert code == 3, err
    assert time.monotonic() - started >= 1
    assert "not handled yet" in out and "inventory service running" in out
    [parked] = await list_parked(consumer.db.begin, consumer.db.tables)
    assert parked.redrive_requested
    # When the service runs again its consumer handles it.
    await consumer.runner.start()
    deadline = time.monotonic() + 10
    while await list_parked(consumer.db.begin, consumer.db.tables):
        assert time.monotonic() < deadline, "redrive not handled after restart"
        await asyncio.sleep(0.05)
    assert consumer.done == ["o-later"]
