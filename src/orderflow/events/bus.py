"""Buses carry events from relays to consumers: what every bus offers, and the in-process one.

A bus publishes a batch of events and says how many of them (from the first) the broker
has taken: the relay marks exactly those published. Consumers pull batches of deliveries
from a durable subscription named for the consuming service, and ack each delivery once
its effect is committed (or nak it to have it again later).

`InProcessBus` is the one-process mode's broker (no NATS): a publish counts as taken once
every consumer subscribed to its subject has acked it, so an event is never marked
published in the outbox before its effects are committed (or the event parked). A crash
loses only what is in memory, and the relay publishes those rows again at start-up. Like
JetStream with Nats-Msg-Id, it delivers a message id once within a duplicate window: a
relay publishing again after a timeout waits for the first copy instead of adding one.
Consumers must subscribe before the relay starts: like a stream with no consumer, an
event no consumer has asked for is taken and goes nowhere.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from orderflow.events.envelope import WireMessage
from orderflow.events.registry import DEFAULT_SUBJECT_PREFIX, EventType


class PublishError(Exception):
    """The broker did not take every event of a batch: only the first `acked` were taken."""

    def __init__(self, message: str, acked: int) -> None:
        super().__init__(message)
        self.acked = acked


class Delivery(Protocol):
    """One message handed to a consumer."""

    @property
    def subject(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def body(self) -> bytes: ...

    @property
    def attempt(self) -> int:
        """1 the first time this consumer gets the message, 2 the next, and so on."""
        ...

    async def ack(self) -> None: ...

    async def nak(self, delay: float) -> None:
        """Give the message back, to be delivered again after `delay` seconds."""
        ...


class Subscription(Protocol):
    """A durable consumer's stream of deliveries."""

    async def fetch(self, max_messages: int, wait: float) -> list[Delivery]:
        """Up to max_messages deliveries, waiting at most `wait` seconds for the first."""
        ...

    async def close(self) -> None: ...


class EventBus(Protocol):
    """Where relays publish and consumers subscribe."""

    subject_prefix: str

    async def publish(self, messages: Sequence[WireMessage], wait: float) -> int:
        """Publish messages in order, waiting at most `wait` seconds for the broker to take
        them; return len(messages) once all were taken, or raise PublishError saying how
        many of the first were."""
        ...

    async def subscribe(self, consumer: str, types: Sequence[EventType]) -> Subscription:
        """The durable subscription `consumer` (a service's name) to these event types."""
        ...

    async def close(self) -> None: ...


Tap = Callable[[Mapping[str, str]], None]
Untap = Callable[[], Awaitable[None]]


class EventTap(Protocol):
    """What both buses offer a listener that is not a consumer."""

    async def tap(self, types: Sequence[EventType], seen: Tap) -> Untap:
        """Call seen(headers) for each event of these types published from now on, until
        the returned function is awaited: ephemeral, never acknowledged, never holding a
        publish back (the gateway's WatchOrder streams; ADR 27)."""
        ...


# -- in-process ---------------------------------------------------------------------------


@dataclass
class _Delivery:
    subject: str
    headers: Mapping[str, str]
    body: bytes
    attempt: int
    queue: _ConsumerQueue
    taken: asyncio.Future[None]
    settled: bool = False

    async def ack(self) -> None:
        self.settled = True
        if not self.taken.done():
            self.taken.set_result(None)

    async def nak(self, delay: float) -> None:
        if self.settled:  # as JetStream: an acked message is not given back
            return
        self.settled = True
        again = _Delivery(
            self.subject, self.headers, self.body, self.attempt + 1, self.queue, self.taken
        )
        asyncio.get_running_loop().call_later(max(delay, 0.0), self.queue.put, again)


@dataclass
class _ConsumerQueue:
    subjects: set[str]
    items: collections.deque[_Delivery] = field(default_factory=collections.deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, delivery: _Delivery) -> None:
        self.items.append(delivery)
        self.ready.set()


class _InProcessSubscription:
    def __init__(self, queue: _ConsumerQueue) -> None:
        self._queue = queue

    async def fetch(self, max_messages: int, wait: float) -> list[Delivery]:
        queue = self._queue
        if not queue.items:
            queue.ready.clear()
            try:
                await asyncio.wait_for(queue.ready.wait(), wait)
            except TimeoutError:
                return []
        batch: list[Delivery] = []
        while queue.items and len(batch) < max_messages:
            batch.append(queue.items.popleft())
        return batch

    async def close(self) -> None:
        """Nothing to release: the durable queue keeps collecting until the bus closes."""


class InProcessBus:
    """Events between the services of one process, with the delivery rules of JetStream."""

    kind = "in-process"  # as the logs name it

    def __init__(
        self, subject_prefix: str = DEFAULT_SUBJECT_PREFIX, duplicate_window: float = 120.0
    ) -> None:
        self.subject_prefix = subject_prefix
        self.duplicate_window = duplicate_window
        self._consumers: dict[str, _ConsumerQueue] = {}
        # Message id -> (when first published, what its consumers' acks resolve): a
        # republish within the window is not delivered again, as with Nats-Msg-Id; it
        # waits for the first copy's acks instead.
        self._recent: dict[str, tuple[float, list[asyncio.Future[None]]]] = {}
        self._taps: dict[int, tuple[set[str], Tap]] = {}

    async def publish(self, messages: Sequence[WireMessage], wait: float) -> int:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._forget_before(now - self.duplicate_window)
        pending: list[list[asyncio.Future[None]]] = []
        for message in messages:
            seen = self._recent.get(message.id)
            if seen is not None:
                pending.append(seen[1])
                continue
            subject = message.type.subject(self.subject_prefix)
            for subjects, seen_by in list(self._taps.values()):
                if subject in subjects:
                    seen_by(message.headers)
            waits: list[asyncio.Future[None]] = []
            for queue in self._consumers.values():
                if subject in queue.subjects:
                    taken: asyncio.Future[None] = loop.create_future()
                    queue.put(_Delivery(subject, message.headers, message.body, 1, queue, taken))
                    waits.append(taken)
            self._recent[message.id] = (now, waits)
            pending.append(waits)
        # Every ack of the batch is awaited at once: one wake-up, not one per event.
        every = {w for waits in pending for w in waits}
        if every:
            await asyncio.wait(every, timeout=wait)
        for acked, waits in enumerate(pending):
            if not all(w.done() for w in waits):
                raise PublishError(f"consumers did not take the event within {wait}s", acked)
        return len(messages)

    def _forget_before(self, moment: float) -> None:
        # Insertion order is publish order: stop at the first one still in the window
        # (without copying the window's ids first: that cost a copy of every id published
        # in the last two minutes on every publish).
        expired = []
        for message_id, (published, waits) in self._recent.items():
            if published >= moment:
                break
            if all(w.done() for w in waits):
                expired.append(message_id)
        for message_id in expired:
            del self._recent[message_id]

    async def subscribe(self, consumer: str, types: Sequence[EventType]) -> Subscription:
        subjects = {t.subject(self.subject_prefix) for t in types}
        queue = self._consumers.get(consumer)
        if queue is None:
            queue = self._consumers[consumer] = _ConsumerQueue(subjects)
        else:
            queue.subjects = subjects
        return _InProcessSubscription(queue)

    async def tap(self, types: Sequence[EventType], seen: Tap) -> Untap:
        key = id(seen)
        self._taps[key] = ({t.subject(self.subject_prefix) for t in types}, seen)

        async def untap() -> None:
            self._taps.pop(key, None)

        return untap

    async def close(self) -> None:
        self._consumers.clear()
        self._recent.clear()
        self._taps.clear()
