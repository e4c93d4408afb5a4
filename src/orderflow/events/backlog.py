"""What an operator wants to know of one service's events: its outbox backlog (events not
yet published, and how long the oldest has waited) and the events its consumer parked.

Read from the service's own database by the service itself, and served over its gRPC API
(`GetEventsBacklog` of each service), so that the gateway's console can show it in every
mode without reaching any service's database (ADR 30).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from sqlalchemy import func, select

from orderflow.events.consumer import ParkedEvent
from orderflow.events.store import TransactionFactory, TxT, in_transaction
from orderflow.events.tables import EventTables
from orderflow.validation import check_limit

R = TypeVar("R")

DEFAULT_PARKED = 20
MAX_PARKED = 100


@dataclass(frozen=True)
class Backlog:
    """Unpublished outbox rows and the oldest one's creation time (None when there is
    none); the newest parked events (at most the limit asked), each with what it is about
    (its ce-subject), and how many are parked."""

    pending: int
    oldest_pending_us: int | None
    parked: list[tuple[ParkedEvent, str]]
    parked_count: int


class BacklogReader(Generic[TxT]):
    """Reads a service's event backlog on its own database, in one read transaction."""

    def __init__(self, begin: TransactionFactory[TxT], tables: EventTables) -> None:
        self.begin = begin
        self.tables = tables

    async def read(self, limit: int = 0) -> Backlog:
        """The backlog with the newest `limit` parked events (0: the default, 20; 1..100,
        else InvalidArgumentError)."""
        limit = check_limit(limit, default=DEFAULT_PARKED, maximum=MAX_PARKED)
        outbox, parked = self.tables.outbox, self.tables.parked

        async def work(tx: Any) -> Backlog:
            conn = tx.connection
            pending, oldest = (
                await conn.execute(
                    select(func.count(), func.min(outbox.c.created_us)).where(
                        outbox.c.published_us.is_(None)
                    )
                )
            ).one()
            count = (await conn.execute(select(func.count()).select_from(parked))).scalar_one()
            rows = (
                await conn.execute(
                    select(parked)
                    .order_by(parked.c.parked_us.desc(), parked.c.event_id)
                    .limit(limit)
                )
            ).all()
            return Backlog(
                pending=int(pending),
                oldest_pending_us=None if oldest is None else int(oldest),
                parked=[
                    (
                        ParkedEvent(
                            consumer=row.consumer,
                            event_id=row.event_id,
                            event_type=row.event_type,
                            subject=row.subject,
                            attempts=row.attempts,
                            last_error=row.last_error,
                            parked_us=row.parked_us,
                            redrive_requested=row.redrive_us is not None,
                        ),
                        _aggregate(row.headers),
                    )
                    for row in rows
                ],
                parked_count=int(count),
            )

        return await in_transaction(self.begin, work)


def _aggregate(headers: str) -> str:
    """The ce-subject among a parked message's headers (JSON), or "" if it has none."""
    try:
        value = json.loads(headers).get("ce-subject", "")
    except (ValueError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""


def fill_response(response: Any, parked_type: Any, backlog: Backlog) -> None:
    """Fill a service's GetEventsBacklogResponse (each service's proto has its own, of one
    shape) from backlog; parked_type is that proto's ParkedEvent."""
    response.pending = backlog.pending
    if backlog.oldest_pending_us is not None:
        response.oldest_pending_at.FromMicroseconds(backlog.oldest_pending_us)
    response.parked_count = backlog.parked_count
    for p, aggregate in backlog.parked:
        msg = parked_type(
            aggregate=aggregate,
            consumer=p.consumer,
            event_id=p.event_id,
            event_type=p.event_type,
            subject=p.subject,
            attempts=p.attempts,
            last_error=p.last_error[:1000],
            redrive_requested=p.redrive_requested,
        )
        msg.parked_at.FromMicroseconds(p.parked_us)
        response.parked.append(msg)


async def answer(
    reader: BacklogReader[Any] | None,
    limit: int,
    context: grpc.aio.ServicerContext,
    response: R,
    parked_type: Any,
) -> R:
    """A service's GetEventsBacklog, the same in each: UNIMPLEMENTED where the service has no
    event tables, else its backlog read and filled into response."""
    if reader is None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no event tables here")
    assert reader is not None
    fill_response(response, parked_type, await reader.read(limit))
    return response
