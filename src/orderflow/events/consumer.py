"""Consumers: run a service's handlers on the events it subscribes to, each effect once.

A handler is `async def handle(tx, event)`: it makes its effect with the transaction `tx`
(the service's unit of work). The runner inserts `(consumer, event id)` into the inbox in
that same transaction, so a redelivered event, whose row is already there, is acked with
no second effect. Deliveries are handled a batch per transaction; when a batch fails,
its events are handled one per transaction, so one bad event holds back no other.

An event whose handler fails is given back to the bus and delivered again after a
backoff; on its `max_attempts`-th failure it is parked: copied with its envelope to
`inbox_parked` and acked. `list_parked()` shows parked events; `request_redrive()` (from
any process, e.g. `orderflow events redrive ID`) marks one, and the consumer's runner
handles it again: gone from the parked table once handled, still there (attempts
counted) if it fails again; one of a type it does not handle (parked by an earlier version
that did not know the type) is let go. A message that is not an orderflow event is parked
at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic

import structlog
from sqlalchemy import TextClause, delete, func, select, text, update

from orderflow.events.bus import Delivery, EventBus, Subscription
from orderflow.events.envelope import Event, InvalidEventError
from orderflow.events.metrics import EventMetrics
from orderflow.events.registry import EVENT_TYPES, event_type
from orderflow.events.store import SqlConnection, TransactionFactory, TxT, in_transaction
from orderflow.events.tables import EventTables
from orderflow.platform.db import now_us
from orderflow.platform.telemetry import span

log = structlog.get_logger(__name__)

Handler = Callable[[TxT, Event], Awaitable[None]]

# How many failing event ids a runner remembers, to handle them alone when they return.
_FAILING_REMEMBERED = 1000


@dataclass(frozen=True)
class ParkedEvent:
    """An event a consumer gave up on, as `orderflow events parked` lists it."""

    consumer: str
    event_id: str
    event_type: str
    subject: str
    attempts: int
    last_error: str
    parked_us: int
    redrive_requested: bool


async def record_handled(
    connection: SqlConnection, tables: EventTables, consumer: str, event: Event
) -> bool:
    """Insert the inbox row of (consumer, event); False if it was there (already handled)."""
    return event.id in await record_all_handled(connection, tables, consumer, [event])


# Rows per INSERT: 4 parameters each, well under SQLite's and PostgreSQL's limits.
_INBOX_ROWS_PER_STATEMENT = 500
_inbox_inserts: dict[tuple[str, int], TextClause] = {}


def _inbox_insert(table: str, rows: int) -> TextClause:
    """INSERT of `rows` inbox rows that skips those already there and returns the ids of
    those it inserted (the same text on SQLite and PostgreSQL; built once per size)."""
    key = (table, rows)
    statement = _inbox_inserts.get(key)
    if statement is None:
        values = ", ".join(f"(:c{i}, :e{i}, :t{i}, :h{i})" for i in range(rows))
        statement = _inbox_inserts[key] = text(
            f"INSERT INTO {table} (consumer, event_id, event_type, handled_us) VALUES {values} "
            "ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id"
        )
    return statement


async def record_all_handled(
    connection: SqlConnection, tables: EventTables, consumer: str, events: Sequence[Event]
) -> set[str]:
    """Insert the inbox rows of (consumer, event) for each event, a statement per 500, and
    return the ids of those inserted; the others were handled before."""
    unique = list({event.id: event for event in events}.values())
    handled_us = now_us()
    inserted: set[str] = set()
    for start in range(0, len(unique), _INBOX_ROWS_PER_STATEMENT):
        chunk = unique[start : start + _INBOX_ROWS_PER_STATEMENT]
        parameters: dict[str, object] = {}
        for i, event in enumerate(chunk):
            parameters[f"c{i}"] = consumer
            parameters[f"e{i}"] = event.id
            parameters[f"t{i}"] = event.type.name
            parameters[f"h{i}"] = handled_us
        result = await connection.execute(_inbox_insert(tables.inbox.name, len(chunk)), parameters)
        inserted.update(row[0] for row in result.all())
    return inserted


@contextlib.contextmanager
def handling(event: Event, consumer: str) -> Iterator[None]:
    """While a handler runs: its log lines name the event (and the order, for an order's
    event), and with tracing on it is a span in the trace of the change that caused the
    event (its traceparent), so events it writes continue that trace too."""
    ids = {"event_id": event.id, "event_type": event.type.name}
    if event.type.aggregate == "order":
        ids["order_id"] = event.subject
    token = None
    if event.traceparent:  # only with tracing on: OpenTelemetry is not loaded otherwise
        from opentelemetry import context as otel_context
        from opentelemetry import propagate

        token = otel_context.attach(propagate.extract({"traceparent": event.traceparent}))
    try:
        with (
            structlog.contextvars.bound_contextvars(**ids),
            span(f"event {event.type.name}", consumer=consumer, event_id=event.id),
        ):
            yield
    finally:
        if token is not None:
            from opentelemetry import context as otel_context

            otel_context.detach(token)


class ConsumerRunner(Generic[TxT]):
    """Pulls `name`'s subscription to the types in `handlers` (keyed by type name, e.g.
    `order.confirmed`) and runs them; `start()` / `stop()` with the service."""

    def __init__(
        self,
        name: str,
        bus: EventBus,
        begin: TransactionFactory[TxT],
        tables: EventTables,
        handlers: Mapping[str, Handler[TxT]],
        *,
        metrics: EventMetrics | None = None,
        max_attempts: int = 5,
        batch_size: int = 50,
        fetch_timeout: float = 1.0,
        linger_seconds: float = 0.0,
        retry_delay: float = 0.5,
        max_retry_delay: float = 30.0,
        max_round_delay: float = 5.0,
        redrive_every: float = 1.0,
        inbox_retention_seconds: float = 30 * 86_400,
        upkeep_every: float = 300.0,
    ) -> None:
        self.name = name
        self.bus = bus
        self.begin = begin
        self.tables = tables
        self.handlers = dict(handlers)
        self.types = [event_type(t) for t in self.handlers]
        # The other registry types, by ce-type: acked unread if the filter lets them in.
        self._ignored_types = {t.ce_type for t in EVENT_TYPES if t.name not in self.handlers}
        # Ids of events whose handling failed alone, oldest first (a dict as ordered set).
        self._failing: dict[str, None] = {}
        self.metrics = metrics
        self.max_attempts = max_attempts
        self.batch_size = batch_size
        self.fetch_timeout = fetch_timeout
        self.linger_seconds = linger_seconds
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.max_round_delay = max_round_delay
        self.redrive_every = redrive_every
        self.inbox_retention_us = int(inbox_retention_seconds * 1_000_000)
        self.upkeep_every = upkeep_every
        self._subscription: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._next_redrive = 0.0
        self._next_upkeep = 0.0

    async def subscribe(self) -> None:
        """Create (or bind to) the durable subscription; in one-process mode this must
        happen before the relays start."""
        if self._subscription is None:
            self._subscription = await self.bus.subscribe(self.name, self.types)

    async def start(self) -> None:
        """Subscribe and start handling. A broker that is not there yet does not stop the
        service: the runner keeps trying to subscribe, with backoff, like any failed round."""
        try:
            await self.subscribe()
        except Exception as exc:
            log.warning(
                "event consumer cannot subscribe yet; retrying", consumer=self.name, error=repr(exc)
            )
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"consumer-{self.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            with contextlib.suppress(Exception):
                await subscription.close()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            started = loop.time()
            try:
                fetched = await self.run_once()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker or the database: try again, forever
                failures += 1
                # Capped low: a service started before its broker (containers start in
                # any order) takes its backlog within seconds of the broker being there.
                delay = min(self.max_round_delay, self.retry_delay * 2 ** min(failures, 20))
                log.warning(
                    "event consumer failed; retrying",
                    consumer=self.name,
                    error=repr(exc),
                    retry_in=round(delay, 3),
                )
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                continue
            # Events trickling in: let the next batch gather for up to linger_seconds since
            # this fetch began, instead of a transaction for every event or two.
            pause = self.linger_seconds - (loop.time() - started)
            if 0 < fetched < self.batch_size and pause > 0:
                await asyncio.sleep(pause)
            elif fetched:
                # A full batch: on at once, but let the process's other tasks run first
                # (a bus with deliveries waiting answers a fetch without yielding).
                await asyncio.sleep(0)

    async def run_once(self) -> int:
        """Fetch one batch and handle it, then any redrive that was asked for; return how
        many deliveries were fetched."""
        await self.subscribe()
        assert self._subscription is not None
        now = time.monotonic()
        if now >= self._next_redrive:
            self._next_redrive = now + self.redrive_every
            await self.redrive_requested()
        if now >= self._next_upkeep:
            self._next_upkeep = now + self.upkeep_every
            await self.delete_old_inbox_rows()
        deliveries = await self._subscription.fetch(self.batch_size, self.fetch_timeout)
        if deliveries:
            try:
                await self.handle_batch(deliveries)
            except BaseException:
                # Not even parking worked (the database is away): give back what was not
                # settled, to come again after a pause (JetStream ignores a nak after an ack).
                for delivery in deliveries:
                    with contextlib.suppress(Exception):
                        await delivery.nak(self.retry_delay)
                raise
        return len(deliveries)

    # -- handling -------------------------------------------------------------------------

    async def handle_batch(self, deliveries: Sequence[Delivery]) -> None:
        """Handle fetched deliveries: together in one transaction (inbox rows included),
        acked after its commit. If that fails, each is handled in a transaction of its
        own, so the one that fails is retried or parked and the others commit. An event
        that failed alone is handled alone when it comes back, not with a batch again."""
        events: list[tuple[Delivery, Event]] = []
        ignored = 0
        for delivery in deliveries:
            if delivery.headers.get("ce-type") in self._ignored_types:
                # A type this consumer does not handle, let through by its filter subject:
                # acked without reading the body.
                await delivery.ack()
                ignored += 1
                continue
            try:
                event = Event.decode(delivery.headers, delivery.body)
            except InvalidEventError as exc:
                await self._park(delivery, None, exc)
                continue
            if event.type.name not in self.handlers:
                await delivery.ack()
                ignored += 1
                continue
            events.append((delivery, event))
        self._count("ignored", ignored)
        together: list[tuple[Delivery, Event]] = []
        for one in events:
            if one[1].id in self._failing:
                await self._handle_together(together)
                together = []
                await self._handle_together([one])
            else:
                together.append(one)
        await self._handle_together(together)

    async def _handle_together(self, events: Sequence[tuple[Delivery, Event]]) -> None:
        if not events:
            return
        try:
            outcomes = await in_transaction(self.begin, self._applier([e for _, e in events]))
        except Exception as exc:
            if len(events) == 1:
                await self._failed(*events[0], exc)
                return
            log.info(
                "event batch failed; handling its events one at a time",
                consumer=self.name,
                events=len(events),
                error=repr(exc),
            )
            for one in events:
                await self._handle_together([one])
            return
        for _, event in events:
            self._failing.pop(event.id, None)
        await self._acked(events, outcomes)

    def _applier(self, events: Sequence[Event]) -> Callable[[TxT], Awaitable[list[str]]]:
        async def apply(tx: TxT) -> list[str]:
            return await self._apply(tx, events)

        return apply

    async def _apply(self, tx: TxT, events: Sequence[Event]) -> list[str]:
        """Insert the events' inbox rows (one statement), then run the handler of each
        whose row was new, in delivery order; return each event's outcome."""
        new = await record_all_handled(tx.connection, self.tables, self.name, events)
        outcomes = []
        for event in events:
            if event.id in new:
                new.discard(event.id)  # a second copy in the batch is a duplicate
                with handling(event, self.name):
                    await self.handlers[event.type.name](tx, event)
                outcomes.append("handled")
            else:
                outcomes.append("duplicate")
        return outcomes

    async def _acked(
        self, events: Sequence[tuple[Delivery, Event]], outcomes: Sequence[str]
    ) -> None:
        for delivery, _ in events:
            await delivery.ack()
        for outcome, count in collections.Counter(outcomes).items():
            self._count(outcome, count)

    async def _failed(self, delivery: Delivery, event: Event, exc: BaseException) -> None:
        self._failing[event.id] = None
        while len(self._failing) > _FAILING_REMEMBERED:
            del self._failing[next(iter(self._failing))]
        if delivery.attempt >= self.max_attempts:
            await self._park(delivery, event, exc)
            return
        delay = min(self.max_retry_delay, self.retry_delay * 2 ** (delivery.attempt - 1))
        log.warning(
            "event handler failed; will retry",
            consumer=self.name,
            event_id=event.id,
            event_type=event.type.name,
            attempt=delivery.attempt,
            error=repr(exc),
        )
        await delivery.nak(delay)
        self._count("retried")

    async def _park(self, delivery: Delivery, event: Event | None, exc: BaseException) -> None:
        headers = dict(delivery.headers)
        row = {
            "consumer": self.name,
            "event_id": event.id if event else headers.get("ce-id") or f"invalid-{uuid.uuid4()}",
            "event_type": event.type.name if event else headers.get("ce-type", "unknown"),
            "subject": delivery.subject,
            "headers": json.dumps(headers, sort_keys=True),
            "body": delivery.body.decode("utf-8", errors="replace"),
            "attempts": delivery.attempt,
            "last_error": repr(exc)[:2000],
            "parked_us": now_us(),
        }

        async def park(tx: TxT) -> None:
            await tx.connection.execute(
                text(
                    f"INSERT INTO {self.tables.parked.name} (consumer, event_id, event_type, "
                    "subject, headers, body, attempts, last_error, parked_us, redrive_us) "
                    "VALUES (:consumer, :event_id, :event_type, :subject, :headers, :body, "
                    ":attempts, :last_error, :parked_us, NULL) "
                    "ON CONFLICT (consumer, event_id) DO UPDATE SET "
                    "attempts = excluded.attempts, last_error = excluded.last_error, "
                    "parked_us = excluded.parked_us, redrive_us = NULL"
                ),
                row,
            )

        await in_transaction(self.begin, park)
        if event is not None:
            self._failing.pop(event.id, None)
        log.error(
            "event parked",
            consumer=self.name,
            event_id=row["event_id"],
            event_type=row["event_type"],
            attempts=delivery.attempt,
            error=row["last_error"],
        )
        await delivery.ack()
        self._count("parked")
        await self.refresh_parked()

    def _count(self, outcome: str, count: int = 1) -> None:
        if self.metrics is not None and count:
            self.metrics.consumed.labels(self.name, outcome).inc(count)

    # -- parked events --------------------------------------------------------------------

    async def redrive_requested(self) -> int:
        """Handle again each parked event of this consumer that a redrive was asked for;
        return how many were handled."""
        parked = self.tables.parked

        async def requested(tx: TxT) -> list[Any]:
            result = await tx.connection.execute(
                select(parked)
                .where(parked.c.consumer == self.name, parked.c.redrive_us.is_not(None))
                .order_by(parked.c.redrive_us)
                .limit(self.batch_size)
            )
            return list(result.all())

        rows = await in_transaction(self.begin, requested)
        handled = 0
        for row in rows:
            key = (parked.c.consumer == self.name) & (parked.c.event_id == row.event_id)
            try:
                event = Event.decode(json.loads(row.headers), row.body.encode())
                ignored = event.type.name not in self.handlers

                async def again(
                    tx: TxT, event: Event = event, key: Any = key, ignored: bool = ignored
                ) -> None:
                    # A type this consumer does not handle (parked by an earlier version
                    # that did not know it, ADR 28) is let go, as a delivery of it would be.
                    if not ignored:
                        await self._apply(tx, [event])
                    await tx.connection.execute(delete(parked).where(key))

                await in_transaction(self.begin, again)
            except Exception as exc:
                error = repr(exc)[:2000]

                async def still_failing(tx: TxT, error: str = error, key: Any = key) -> None:
                    await tx.connection.execute(
                        update(parked)
                        .where(key)
                        .values(attempts=parked.c.attempts + 1, last_error=error, redrive_us=None)
                    )

                await in_transaction(self.begin, still_failing)
                log.warning(
                    "redrive failed; event stays parked",
                    consumer=self.name,
                    event_id=row.event_id,
                    error=error,
                )
            else:
                handled += 1
                self._count("ignored" if ignored else "redriven")
        if rows:
            await self.refresh_parked()
        return handled

    async def refresh_parked(self) -> None:
        if self.metrics is None:
            return
        parked = self.tables.parked

        async def count(tx: TxT) -> int:
            result = await tx.connection.execute(
                select(func.count()).select_from(parked).where(parked.c.consumer == self.name)
            )
            return int(result.scalar_one())

        self.metrics.parked.labels(self.name).set(await in_transaction(self.begin, count))

    async def delete_old_inbox_rows(self, batch: int = 1000) -> int:
        """Forget handled events older than the inbox retention (which must outlast any
        redelivery), a batch per transaction; also refreshes the parked gauge."""
        inbox = self.tables.inbox
        total = 0
        while True:
            cutoff = now_us() - self.inbox_retention_us

            async def sweep(tx: TxT, cutoff: int = cutoff) -> int:
                old = (
                    select(inbox.c.event_id)
                    .where(inbox.c.consumer == self.name, inbox.c.handled_us < cutoff)
                    .limit(batch)
                )
                result = await tx.connection.execute(
                    delete(inbox).where(
                        inbox.c.consumer == self.name, inbox.c.event_id.in_(old.scalar_subquery())
                    )
                )
                return int(result.rowcount)

            deleted = await in_transaction(self.begin, sweep)
            total += deleted
            if deleted < batch:
                break
        await self.refresh_parked()
        return total


async def list_parked(
    begin: TransactionFactory[TxT], tables: EventTables, consumer: str | None = None
) -> list[ParkedEvent]:
    """The parked events of one consumer (or all), oldest first."""
    parked = tables.parked

    async def read(tx: TxT) -> list[ParkedEvent]:
        query = select(parked).order_by(parked.c.parked_us, parked.c.event_id)
        if consumer is not None:
            query = query.where(parked.c.consumer == consumer)
        return [
            ParkedEvent(
                consumer=row.consumer,
                event_id=row.event_id,
                event_type=row.event_type,
                subject=row.subject,
                attempts=row.attempts,
                last_error=row.last_error,
                parked_us=row.parked_us,
                redrive_requested=row.redrive_us is not None,
            )
            for row in (await tx.connection.execute(query)).all()
        ]

    return await in_transaction(begin, read)


async def request_redrive(
    begin: TransactionFactory[TxT],
    tables: EventTables,
    event_id: str,
    consumer: str | None = None,
) -> int:
    """Ask for parked event `event_id` (of `consumer`, or of every consumer that parked it)
    to be handled again; return how many parked rows were marked (0: no such event)."""
    parked = tables.parked

    async def mark(tx: TxT) -> int:
        query = update(parked).where(parked.c.event_id == event_id).values(redrive_us=now_us())
        if consumer is not None:
            query = query.where(parked.c.consumer == consumer)
        return int((await tx.connection.execute(query)).rowcount)

    return await in_transaction(begin, mark)
