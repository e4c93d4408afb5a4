"""The tables of events in a service's own database: outbox, relay lease, inbox and parked.

`event_tables(metadata)` adds them to a service's MetaData (its storage module calls it
once); `create_event_tables(op)` / `drop_event_tables(op)` are the same tables as Alembic
operations, for the service's migration. Both are built from the same column lists, and a
test compares a migrated database with the metadata.

- `outbox`: one row per event, inserted in the transaction of the change that caused it.
  `seq` orders the outbox (the relay publishes in `seq` order); `id` is the event id
  (ce-id, Nats-Msg-Id, the inbox key); `published_us` is set once the broker acked it.
  Times are epoch microseconds, as everywhere in orderflow.
- `outbox_relay_lease`: one row naming the relay allowed to publish until `expires_us`.
- `inbox`: `(consumer, event_id)` of every event a consumer has handled, inserted in the
  transaction of its effect.
- `inbox_parked`: events a consumer failed `max_attempts` times, with the envelope to
  handle them again on redrive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)
from sqlalchemy.sql.schema import SchemaItem

OUTBOX = "outbox"
LEASE = "outbox_relay_lease"
INBOX = "inbox"
PARKED = "inbox_parked"

# SQLite gives an INTEGER PRIMARY KEY the rowid (and AUTOINCREMENT never reuses one).
_Seq = BigInteger().with_variant(Integer(), "sqlite")


def _outbox() -> list[SchemaItem]:
    return [
        Column("seq", _Seq, primary_key=True, autoincrement=True),
        Column("id", String(36), nullable=False, unique=True),
        Column("aggregate_type", String(32), nullable=False),
        Column("aggregate_id", String(255), nullable=False),
        Column("event_type", String(100), nullable=False),
        Column("source", String(32), nullable=False),
        Column("time", String(40), nullable=False),
        Column("traceparent", String(100), nullable=True),
        Column("payload", Text, nullable=False),
        Column("created_us", BigInteger, nullable=False),
        Column("published_us", BigInteger, nullable=True),
        # Unpublished rows in seq order (the relay), published ones by age (retention).
        Index("ix_outbox_published_seq", "published_us", "seq"),
    ]


def _lease() -> list[SchemaItem]:
    return [
        Column("name", String(64), primary_key=True),
        Column("holder", String(128), nullable=False),
        Column("expires_us", BigInteger, nullable=False),
    ]


def _inbox() -> list[SchemaItem]:
    return [
        Column("consumer", String(64), nullable=False),
        Column("event_id", String(64), nullable=False),
        Column("event_type", String(100), nullable=False),
        Column("handled_us", BigInteger, nullable=False),
        PrimaryKeyConstraint("consumer", "event_id", name="pk_inbox"),
        Index("ix_inbox_handled", "handled_us"),
    ]


def _parked() -> list[SchemaItem]:
    return [
        Column("consumer", String(64), nullable=False),
        Column("event_id", String(64), nullable=False),
        Column("event_type", String(100), nullable=False),
        Column("subject", String(255), nullable=False),
        # The message as received: JSON object of headers, and the body as text.
        Column("headers", Text, nullable=False),
        Column("body", Text, nullable=False),
        Column("attempts", Integer, nullable=False),
        Column("last_error", Text, nullable=False),
        Column("parked_us", BigInteger, nullable=False),
        # Set by `request_redrive`; the consumer's runner then handles the event again.
        Column("redrive_us", BigInteger, nullable=True),
        PrimaryKeyConstraint("consumer", "event_id", name="pk_inbox_parked"),
    ]


_TABLES = {OUTBOX: _outbox, LEASE: _lease, INBOX: _inbox, PARKED: _parked}
_TABLE_OPTIONS: dict[str, dict[str, Any]] = {OUTBOX: {"sqlite_autoincrement": True}}


@dataclass(frozen=True)
class EventTables:
    """The four event tables of one service's database."""

    outbox: Table
    lease: Table
    inbox: Table
    parked: Table


def event_tables(metadata: MetaData) -> EventTables:
    """Add the event tables to `metadata` (a service's own) and return them."""
    made = {
        name: Table(name, metadata, *columns(), **_TABLE_OPTIONS.get(name, {}))
        for name, columns in _TABLES.items()
    }
    return EventTables(made[OUTBOX], made[LEASE], made[INBOX], made[PARKED])


def create_event_tables(op: Any) -> None:
    """In a service's Alembic migration: `create_event_tables(op)` in upgrade()."""
    for name, columns in _TABLES.items():
        items = columns()
        indexes = [item for item in items if isinstance(item, Index)]
        rest = [item for item in items if not isinstance(item, Index)]
        op.create_table(name, *rest, **_TABLE_OPTIONS.get(name, {}))
        for index in indexes:
            op.create_index(
                index.name, name, [str(c) for c in index.expressions], unique=index.unique
            )


def drop_event_tables(op: Any) -> None:
    """In a service's Alembic migration: `drop_event_tables(op)` in downgrade()."""
    for name in reversed(_TABLES):
        op.drop_table(name)
