"""A consumer whose broker is not there yet keeps trying, and never waits long between
tries: containers start in any order, and a service up before its broker must take its
backlog within seconds of the broker coming up, not after a backoff grown to half a minute."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import MetaData

from orderflow.events import BrokerUnavailableError, EventType, InProcessBus
from orderflow.events.consumer import ConsumerRunner
from orderflow.events.tables import event_tables


class LateBroker(InProcessBus):
    """Unreachable for the first `down` subscriptions, then an in-process bus."""

    def __init__(self, down: int) -> None:
        super().__init__()
        self.down = down
        self.attempts = 0

    async def subscribe(self, consumer: str, types: Sequence[EventType]) -> Any:
        self.attempts += 1
        if self.attempts <= self.down:
            raise BrokerUnavailableError("NATS at nats://nats:4222: refused", 0)
        return await super().subscribe(consumer, types)


async def test_retries_of_an_unreachable_broker_stay_within_five_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float, *args: Any) -> Any:
        waits.append(delay)
        return await real_sleep(0)

    async def handler(tx: Any, event: Any) -> None:
        raise AssertionError("nothing is published")

    bus = LateBroker(down=12)
    runner = ConsumerRunner(
        "inventory",
        bus,
        begin=None,  # type: ignore[arg-type]  # never reached: no delivery is fetched
        tables=event_tables(MetaData()),
        handlers={"order.confirmed": handler},
        fetch_timeout=0.01,
    )
    monkeypatch.setattr(asyncio, "sleep", sleep)
    await runner.start()
    try:
        for _ in range(200):
            if bus.attempts > bus.down:
                break
            await real_sleep(0.001)
    finally:
        monkeypatch.setattr(asyncio, "sleep", real_sleep)
        await runner.stop()
    assert bus.attempts > bus.down, "the consumer stopped trying"
    retry_waits = waits[: bus.down]
    assert len(retry_waits) == bus.down
    assert retry_waits[0] <= 1.0
    assert max(retry_waits) <= 5.0, retry_waits
    # It still backs off: the later waits are longer than the first.
    assert max(retry_waits) > 2 * retry_waits[0]
