"""The relay and consumers over real NATS JetStream (127.0.0.1:4222, or ORDERFLOW_TEST_NATS),
on SQLite and PostgreSQL. Each test has a stream and subject prefix of its own, deleted
after it. Crashes are real: a relay or consumer in a child process SIGKILLs itself at
the worst moment (run by this module as `python -m tests.integration.test_events_jetstream`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from orderflow.events import (
    BrokerUnavailableError,
    Delivery,
    Event,
    EventMetrics,
    EventType,
    JetStreamBus,
    PublishError,
    Subscription,
    WireMessage,
    append,
    list_parked,
    request_redrive,
)
from orderflow.events.v1 import events_pb2
from orderflow.platform.db import UnitOfWork, create_database
from tests.integration.test_events_outbox import (
    Running,
    ToyService,
    running,
    toy,
    wait_for,
)

NATS_URL = os.environ.get("ORDERFLOW_TEST_NATS", "nats://127.0.0.1:4222")
IN_CI = os.environ.get("CI", "").lower() == "true"
ROOT = Path(__file__).resolve().parents[2]

__all__ = ["running", "toy"]  # fixtures, shared with test_events_outbox


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"required under CI=true: {reason}")
    pytest.skip(reason)


def new_bus(url: str = NATS_URL, tag: str | None = None) -> JetStreamBus:
    tag = tag or uuid.uuid4().hex[:10]
    return JetStreamBus(url, stream=f"TEST_{tag}", subject_prefix=f"test{tag}.events", ack_wait=1.0)


@pytest.fixture
async def jetstream() -> AsyncIterator[JetStreamBus]:
    bus = new_bus()
    try:
        await bus.jetstream()
    except BrokerUnavailableError as exc:
        _unavailable(f"NATS JetStream not reachable at {NATS_URL}: {exc}")
    yield bus
    await bus.delete_stream()
    await bus.close()


async def stream_messages(bus: JetStreamBus) -> list[Any]:
    js = await bus.jetstream()
    info = await js.stream_info(bus.stream)
    count = info.state.messages
    first = info.state.first_seq
    return [await js.get_msg(bus.stream, seq) for seq in range(first, first + count)]


async def confirm_interleaved(toy: ToyService, orders: int, per_order: int) -> list[Event]:
    """per_order events of each order, interleaved in the outbox (o-0, o-1, o-2, o-0, ...)."""
    events = []
    for round_ in range(per_order):
        for i in range(orders):
            async with toy.begin() as uow:
                [event] = await append(
                    uow.connection, toy.tables, _confirmed(f"o-{i}", 100 * round_ + i)
                )
                await uow.commit()
            events.append(event)
    return events


def _confirmed(order_id: str, total: int) -> events_pb2.OrderConfirmed:
    return events_pb2.OrderConfirmed(order_id=order_id, customer_id="c-1", total=total)


def per_aggregate(pairs: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """{aggregate id: [event ids in the given order]}."""
    out: dict[str, list[str]] = {}
    for aggregate, event_id in pairs:
        out.setdefault(aggregate, []).append(event_id)
    return out


# -- publishing -----------------------------------------------------------------------------


async def test_relay_publishes_in_order_with_the_envelope_and_the_broker_drops_repeats(
    toy: ToyService, jetstream: JetStreamBus, running: Running
) -> None:
    events = await confirm_interleaved(toy, orders=3, per_order=5)
    relay = running.relay(toy, jetstream, batch_size=4)
    published = 0
    while (n := await relay.run_once()) > 0:
        published += n
    assert published == 15
    assert await toy.pending() == 0
    messages = await stream_messages(jetstream)
    assert [m.headers["ce-id"] for m in messages] == [e.id for e in events]
    first = messages[0]
    assert first.subject == f"{jetstream.subject_prefix}.order.confirmed"
    assert first.headers["Nats-Msg-Id"] == events[0].id
    assert first.headers["ce-source"] == "orderflow/orders"
    assert first.headers["ce-subject"] == "o-0"
    assert Event.decode(first.headers, first.data) == events[0]
    # A republish of the same events (a relay that died before marking) adds nothing.
    assert await jetstream.publish([e.wire() for e in events], 5.0) == 15
    assert len(await stream_messages(jetstream)) == 15


async def test_consumer_over_jetstream_applies_each_event_once_in_order_per_aggregate(
    toy: ToyService, jetstream: JetStreamBus, running: Running
) -> None:
    registry = CollectorRegistry()
    consumer = running.consumer(toy, jetstream, "inventory", metrics=EventMetrics(registry))
    await consumer.start()
    events = await confirm_interleaved(toy, orders=3, per_order=4)
    relay = running.relay(toy, jetstream)
    relay.start()
    await wait_for(lambda: _effects_are(toy, "inventory", 12))
    effects = await toy.effects_of("inventory")
    assert per_aggregate([(e.order_id, e.event_id) for e in effects]) == per_aggregate(
        [(e.subject, e.id) for e in events]
    )
    info = await (await jetstream.jetstream()).consumer_info(jetstream.stream, "inventory")
    assert info.name == "inventory"  # the durable consumer is named for the service
    assert (
        registry.get_sample_value(
            "orderflow_events_consumed_total", {"consumer": "inventory", "outcome": "handled"}
        )
        == 12
    )


async def _effects_are(toy: ToyService, consumer: str, n: int) -> bool:
    return len(await toy.effects_of(consumer)) == n


async def test_poison_over_jetstream_is_parked_after_n_deliveries_then_redriven(
    toy: ToyService, jetstream: JetStreamBus, running: Running
) -> None:
    broken = True
    recorder = toy.recorder("loyalty")

    async def handler(uow: UnitOfWork, event: Event) -> None:
        if broken:
            raise RuntimeError("loyalty account locked")
        await recorder(uow, event)

    consumer = running.consumer(toy, jetstream, "loyalty", handler=handler, max_attempts=3)
    await consumer.start()
    [event] = await confirm_interleaved(toy, orders=1, per_order=1)
    running.relay(toy, jetstream).start()
    await wait_for(lambda: _parked_count(toy, 1))
    [parked] = await list_parked(toy.begin, toy.tables, consumer="loyalty")
    assert (parked.event_id, parked.attempts) == (event.id, 3)
    broken = False
    await request_redrive(toy.begin, toy.tables, event.id)
    await wait_for(lambda: _effects_are(toy, "loyalty", 1))
    assert await list_parked(toy.begin, toy.tables) == []


async def _parked_count(toy: ToyService, n: int) -> bool:
    return len(await list_parked(toy.begin, toy.tables)) == n


# -- crashes --------------------------------------------------------------------------------


def run_child(role: str, url: str, bus: JetStreamBus) -> subprocess.CompletedProcess[str]:
    """Run this module's child `role` against database url and bus's stream; it SIGKILLs
    itself at the moment the role names."""
    tag = bus.stream.removeprefix("TEST_")
    return subprocess.run(
        [sys.executable, "-m", "tests.integration.test_events_jetstream", role, url, bus.url, tag],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_relay_killed_between_publish_and_mark_loses_nothing_and_doubles_nothing(
    toy: ToyService, jetstream: JetStreamBus, running: Running
) -> None:
    events = await confirm_interleaved(toy, orders=2, per_order=3)
    url = toy.database.engine.url.render_as_string(hide_password=False)
    child = await asyncio.to_thread(run_child, "relay", url, jetstream)
    assert child.returncode == -signal.SIGKILL, child.stderr
    # Published, not marked.
    assert len(await stream_messages(jetstream)) == 6
    assert await toy.pending() == 6
    # The next relay takes the dead one's lease once it expired (1 s), publishes the rows
    # again (the broker drops the repeats) and marks them; the consumer sees each once.
    consumer = running.consumer(toy, jetstream, "inventory")
    await consumer.start()
    running.relay(toy, jetstream, lease_seconds=1.0, publish_timeout=0.5).start()
    await wait_for(lambda: _pending_is(toy, 0))
    await wait_for(lambda: _effects_are(toy, "inventory", 6))
    assert len(await stream_messages(jetstream)) == 6
    assert sorted(e.event_id for e in await toy.effects_of("inventory")) == sorted(
        e.id for e in events
    )


async def _pending_is(toy: ToyService, n: int) -> bool:
    return await toy.pending() == n


async def test_consumer_killed_after_commit_before_ack_has_each_effect_once(
    toy: ToyService, jetstream: JetStreamBus, running: Running
) -> None:
    events = await confirm_interleaved(toy, orders=2, per_order=3)
    relay = running.relay(toy, jetstream)
    assert await relay.run_once() == 6
    url = toy.database.engine.url.render_as_string(hide_password=False)
    child = await asyncio.to_thread(run_child, "consumer", url, jetstream)
    assert child.returncode == -signal.SIGKILL, child.stderr
    # The child committed its batch (effects and inbox rows), then died before acking.
    assert len(await toy.effects_of("inventory")) == 6
    # JetStream redelivers after ack_wait (1 s); the restarted consumer acks, no effect.
    registry = CollectorRegistry()
    consumer = running.consumer(toy, jetstream, "inventory", metrics=EventMetrics(registry))
    await consumer.start()
    await wait_for(lambda: _duplicates_are(registry, 6), timeout=8)
    assert sorted(e.event_id for e in await toy.effects_of("inventory")) == sorted(
        e.id for e in events
    )


async def _duplicates_are(registry: CollectorRegistry, n: int) -> bool:
    value = registry.get_sample_value(
        "orderflow_events_consumed_total", {"consumer": "inventory", "outcome": "duplicate"}
    )
    return value == n


# -- broker down ----------------------------------------------------------------------------


class NatsServer:
    """A nats-server of the test's own (JetStream on a file store), to stop and start."""

    def __init__(self, store: Path) -> None:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not Path(binary).exists():
            _unavailable("nats-server is not installed")
        self.binary = binary
        self.store = store
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("nats-server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "jetstream")
    yield server
    server.stop()


async def test_broker_down_rows_accumulate_then_every_event_arrives_in_order(
    toy: ToyService, running: Running, nats_server: NatsServer
) -> None:
    nats_server.start()
    bus = new_bus(nats_server.url)
    registry = CollectorRegistry()
    metrics = EventMetrics(registry)
    consumer = running.consumer(toy, bus, "orders")
    await consumer.start()
    relay = running.relay(
        toy, bus, metrics=metrics, publish_timeout=0.3, max_backoff=0.3, metrics_every=0.05
    )
    relay.start()
    before = await confirm_interleaved(toy, orders=3, per_order=2)
    await wait_for(lambda: _effects_are(toy, "orders", 6))

    nats_server.stop()
    during = await confirm_interleaved(toy, orders=3, per_order=10)
    await asyncio.sleep(1.0)
    assert await toy.pending() == 30  # orders kept being confirmed; their events wait
    age = registry.get_sample_value("orderflow_outbox_oldest_age_seconds", {"service": "toy"})
    assert age is not None and age >= 0.9
    assert registry.get_sample_value("orderflow_outbox_pending", {"service": "toy"}) == 30
    failures = registry.get_sample_value(
        "orderflow_events_publish_failures_total", {"service": "toy"}
    )
    assert failures is not None and failures >= 1

    nats_server.start()
    await wait_for(lambda: _pending_is(toy, 0), timeout=15)
    await wait_for(lambda: _effects_are(toy, "orders", 36), timeout=10)
    effects = await toy.effects_of("orders")
    assert per_aggregate([(e.order_id, e.event_id) for e in effects]) == per_aggregate(
        [(e.subject, e.id) for e in before + during]
    )
    await running.stop()
    await bus.close()


async def test_a_service_starts_with_the_broker_down(toy: ToyService) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bus = new_bus(f"nats://127.0.0.1:{port}")
    [event] = await confirm_interleaved(toy, orders=1, per_order=1)
    with pytest.raises(BrokerUnavailableError):
        await bus.publish([event.wire()], 0.5)
    assert await toy.pending() == 1


# -- the child processes --------------------------------------------------------------------


class _KillAfterPublish:
    """A bus whose process dies right after the broker took a batch, before the relay can
    mark it published."""

    def __init__(self, bus: JetStreamBus) -> None:
        self.bus = bus
        self.subject_prefix = bus.subject_prefix

    async def publish(self, messages: Sequence[WireMessage], wait: float) -> int:
        taken = await self.bus.publish(messages, wait)
        if taken != len(messages):
            raise PublishError("not all taken", taken)
        os.kill(os.getpid(), signal.SIGKILL)
        return taken

    async def subscribe(self, consumer: str, types: Sequence[EventType]) -> Subscription:
        return await self.bus.subscribe(consumer, types)

    async def close(self) -> None:
        await self.bus.close()


class _KillOnAck:
    """A subscription whose process dies at the first ack: after the batch's transaction
    committed, before the broker hears of it."""

    def __init__(self, inner: Subscription) -> None:
        self.inner = inner

    async def fetch(self, max_messages: int, wait: float) -> list[Delivery]:
        return [_DieOnAck(d) for d in await self.inner.fetch(max_messages, wait)]

    async def close(self) -> None:
        await self.inner.close()


class _DieOnAck:
    def __init__(self, inner: Delivery) -> None:
        self.inner = inner

    @property
    def subject(self) -> str:
        return self.inner.subject

    @property
    def headers(self) -> Mapping[str, str]:
        return self.inner.headers

    @property
    def body(self) -> bytes:
        return self.inner.body

    @property
    def attempt(self) -> int:
        return self.inner.attempt

    async def ack(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    async def nak(self, delay: float) -> None:
        await self.inner.nak(delay)


async def _child(role: str, db_url: str, nats_url: str, tag: str) -> None:
    database = create_database(db_url)
    toy = ToyService(database)
    bus = new_bus(nats_url, tag)
    if role == "relay":
        relay = Running().relay(toy, _KillAfterPublish(bus), lease_seconds=1.0, publish_timeout=0.5)
        await relay.run_once()
    else:
        consumer = Running().consumer(toy, bus, "inventory", batch_size=100)
        await consumer.subscribe()
        subscription = consumer._subscription
        assert subscription is not None
        consumer._subscription = _KillOnAck(subscription)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            await consumer.run_once()
    raise SystemExit("the child should have been killed")


if __name__ == "__main__":
    asyncio.run(_child(*sys.argv[1:5]))
