"""The in-process bus shared by the processes of one `orderflow run` (ADR 35).

With `orderflow run --workers N` the services run in child processes of the command, and
the events between them cannot stay in one process's memory. The command's own process
(the gateway's) keeps the one `InProcessBus` and serves it on a Unix socket in a private
directory (`LocalBroker`); each child reaches it through a `LocalBus`, an `EventBus` like
the others: its relay publishes through it and its consumer subscribes through it, with
the in-process bus's rules unchanged (a publish is taken once every subscribed consumer
has acked it; durable per-consumer queues; redelivery with an attempt count).

Across processes two rules are added. A consumer's deliveries not yet acked when its
connection ends (its process stopped or died) are given back to its durable queue, for
the process that takes its place. And no publish is taken before every expected process
has subscribed its consumer and said it is ready (`ready()`): the in-process bus delivers
only to consumers already subscribed, and in one process they all subscribe before any
relay starts; here the gate keeps that promise.

The protocol is one JSON object per line each way. A child's frames: `pub` (messages to
publish; answered with how many were taken), `sub` (a consumer and its event types), `ack`
and `nak` of a delivery, `ready`. The broker's: answers by request id, and `msg` (a
delivery). When its connection to the broker ends, a child's `lost` event is set: the
command that ran it is gone, and the child stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from orderflow.events.bus import Delivery, InProcessBus, PublishError, Subscription
from orderflow.events.envelope import WireMessage
from orderflow.events.registry import EventType, event_type

log = structlog.get_logger("orderflow.events.local")

# A line carries a whole batch of events: room for large ones.
LINE_LIMIT = 64 * 2**20


def _encode(frame: Mapping[str, Any]) -> bytes:
    return json.dumps(frame, separators=(",", ":")).encode() + b"\n"


def _text(body: bytes) -> str:
    return body.decode("utf-8", "surrogateescape")


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


# -- the broker (in the command's process) -------------------------------------------------


@dataclass(eq=False)
class _Connection:
    name: str = "?"
    writer: asyncio.StreamWriter | None = None
    inflight: dict[int, Delivery] = field(default_factory=dict)
    pumps: list[asyncio.Task[None]] = field(default_factory=list)


class LocalBroker:
    """Serves bus (the command's in-process bus) to child processes on a Unix socket.

    expected: the names of the processes that must say they are ready before any publish
    is taken. on_ready(name, info) is called as each does (info: what it reported).
    """

    def __init__(
        self,
        bus: InProcessBus,
        path: str,
        expected: Sequence[str],
        on_ready: Callable[[str, Mapping[str, Any]], None] | None = None,
    ) -> None:
        self.bus = bus
        self.path = path
        self._expected = set(expected)
        self._ready: set[str] = set()
        self._gate = asyncio.Event()
        self._on_ready = on_ready
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._go = False
        if not self._expected:
            self._gate.set()

    def go(self) -> None:
        """Let the processes build their services (their databases are migrated): every
        connected one is told now, any later one as it connects."""
        self._go = True
        for connection in self._connections:
            self._send(connection, {"op": "go"})

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, self.path, limit=LINE_LIMIT)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            self._drop(connection)
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(writer=writer)
        self._connections.add(connection)
        if self._go:
            self._send(connection, {"op": "go"})
        try:
            while line := await reader.readline():
                frame = json.loads(line)
                op = frame["op"]
                if op == "ack":
                    delivery = connection.inflight.pop(frame["d"], None)
                    if delivery is not None:
                        await delivery.ack()
                elif op == "nak":
                    delivery = connection.inflight.pop(frame["d"], None)
                    if delivery is not None:
                        await delivery.nak(float(frame.get("delay", 0.0)))
                elif op == "pub":
                    self._spawn(self._publish(connection, frame))
                elif op == "sub":
                    await self._subscribe(connection, frame)
                elif op == "ready":
                    self._ready_from(connection, frame)
        except (ConnectionError, ValueError, KeyError) as exc:
            log.warning("local_bus_connection_failed", process=connection.name, error=repr(exc))
        finally:
            self._drop(connection)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, connection: _Connection, frame: Mapping[str, Any]) -> None:
        wait = float(frame["wait"])
        reply: dict[str, Any] = {"id": frame["id"]}
        try:
            if not self._gate.is_set():
                try:
                    await asyncio.wait_for(self._gate.wait(), wait)
                except TimeoutError:
                    waiting = ", ".join(sorted(self._expected - self._ready))
                    raise PublishError(f"not every process is ready yet ({waiting})", 0) from None
            messages = [
                WireMessage(event_type(m["type"]), m["headers"], _bytes(m["body"]))
                for m in frame["messages"]
            ]
            reply["taken"] = await self.bus.publish(messages, wait)
        except PublishError as exc:
            reply.update(taken=exc.acked, error=str(exc))
        self._send(connection, reply)

    async def _subscribe(self, connection: _Connection, frame: Mapping[str, Any]) -> None:
        types = [event_type(name) for name in frame["types"]]
        subscription = await self.bus.subscribe(frame["consumer"], types)
        pump = self._pump(connection, subscription, int(frame["sub"]))
        connection.pumps.append(asyncio.ensure_future(pump))
        self._send(connection, {"id": frame["id"]})

    async def _pump(self, connection: _Connection, subscription: Subscription, key: int) -> None:
        """Hand the consumer's deliveries to its process as they come (key: the process's
        name for the subscription)."""
        while True:
            for delivery in await subscription.fetch(256, 5.0):
                number = next(self._ids)
                connection.inflight[number] = delivery
                self._send(
                    connection,
                    {
                        "op": "msg",
                        "sub": key,
                        "d": number,
                        "subject": delivery.subject,
                        "headers": dict(delivery.headers),
                        "body": _text(delivery.body),
                        "attempt": delivery.attempt,
                    },
                )

    def _ready_from(self, connection: _Connection, frame: Mapping[str, Any]) -> None:
        connection.name = str(frame["name"])
        self._ready.add(connection.name)
        if self._expected <= self._ready:
            self._gate.set()
        self._send(connection, {"id": frame["id"]})
        if self._on_ready is not None:
            self._on_ready(connection.name, frame.get("info", {}))

    def _send(self, connection: _Connection, frame: Mapping[str, Any]) -> None:
        if connection.writer is not None and not connection.writer.is_closing():
            connection.writer.write(_encode(frame))

    def _drop(self, connection: _Connection) -> None:
        """The connection ended: what its process had not acked goes back to its queue."""
        if connection not in self._connections:
            return
        self._connections.discard(connection)
        for pump in connection.pumps:
            pump.cancel()
        for delivery in connection.inflight.values():
            self._spawn(delivery.nak(0.0))
        connection.inflight.clear()
        if connection.writer is not None:
            connection.writer.close()


# -- the client (in each child process) ----------------------------------------------------


@dataclass
class _RemoteDelivery:
    subject: str
    headers: Mapping[str, str]
    body: bytes
    attempt: int
    _bus: LocalBus
    _number: int

    async def ack(self) -> None:
        self._bus._send({"op": "ack", "d": self._number})

    async def nak(self, delay: float) -> None:
        self._bus._send({"op": "nak", "d": self._number, "delay": delay})


class _RemoteSubscription:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[_RemoteDelivery] = asyncio.Queue()

    async def fetch(self, max_messages: int, wait: float) -> list[Delivery]:
        queue = self.queue
        if queue.empty():
            try:
                first = await asyncio.wait_for(queue.get(), wait)
            except TimeoutError:
                return []
            batch: list[Delivery] = [first]
        else:
            batch = []
        while not queue.empty() and len(batch) < max_messages:
            batch.append(queue.get_nowait())
        return batch

    async def close(self) -> None:
        """The broker keeps the durable queue; nothing to release here."""


class LocalBus:
    """The command's bus, reached from a child process over its Unix socket (an EventBus)."""

    kind = "the command's (local)"  # as the logs name it

    def __init__(self, path: str, name: str, subject_prefix: str) -> None:
        self.path = path
        self.name = name
        self.subject_prefix = subject_prefix
        self.lost = asyncio.Event()
        self.go = asyncio.Event()  # the command says: the databases are ready
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._subscriptions: dict[int, _RemoteSubscription] = {}
        self._ids = itertools.count(1)

    async def connect(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(self.path, limit=LINE_LIMIT)
        self._reader_task = asyncio.create_task(self._read(reader), name="local-bus-reader")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                frame = json.loads(line)
                if frame.get("op") == "go":
                    self.go.set()
                elif frame.get("op") == "msg":
                    subscription = self._subscriptions.get(frame["sub"])
                    if subscription is None:
                        continue  # a subscription this process no longer has
                    subscription.queue.put_nowait(
                        _RemoteDelivery(
                            frame["subject"],
                            frame["headers"],
                            _bytes(frame["body"]),
                            int(frame["attempt"]),
                            self,
                            int(frame["d"]),
                        )
                    )
                else:
                    future = self._replies.pop(frame["id"], None)
                    if future is not None and not future.done():
                        future.set_result(frame)
        except (ConnectionError, ValueError) as exc:
            log.warning("local_bus_lost", error=repr(exc))
        finally:
            self.lost.set()
            for future in self._replies.values():
                if not future.done():
                    future.set_exception(ConnectionError("the command's event bus is gone"))
            self._replies.clear()

    def _send(self, frame: Mapping[str, Any]) -> None:
        if self._writer is None or self.lost.is_set():
            raise ConnectionError("not connected to the command's event bus")
        self._writer.write(_encode(frame))

    async def _request(self, frame: dict[str, Any], within: float) -> dict[str, Any]:
        number = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[number] = future
        try:
            self._send({**frame, "id": number})
            return await asyncio.wait_for(future, within)
        finally:
            self._replies.pop(number, None)

    async def publish(self, messages: Sequence[WireMessage], wait: float) -> int:
        frame = {
            "op": "pub",
            "wait": wait,
            "messages": [
                {"type": m.type.name, "headers": m.headers, "body": _text(m.body)} for m in messages
            ],
        }
        try:
            reply = await self._request(frame, wait + 1.0)
        except (ConnectionError, TimeoutError) as exc:
            raise PublishError(f"the command's event bus did not answer ({exc!r})", 0) from None
        if "error" in reply:
            raise PublishError(str(reply["error"]), int(reply["taken"]))
        return int(reply["taken"])

    async def subscribe(self, consumer: str, types: Sequence[EventType]) -> Subscription:
        subscription = _RemoteSubscription()
        number = next(self._ids)
        # Registered before the request: deliveries may follow its answer at once.
        self._subscriptions[id(subscription)] = subscription
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[number] = future
        self._send(
            {
                "op": "sub",
                "id": number,
                "consumer": consumer,
                "types": [t.name for t in types],
                "sub": id(subscription),
            }
        )
        await asyncio.wait_for(future, 30.0)
        return subscription

    async def ready(self, info: Mapping[str, Any] | None = None) -> None:
        """Say that this process's consumers are subscribed (and what else it reports)."""
        await self._request({"op": "ready", "name": self.name, "info": dict(info or {})}, 30.0)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
