"""Following events and operating parked ones from outside the services (`orderflow events`).

`orderflow events` (orderflow.events_cli) is built on this module. It reaches each
service's own database (ORDERFLOW_<SERVICE>_DATABASE_URL, the same settings the service
reads) and, with ORDERFLOW_NATS_URL, the JetStream stream. See ADR 20.

- `OutboxFollower` reads one service's outbox table and yields committed events in `seq`
  order, following new rows. A row of another aggregate may commit after a row with a
  higher `seq` (PostgreSQL draws `seq` at insert, not at commit), so a `seq` skipped over
  is looked for again until it is `gap_seconds` old (rolled-back inserts leave gaps
  that never fill).
- `follow_jetstream()` is an ephemeral ordered consumer on the stream: new events only, or
  everything the stream still holds.
- `all_parked()` and `redrive()` read and mark each service's `inbox_parked` table
  (through `list_parked` / `request_redrive`); the consumer's runner in the service
  handles a marked event again.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, func, inspect, or_, select
from sqlalchemy.engine import make_url

from orderflow.events.consumer import ParkedEvent, list_parked, request_redrive
from orderflow.events.envelope import Event, wire_headers
from orderflow.events.registry import EventType, event_type
from orderflow.events.settings import EventsSettings
from orderflow.events.tables import LEASE, OUTBOX, PARKED, EventTables, event_tables
from orderflow.platform.db import Database, UnitOfWork, create_database


class AdminError(Exception):
    """Something an operator must fix (a database absent or not migrated, no broker)."""


class NoDatabaseError(AdminError):
    """A SQLite database file that does not exist (the service never ran there)."""


@dataclass(frozen=True)
class ServiceDatabase:
    """One service's database, as its settings name it."""

    service: str
    url: str

    @property
    def sqlite_path(self) -> Path | None:
        url = make_url(self.url)
        if url.get_backend_name() != "sqlite" or not url.database:
            return None
        return Path(url.database)

    def describe(self) -> str:
        """The URL without its password, for messages."""
        return make_url(self.url).render_as_string(hide_password=True)


class EventsDatabase:
    """A connection pool on one service's database and its event tables."""

    def __init__(self, where: ServiceDatabase) -> None:
        self.where = where
        self.service = where.service
        self.tables: EventTables = event_tables(MetaData())
        self._database: Database | None = None

    @property
    def database(self) -> Database:
        assert self._database is not None, "open() first"
        return self._database

    def begin(self) -> UnitOfWork:
        return UnitOfWork(self.database)

    async def open(self) -> None:
        """Connect and check the event tables are there; AdminError if not. A SQLite file
        is never created here: a missing one is NoDatabaseError."""
        path = self.where.sqlite_path
        if path is not None and not path.exists():
            raise NoDatabaseError(f"{self.service}: no database at {path}")
        self._database = create_database(self.where.url, pool_size=1)
        try:
            async with self.database.reading() as conn:
                names = set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
        except Exception as exc:
            await self.close()
            raise AdminError(
                f"{self.service}: database {self.where.describe()} not reachable: {exc}"
            ) from exc
        missing = {OUTBOX, PARKED, LEASE} - names
        if missing:
            await self.close()
            raise AdminError(
                f"{self.service}: database {self.where.describe()} has no "
                f"{', '.join(sorted(missing))} table: run `orderflow migrate {self.service}`"
            )

    async def close(self) -> None:
        database, self._database = self._database, None
        if database is not None:
            await database.dispose()


def service_databases(
    services: Sequence[str], settings_of: Callable[[str], Any], data_dir: Path | None = None
) -> list[ServiceDatabase]:
    """Each service's database from its settings; with `data_dir`, a service whose
    database URL is not configured uses `<data_dir>/<service>.db`, as `orderflow run
    --data-dir` does."""
    found = []
    for service in services:
        cfg = settings_of(service)
        url = cfg.database_url
        if data_dir is not None and "database_url" not in cfg.model_fields_set:
            url = f"sqlite+aiosqlite:///{(data_dir / f'{service}.db').resolve()}"
        found.append(ServiceDatabase(service, url))
    return found


# -- tail ------------------------------------------------------------------------------------


def row_event(row: Any) -> Event:
    """The event an outbox row holds, exactly as the relay would send it."""
    kind = event_type(row.event_type)
    headers = wire_headers(
        event_id=row.id,
        kind=kind,
        source=row.source,
        subject=row.aggregate_id,
        time=row.time,
        traceparent=row.traceparent,
    )
    return Event.decode(headers, row.payload.encode())


@dataclass
class OutboxFollower:
    """Committed outbox rows of one service, in `seq` order, then each new one."""

    db: EventsDatabase
    from_start: bool = False
    gap_seconds: float = 60.0
    max_gaps: int = 1000
    batch: int = 1000
    cursor: int = 0
    # seq skipped over -> monotonic time after which it is given up on
    gaps: dict[int, float] = field(default_factory=dict)
    _started: bool = False

    async def _scalar(self, query: Any) -> Any:
        async with self.db.database.reading() as conn:
            return (await conn.execute(query)).scalar()

    async def start(self) -> None:
        outbox = self.db.tables.outbox
        if self.from_start:
            lowest = await self._scalar(select(func.min(outbox.c.seq)))
            self.cursor = 0 if lowest is None else int(lowest) - 1
        else:
            highest = await self._scalar(select(func.max(outbox.c.seq)))
            self.cursor = 0 if highest is None else int(highest)
            # A transaction open now may hold a lower seq than the highest committed: the
            # recent seqs not there yet are looked for as gaps too.
            low = max(self.cursor - self.max_gaps, 0)
            async with self.db.database.reading() as conn:
                present = set(
                    (
                        await conn.execute(
                            select(outbox.c.seq).where(
                                outbox.c.seq > low, outbox.c.seq <= self.cursor
                            )
                        )
                    ).scalars()
                )
            until = time.monotonic() + self.gap_seconds
            self.gaps = {
                seq: until for seq in range(low + 1, self.cursor + 1) if seq not in present
            }
        self._started = True

    async def poll(self) -> list[tuple[int, Event]]:
        """The rows committed since the last poll, as (created_us, event), in seq order."""
        if not self._started:
            await self.start()
        outbox = self.db.tables.outbox
        now = time.monotonic()
        self.gaps = {seq: until for seq, until in self.gaps.items() if until > now}
        condition = outbox.c.seq > self.cursor
        if self.gaps:
            condition = or_(condition, outbox.c.seq.in_(sorted(self.gaps)))
        async with self.db.database.reading() as conn:
            rows = (
                await conn.execute(
                    select(outbox).where(condition).order_by(outbox.c.seq).limit(self.batch)
                )
            ).all()
        out = []
        for row in rows:
            seq = int(row.seq)
            if seq > self.cursor:
                for missing in range(self.cursor + 1, seq):
                    self.gaps[missing] = now + self.gap_seconds
                self.cursor = seq
            else:
                self.gaps.pop(seq, None)
            out.append((int(row.created_us), row_event(row)))
        if len(self.gaps) > self.max_gaps:
            for seq in sorted(self.gaps)[: len(self.gaps) - self.max_gaps]:
                del self.gaps[seq]
        return out


async def follow_outboxes(
    followers: Sequence[OutboxFollower], poll_seconds: float
) -> AsyncIterator[Event]:
    """The events of every follower's outbox, merged by creation time (each service's own
    in seq order), then each new one, polling every `poll_seconds`."""
    while True:
        batches = [await follower.poll() for follower in followers]
        # heapq.merge never reorders within one input, even where creation times disagree
        # with seq order (concurrent transactions of different aggregates).
        for _, event in heapq.merge(*batches, key=lambda item: item[0]):
            yield event
        if not any(batches):
            await asyncio.sleep(poll_seconds)


async def follow_jetstream(
    settings: EventsSettings,
    kind: EventType | None,
    from_start: bool,
    ready: Callable[[], None] | None = None,
) -> AsyncIterator[tuple[Event | None, Any]]:
    """Events from the stream through an ephemeral ordered consumer: (event, None), or
    (None, msg) for a message that is not an orderflow event; `ready()` is called once
    the consumer exists (what is published from then on is delivered). AdminError
    without a broker."""
    from nats.js.api import DeliverPolicy

    from orderflow.events.envelope import InvalidEventError
    from orderflow.events.jetstream import BrokerUnavailableError, JetStreamBus

    bus = JetStreamBus(
        settings.nats_url,
        stream=settings.events_stream,
        subject_prefix=settings.events_subject_prefix,
    )
    try:
        js = await bus.jetstream()
    except BrokerUnavailableError as exc:
        raise AdminError(f"no JetStream at {settings.nats_url}: {exc}") from exc
    subject = (
        kind.subject(settings.events_subject_prefix)
        if kind is not None
        else f"{settings.events_subject_prefix}.>"
    )
    try:
        sub = await js.subscribe(
            subject,
            stream=settings.events_stream,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL if from_start else DeliverPolicy.NEW,
        )
        if ready is not None:
            ready()
        try:
            async for msg in sub.messages:
                try:
                    yield Event.decode(msg.headers or {}, msg.data), None
                except InvalidEventError:
                    yield None, msg
        finally:
            await sub.unsubscribe()
    finally:
        await bus.close()


# -- parked and redrive --------------------------------------------------------------------------


@dataclass(frozen=True)
class ParkedIn:
    """A parked event, the service whose database holds it, and the aggregate it is about
    (its ce-subject; `parked.subject` is the subject it arrived on)."""

    service: str
    parked: ParkedEvent
    aggregate: str = ""


async def _ce_subjects(db: EventsDatabase) -> dict[tuple[str, str], str]:
    parked = db.tables.parked
    async with db.database.reading() as conn:
        rows = (
            await conn.execute(select(parked.c.consumer, parked.c.event_id, parked.c.headers))
        ).all()
    found = {}
    for consumer, event_id, headers in rows:
        try:
            value = json.loads(headers).get("ce-subject", "")
        except (ValueError, AttributeError):
            value = ""
        found[(consumer, event_id)] = str(value)
    return found


async def all_parked(dbs: Sequence[EventsDatabase]) -> list[ParkedIn]:
    """Every parked event in the given databases, oldest first."""
    found = []
    for db in dbs:
        subjects = await _ce_subjects(db)
        found += [
            ParkedIn(db.service, p, subjects.get((p.consumer, p.event_id), ""))
            for p in await list_parked(db.begin, db.tables)
        ]
    return sorted(found, key=lambda p: (p.parked.parked_us, p.service, p.parked.consumer))


async def redrive(
    dbs: Sequence[EventsDatabase], event_id: str, consumer: str | None = None
) -> list[ParkedIn]:
    """Ask for parked event `event_id` (of `consumer`, or every consumer that parked it) to
    be handled again; return what was marked (empty: no such parked event)."""
    marked: list[ParkedIn] = []
    for db in dbs:
        before = [
            p for p in await list_parked(db.begin, db.tables, consumer) if p.event_id == event_id
        ]
        if before and await request_redrive(db.begin, db.tables, event_id, consumer):
            marked.extend(ParkedIn(db.service, p) for p in before)
    return marked


async def redrive_outcome(
    dbs: Sequence[EventsDatabase], marked: Sequence[ParkedIn]
) -> tuple[list[ParkedIn], list[ParkedIn], list[ParkedIn]]:
    """Of the marked events: (handled: gone from the parked table, failed again: unmarked
    with more attempts, still waiting: marked)."""
    by_service = {db.service: db for db in dbs}
    handled, failed, waiting = [], [], []
    for item in marked:
        db = by_service[item.service]
        now = {
            (p.consumer, p.event_id): p
            for p in await list_parked(db.begin, db.tables, item.parked.consumer)
        }
        current = now.get((item.parked.consumer, item.parked.event_id))
        if current is None:
            handled.append(item)
        elif current.redrive_requested:
            waiting.append(item)
        else:
            failed.append(ParkedIn(item.service, current))
    return handled, failed, waiting
