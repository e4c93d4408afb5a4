"""The relay: publishes a service's outbox to the bus, in outbox order, at least once.

Every replica of a service runs one; only the holder of the lease row publishes, so one
aggregate's events leave in the order they committed (two relays claiming rows side by
side could swap two events of one order). The others stand by and take the lease over
once its holder stops renewing it (it died, or lost its database). A relay publishes a
batch of rows in `seq` order, all at once, then waits for all the broker's acks, and
marks the acknowledged rows published in one transaction, which first checks it still
holds the lease and then reads the next batch: under load, one transaction per batch.
A crash between publish and mark publishes the rows again: the broker drops them by
Nats-Msg-Id, and consumers by their inbox.

It is woken by each commit that wrote events (`wake()`), and goes on at once while rows
keep coming; events committed while a batch is out go in the next. An idle relay looks
again every `poll_seconds` (for rows of other replicas of its service).

When the broker does not take a batch, the relay retries it with capped, jittered
exponential backoff, forever; the rows wait in the outbox meanwhile. Published rows
older than the retention are deleted in batches by the active relay.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic

import structlog
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import DBAPIError

from orderflow.events.bus import EventBus, PublishError
from orderflow.events.envelope import WireMessage, wire_headers
from orderflow.events.metrics import EventMetrics
from orderflow.events.registry import event_type
from orderflow.events.store import SqlConnection, TransactionFactory, TxT, in_transaction
from orderflow.events.tables import EventTables
from orderflow.platform.db import now_us

log = structlog.get_logger(__name__)


class LeaseLostError(Exception):
    """Another relay holds the lease now: what this one published is left unmarked."""


def default_holder(service: str) -> str:
    """A name for this relay that no other process shares: service, host, pid, random."""
    return f"{service}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


async def take_lease(
    connection: SqlConnection, tables: EventTables, name: str, holder: str, ttl_us: int
) -> bool:
    """Take or renew lease `name` for `holder` until now + ttl; False while another holds
    it. Renewal and takeover are one conditional UPDATE, so two contenders never both win."""
    now = now_us()
    lease = tables.lease
    taken = await connection.execute(
        update(lease)
        .where(lease.c.name == name)
        .where((lease.c.holder == holder) | (lease.c.expires_us < now))
        .values(holder=holder, expires_us=now + ttl_us)
    )
    if taken.rowcount == 1:
        return True
    inserted = await connection.execute(
        text(
            f"INSERT INTO {lease.name} (name, holder, expires_us) "
            "VALUES (:name, :holder, :expires) ON CONFLICT (name) DO NOTHING"
        ),
        {"name": name, "holder": holder, "expires": now + ttl_us},
    )
    return inserted.rowcount == 1


class OutboxRelay(Generic[TxT]):
    """Publishes the outbox of `service` through `bus`; `start()` it with the service and
    `stop()` it on shutdown. `wake()` after a commit that wrote events saves waiting for
    the next poll."""

    def __init__(
        self,
        service: str,
        bus: EventBus,
        begin: TransactionFactory[TxT],
        tables: EventTables,
        *,
        metrics: EventMetrics | None = None,
        holder: str | None = None,
        batch_size: int = 100,
        lease_seconds: float = 10.0,
        poll_seconds: float = 0.2,
        linger_seconds: float = 0.0,
        publish_timeout: float = 5.0,
        max_backoff: float = 10.0,
        retention_seconds: float = 7 * 86_400,
        retention_batch: int = 1000,
        retention_every: float = 60.0,
        metrics_every: float = 1.0,
    ) -> None:
        if publish_timeout >= lease_seconds * 2 / 3:
            # A batch starts with at least 2/3 of the lease left, and must end inside it.
            raise ValueError("publish_timeout must be shorter than 2/3 of lease_seconds")
        self.service = service
        self.bus = bus
        self.begin = begin
        self.tables = tables
        self.metrics = metrics
        self.holder = holder or default_holder(service)
        self.lease_name = f"relay/{service}"
        self.batch_size = batch_size
        self.lease_us = int(lease_seconds * 1_000_000)
        self.poll_seconds = poll_seconds
        self.linger_seconds = linger_seconds
        self.publish_timeout = publish_timeout
        self.max_backoff = max_backoff
        self.retention_us = int(retention_seconds * 1_000_000)
        self.retention_batch = retention_batch
        self.retention_every = retention_every
        self.metrics_every = metrics_every
        self.active = False
        self._lease_until = 0.0  # monotonic time until which this relay may publish
        self._wake = asyncio.Event()
        # The next batch, read in the transaction that marked the last one.
        self._next_rows: list[Row[Any]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._next_retention = 0.0
        self._next_metrics = 0.0
        # The service's own upkeep, run by the active relay with its retention (e.g.
        # forgetting old idempotency keys, ADR 0023): each returns how many rows it deleted.
        self.housekeeping: list[Callable[[], Awaitable[int]]] = []

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self.service}")

    async def stop(self) -> None:
        """Stop relaying; an active relay gives its lease up so a standby need not wait."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.active:
            with contextlib.suppress(DBAPIError, OSError):
                await in_transaction(self.begin, self._release)
            self.active = False

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            started = loop.time()
            try:
                published = await self.run_once()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker or the database: try again, forever
                self._next_rows = None
                failures += 1
                delay = min(self.max_backoff, self.poll_seconds * 2 ** min(failures, 20))
                if isinstance(exc, PublishError) and self.metrics is not None:
                    self.metrics.publish_failures.labels(self.service).inc()
                log.warning(
                    "outbox relay failed; retrying",
                    service=self.service,
                    error=repr(exc),
                    failures=failures,
                    retry_in=round(delay, 3),
                )
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                continue
            if not self.active:
                # Another relay holds the lease: try for it again a third of a lease on, or
                # at the next commit. The wake is cleared here, since a standby never reads
                # the outbox (which clears it): left set, every commit would have the relay
                # try for the lease in a loop that never waits (and, on inline SQLite, never
                # lets the process's other work run).
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.lease_us / 3_000_000)
                continue
            # A backlog (rows read with the last mark, or a full batch): on at once, after
            # letting the other tasks of the process run.
            if self._next_rows or published >= self.batch_size:
                await asyncio.sleep(0)
                continue
            if not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
            # Rows keep coming one commit at a time: let a batch gather for up to
            # linger_seconds since the last round began, instead of a round per commit.
            pause = self.linger_seconds - (loop.time() - started)
            if published and pause > 0:
                await asyncio.sleep(pause)

    # -- one round ------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Hold the lease, publish one batch, mark it; return how many rows were published
        (0 when there was nothing to do or another relay holds the lease)."""
        now = time.monotonic()
        if now >= self._next_metrics and self.metrics is not None:
            self._next_metrics = now + self.metrics_every
            await self.refresh_metrics()
        # Renew well before expiry, so that a batch never runs past the lease.
        if now > self._lease_until - (self.lease_us / 1_000_000) * 2 / 3:
            await self._hold()
        if not self.active:
            self._next_rows = None
            return 0
        if now >= self._next_retention:
            self._next_retention = now + self.retention_every
            await self.delete_published()
            for upkeep in self.housekeeping:
                try:
                    await upkeep()
                except Exception as exc:  # upkeep never stops publishing; next round again
                    log.warning("housekeeping_failed", service=self.service, error=str(exc))
        rows: Sequence[Row[Any]] | None = self._next_rows
        self._next_rows = None
        if not rows:
            rows = await in_transaction(self.begin, self._unpublished)
        if not rows:
            return 0
        messages = [_wire(row) for row in rows]
        try:
            acked = await self.bus.publish(messages, self.publish_timeout)
        except PublishError as exc:
            if exc.acked:
                await self._mark(rows[: exc.acked], read_next=False)
            raise
        # The next batch is read with the mark when this one was full (more are surely
        # waiting), or when the relay does not linger (it goes on at once).
        await self._mark(
            rows[:acked], read_next=acked >= self.batch_size or not self.linger_seconds
        )
        return acked

    async def _hold(self) -> None:
        started = time.monotonic()

        async def attempt(tx: TxT) -> bool:
            return await take_lease(
                tx.connection, self.tables, self.lease_name, self.holder, self.lease_us
            )

        held = await in_transaction(self.begin, attempt)
        if held != self.active:
            log.info(
                "outbox relay active" if held else "outbox relay standing by",
                service=self.service,
                holder=self.holder,
            )
        self.active = held
        self._lease_until = started + self.lease_us / 1_000_000 if held else 0.0

    async def _release(self, tx: TxT) -> None:
        lease = self.tables.lease
        await tx.connection.execute(
            update(lease)
            .where(lease.c.name == self.lease_name, lease.c.holder == self.holder)
            .values(expires_us=0)
        )

    async def _unpublished(self, tx: TxT) -> Sequence[Row[Any]]:
        """The next batch, in outbox order. A commit's wake from before this read is
        cleared: the read sees that commit's rows."""
        self._wake.clear()
        outbox = self.tables.outbox
        result = await tx.connection.execute(
            select(outbox)
            .where(outbox.c.published_us.is_(None))
            .order_by(outbox.c.seq)
            .limit(self.batch_size)
        )
        return result.all()

    async def _mark(self, rows: Sequence[Row[Any]], *, read_next: bool = True) -> None:
        """Mark rows published; with read_next, read the next batch in the same
        transaction (kept for the next round: one transaction per batch under load)."""
        if not rows:
            return
        started = time.monotonic()

        async def mark(tx: TxT) -> Sequence[Row[Any]] | None:
            # The lease first: a relay that lost it while publishing marks nothing, so its
            # successor publishes those rows again (and the broker drops the repeats).
            if not await take_lease(
                tx.connection, self.tables, self.lease_name, self.holder, self.lease_us
            ):
                raise LeaseLostError(f"{self.holder} lost the lease of {self.service}'s relay")
            outbox = self.tables.outbox
            await tx.connection.execute(
                update(outbox)
                .where(outbox.c.seq.in_([row.seq for row in rows]))
                .values(published_us=now_us())
            )
            return await self._unpublished(tx) if read_next else None

        try:
            next_rows = await in_transaction(self.begin, mark)
        except LeaseLostError:
            self.active = False
            self._lease_until = 0.0
            raise
        self._lease_until = started + self.lease_us / 1_000_000
        # Read after the mark, in its transaction: none of the rows just marked.
        self._next_rows = list(next_rows) if next_rows else None
        if self.metrics is not None:
            for kind, count in collections.Counter(row.event_type for row in rows).items():
                self.metrics.published.labels(self.service, kind).inc(count)

    # -- upkeep -----------------------------------------------------------------------------

    async def delete_published(self) -> int:
        """Delete rows published longer than the retention ago, a batch per transaction."""
        outbox = self.tables.outbox
        total = 0
        while True:
            cutoff = now_us() - self.retention_us

            async def sweep(tx: TxT, cutoff: int = cutoff) -> int:
                oldest = (
                    select(outbox.c.seq)
                    .where(outbox.c.published_us < cutoff)
                    .order_by(outbox.c.seq)
                    .limit(self.retention_batch)
                )
                result = await tx.connection.execute(
                    delete(outbox).where(outbox.c.seq.in_(oldest.scalar_subquery()))
                )
                return int(result.rowcount)

            deleted = await in_transaction(self.begin, sweep)
            total += deleted
            if deleted < self.retention_batch:
                return total

    async def refresh_metrics(self) -> None:
        """Backlog and age of the oldest unpublished row (any replica reports them)."""
        if self.metrics is None:
            return
        outbox = self.tables.outbox

        async def read(tx: TxT) -> tuple[int, int | None]:
            row: Any = (
                await tx.connection.execute(
                    select(func.count(), func.min(outbox.c.created_us)).where(
                        outbox.c.published_us.is_(None)
                    )
                )
            ).one()
            return int(row[0]), row[1]

        pending, oldest = await in_transaction(self.begin, read)
        self.metrics.set_outbox(self.service, pending, oldest)


def _wire(row: Row[Any]) -> WireMessage:
    kind = event_type(row.event_type)
    headers = wire_headers(
        event_id=row.id,
        kind=kind,
        source=row.source,
        subject=row.aggregate_id,
        time=row.time,
        traceparent=row.traceparent,
    )
    return WireMessage(kind, headers, row.payload.encode())
