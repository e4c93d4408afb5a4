"""A service's event backlog as its GetEventsBacklog reads it (the console's Events card):
unpublished outbox rows and the oldest one's time, parked events newest first with what
they are about, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

from sqlalchemy import insert

from orderflow.events.backlog import BacklogReader, fill_response
from orderflow.events.bus import InProcessBus
from orderflow.orders.v1 import orders_pb2
from orderflow.platform.db import now_us
from tests.integration.test_events_outbox import Running, ToyService, running, toy

__all__ = ["running", "toy"]  # the fixtures this module uses


async def park(toy: ToyService, event_id: str, parked_us: int, subject: str) -> None:
    async with toy.begin() as uow:
        await uow.connection.execute(
            insert(toy.tables.parked),
            {
                "consumer": "audit",
                "event_id": event_id,
                "event_type": "order.confirmed",
                "subject": "orderflow.events.order.confirmed",
                "headers": json.dumps({"ce-subject": subject}),
                "body": "{}",
                "attempts": 5,
                "last_error": f"no such sku for {subject}",
                "parked_us": parked_us,
                "redrive_us": None,
            },
        )
        await uow.commit()


async def test_the_backlog_counts_unpublished_rows_and_lists_parked_events_newest_first(
    toy: ToyService, running: Running
) -> None:
    reader = BacklogReader(toy.begin, toy.tables)
    empty = await reader.read()
    assert (empty.pending, empty.oldest_pending_us, empty.parked, empty.parked_count) == (
        0,
        None,
        [],
        0,
    )
    before = now_us()
    for i in range(3):
        await toy.confirm(f"o-{i}", 100)
    found = await reader.read()
    assert found.pending == 3
    assert found.oldest_pending_us is not None and found.oldest_pending_us >= before - 1_000_000
    assert await running.relay(toy, InProcessBus()).run_once() == 3
    assert (await reader.read()).pending == 0

    for n in range(3):
        await park(toy, f"e-{n}", before + n, f"o-{n}")
    parked = await reader.read(limit=2)
    assert parked.parked_count == 3
    assert [(p.event_id, aggregate) for p, aggregate in parked.parked] == [
        ("e-2", "o-2"),
        ("e-1", "o-1"),
    ]
    assert parked.parked[0][0].attempts == 5

    response = orders_pb2.GetEventsBacklogResponse()
    fill_response(response, orders_pb2.ParkedEvent, parked)
    assert response.parked_count == 3 and not response.HasField("oldest_pending_at")
    assert [(p.event_id, p.aggregate) for p in response.parked] == [("e-2", "o-2"), ("e-1", "o-1")]
    assert "no such sku for o-2" in response.parked[0].last_error
