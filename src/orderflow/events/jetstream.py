"""The NATS JetStream bus (nats-py): stream ORDERFLOW_EVENTS on orderflow.events.>.

It connects lazily and again after a failed attempt, so a service starts and takes orders
while the broker is down (its relay's publishes fail, and the outbox keeps the events).
Once connected, nats-py reconnects by itself. The stream is created if absent.
Publishes are pipelined: the whole batch is sent, then all its acks are awaited at
once; the broker has taken the prefix acknowledged. Each consumer is a durable pull
consumer named for the consuming service, with explicit acks and unlimited redelivery
(parking after too many failures is the consumer runner's job, so that a parked event
can be redriven); it fetches deliveries a batch at a time.

JetStream servers before 2.10 take one filter subject per consumer: a consumer filters
on the narrowest subject covering its types (`<prefix>.*.committed` for orders' two) and
its runner acks, unread, any other type that subject lets through.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from orderflow.events.bus import Delivery, PublishError, Subscription, Tap, Untap
from orderflow.events.envelope import WireMessage
from orderflow.events.registry import DEFAULT_STREAM, DEFAULT_SUBJECT_PREFIX, EventType

log = structlog.get_logger(__name__)


class BrokerUnavailableError(PublishError):
    """No connection to the broker could be made."""


class _JetStreamDelivery:
    __slots__ = ("_msg",)

    def __init__(self, msg: Msg) -> None:
        self._msg = msg

    @property
    def subject(self) -> str:
        return self._msg.subject

    @property
    def headers(self) -> Mapping[str, str]:
        return self._msg.headers or {}

    @property
    def body(self) -> bytes:
        return self._msg.data

    @property
    def attempt(self) -> int:
        return int(self._msg.metadata.num_delivered)

    async def ack(self) -> None:
        await self._msg.ack()

    async def nak(self, delay: float) -> None:
        await self._msg.nak(delay=delay)


class _JetStreamSubscription:
    def __init__(self, sub: JetStreamContext.PullSubscription) -> None:
        self._sub = sub

    async def fetch(self, max_messages: int, wait: float) -> list[Delivery]:
        try:
            msgs = await self._sub.fetch(batch=max_messages, timeout=wait)
        except (NatsTimeoutError, TimeoutError):  # nats-py raises either when none came
            return []
        return [_JetStreamDelivery(m) for m in msgs]

    async def close(self) -> None:
        await self._sub.unsubscribe()


class JetStreamBus:
    """Events over NATS JetStream. `stream` and `subject_prefix` default to DESIGN.md's."""

    def __init__(
        self,
        url: str,
        *,
        stream: str = DEFAULT_STREAM,
        subject_prefix: str = DEFAULT_SUBJECT_PREFIX,
        connect_timeout: float = 2.0,
        ack_wait: float = 30.0,
        duplicate_window: float = 120.0,
    ) -> None:
        self.url = url
        self.stream = stream
        self.subject_prefix = subject_prefix
        self.connect_timeout = connect_timeout
        self.ack_wait = ack_wait
        self.duplicate_window = duplicate_window
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._lock = asyncio.Lock()

    async def jetstream(self) -> JetStreamContext:
        """The JetStream context, connecting (and creating the stream) first if needed;
        BrokerUnavailableError when the broker cannot be reached."""
        if self._js is not None:
            return self._js
        async with self._lock:
            if self._js is None:
                nc = Client()
                try:
                    # nats-py retries a first connection as often as it would reconnect
                    # (-1: forever, inside this call); so the first attempt gives up at
                    # once...
                    await nc.connect(
                        servers=[self.url],
                        connect_timeout=max(1, round(self.connect_timeout)),
                        allow_reconnect=False,
                        max_reconnect_attempts=1,
                        reconnect_time_wait=0,
                        error_cb=self._on_error,
                        disconnected_cb=self._on_disconnected,
                        reconnected_cb=self._on_reconnected,
                    )
                except (OSError, NatsError, TimeoutError) as exc:
                    await _close_quietly(nc)
                    raise BrokerUnavailableError(f"NATS at {self.url}: {exc!r}", 0) from exc
                # ...and once connected, the client reconnects by itself, without end.
                nc.options["allow_reconnect"] = True
                nc.options["max_reconnect_attempts"] = -1
                nc.options["reconnect_time_wait"] = 1
                js = nc.jetstream(timeout=self.connect_timeout)
                try:
                    await self._ensure_stream(js)
                except (NatsError, TimeoutError) as exc:
                    await _close_quietly(nc)
                    raise BrokerUnavailableError(f"stream {self.stream}: {exc!r}", 0) from exc
                self._nc, self._js = nc, js
        assert self._js is not None
        return self._js

    async def _on_error(self, exc: Exception) -> None:
        log.debug("NATS connection error", url=self.url, error=repr(exc))

    async def _on_disconnected(self) -> None:
        log.warning("NATS disconnected", url=self.url)

    async def _on_reconnected(self) -> None:
        log.info("NATS reconnected", url=self.url)

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        try:
            await js.stream_info(self.stream)
        except NotFoundError:
            await js.add_stream(
                StreamConfig(
                    name=self.stream,
                    subjects=[f"{self.subject_prefix}.>"],
                    storage=StorageType.FILE,
                    duplicate_window=self.duplicate_window,
                )
            )

    async def publish(self, messages: Sequence[WireMessage], wait: float) -> int:
        js = await self.jetstream()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        futures: list[asyncio.Future[Any]] = []
        error: BaseException | None = None
        try:
            # No wait_stall: with one, nats-py (on Python 3.11) runs each publish's wait for
            # a slot as a task of its own, a turn of the event loop per event, which under
            # load cost milliseconds per event. The whole batch has one deadline instead.
            async with asyncio.timeout_at(deadline):
                for message in messages:
                    futures.append(
                        await js.publish_async(
                            message.type.subject(self.subject_prefix),
                            message.body,
                            headers=dict(message.headers),
                        )
                    )
            # Every ack is awaited at once: one wake-up for the batch, not one per event.
            if futures:
                await asyncio.wait(futures, timeout=max(deadline - loop.time(), 0.001))
        except (NatsError, TimeoutError) as exc:
            error = exc
        acked = 0
        for future in futures:
            if not future.done() or future.cancelled() or future.exception() is not None:
                break
            acked += 1
        for future in futures[acked:]:
            if future.done() and not future.cancelled() and error is None:
                error = future.exception()
            future.cancel()
        if acked < len(messages):
            reason = repr(error) if error is not None else f"no ack within {wait}s"
            raise PublishError(f"JetStream publish failed: {reason}", acked) from error
        return acked

    async def subscribe(self, consumer: str, types: Sequence[EventType]) -> Subscription:
        js = await self.jetstream()
        config = ConsumerConfig(
            durable_name=consumer,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=covering_subject([t.subject(self.subject_prefix) for t in types]),
            ack_wait=self.ack_wait,
            max_deliver=-1,
        )
        try:
            info = await js.consumer_info(self.stream, consumer)
        except NotFoundError:
            await js.add_consumer(self.stream, config)
        else:
            if (info.config.filter_subject, info.config.ack_wait) != (
                config.filter_subject,
                config.ack_wait,
            ):
                # A consumer made by an earlier version (e.g. filtering on `<prefix>.>`):
                # narrow it, so the broker stops sending what this one only acks.
                try:
                    await js.add_consumer(self.stream, config)
                except NatsError as exc:
                    log.warning(
                        "cannot update the durable consumer; keeping its configuration",
                        consumer=consumer,
                        error=repr(exc),
                    )
        sub = await js.pull_subscribe_bind(durable=consumer, stream=self.stream)
        return _JetStreamSubscription(sub)

    async def tap(self, types: Sequence[EventType], seen: Tap) -> Untap:
        """An ordered consumer: ephemeral (the server drops it when it is unsubscribed, or
        inactive after a crash), without acks, starting at new messages."""
        js = await self.jetstream()
        subjects = {t.subject(self.subject_prefix) for t in types}

        async def deliver(msg: Msg) -> None:
            if msg.subject in subjects:
                seen(dict(msg.headers or {}))

        sub = await js.subscribe(
            covering_subject(sorted(subjects)),
            stream=self.stream,
            cb=deliver,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
            headers_only=True,  # the order id is in ce-subject; the body is not needed
            inactive_threshold=60.0,
        )

        async def untap() -> None:
            with contextlib.suppress(NatsError, TimeoutError):
                await sub.unsubscribe()

        return untap

    async def delete_stream(self) -> None:
        """Remove the stream and everything in it (tests, and tearing a system down)."""
        js = await self.jetstream()
        await js.delete_stream(self.stream)

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            await _close_quietly(nc)


def covering_subject(subjects: Sequence[str]) -> str:
    """The narrowest single filter subject matching every subject given: token by token,
    the token itself where all agree, else `*`; `>` for the rest once their lengths
    differ. `p.stock.committed` and `p.loyalty.committed` give `p.*.committed`, which
    matches no other orderflow event."""
    split = [s.split(".") for s in subjects]
    if not split:
        raise ValueError("no subjects to cover")
    shortest = min(len(tokens) for tokens in split)
    same_length = all(len(tokens) == shortest for tokens in split)
    out: list[str] = []
    for i in range(shortest):
        column = {tokens[i] for tokens in split}
        if not same_length and i == shortest - 1:
            out.append(">")
            break
        out.append(column.pop() if len(column) == 1 else "*")
    return ".".join(out)


async def _close_quietly(nc: Client) -> None:
    with contextlib.suppress(NatsError, OSError):
        await nc.close()
