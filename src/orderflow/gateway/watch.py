"""Wakes the gateway's WatchOrder streams when their order changes, from the order events.

The gateway taps the event bus for order events (ADR 27): in one-process mode the
services' in-process bus, handed to the app; in per-service mode an ephemeral JetStream
consumer of its own (ORDERFLOW_NATS_URL), which the server drops when the gateway goes.
An event's ce-subject is its order id; each stream watching that order is woken and reads
the order once. Each change WatchOrder promises has an event, whichever gateway or worker
made it: confirmed, rejected, cancel requested (ADR 28), cancelled, settled. The gateway
also wakes its streams itself after it changes an order. Without a bus (per-service mode
with no NATS) or while the tap is not up, streams re-read their order every
`resync_seconds` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping

import structlog

from orderflow.events.bus import EventTap, Untap
from orderflow.events.registry import EVENT_TYPES

log = structlog.get_logger("orderflow.gateway.watch")

ORDER_EVENTS = tuple(t for t in EVENT_TYPES if t.name.startswith("order."))


class OrderWatch:
    def __init__(self, bus: EventTap | None = None, retry_seconds: float = 5.0) -> None:
        self._bus = bus
        self._retry = retry_seconds
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._untap: Untap | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def live(self) -> bool:
        """Whether order events arrive (else streams re-read on a timer)."""
        return self._untap is not None

    @property
    def watchers(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    def notify(self, order_id: str) -> None:
        for changed in self._waiters.get(order_id, ()):
            changed.set()

    def _seen(self, headers: Mapping[str, str]) -> None:
        order_id = headers.get("ce-subject")
        if order_id:
            self.notify(order_id)

    @contextlib.contextmanager
    def watching(self, order_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever order_id may have changed, for the block's duration."""
        changed = asyncio.Event()
        self._waiters.setdefault(order_id, set()).add(changed)
        try:
            yield changed
        finally:
            waiters = self._waiters.get(order_id)
            if waiters is not None:
                waiters.discard(changed)
                if not waiters:
                    del self._waiters[order_id]

    async def start(self) -> None:
        """Tap the bus now, or keep trying in the background (the broker may be down)."""
        if self._bus is None:
            return
        if not await self._try_tap():
            self._task = asyncio.create_task(self._keep_trying())

    async def _try_tap(self) -> bool:
        assert self._bus is not None
        try:
            self._untap = await self._bus.tap(ORDER_EVENTS, self._seen)
        except Exception as exc:  # the broker is down: streams re-read on a timer meanwhile
            log.warning("order_events_unavailable", error=repr(exc))
            return False
        return True

    async def _keep_trying(self) -> None:
        while not await self._try_tap():  # noqa: ASYNC110 - a retry interval, not a condition
            await asyncio.sleep(self._retry)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._untap is not None:
            untap, self._untap = self._untap, None
            await untap()
        for waiters in self._waiters.values():  # streams still open re-read and see the end
            for changed in waiters:
                changed.set()
