"""Loyalty tables, their repositories and the unit of work that exposes them (SQLAlchemy Core).

Balances change only through conditional UPDATEs (`... WHERE points + :delta >= 0`), each
with its ledger entry in the same transaction; UNIQUE(order_id, kind) on the ledger makes
"an order redeems or earns at most once" a property of the database itself.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    bindparam,
    select,
    update,
)
from sqlalchemy.engine import Row

from orderflow.events.outbox import OutboxUnitOfWork
from orderflow.events.tables import event_tables
from orderflow.loyalty.domain import (
    Application,
    ApplicationState,
    BookedEntry,
    EntryKind,
    LedgerEntry,
)
from orderflow.platform.db import SqlRepository
from orderflow.platform.idempotency_store import SqlIdempotencyRecords, idempotency_table

metadata = MetaData()

accounts = Table(
    "accounts",
    metadata,
    Column("customer_id", String(64), primary_key=True),
    Column("tier", String(32), nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    CheckConstraint("points >= 0", name="ck_accounts_points"),
)

ledger = Table(
    "ledger",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("customer_id", String(64), nullable=False, index=True),
    Column("order_id", String(64), nullable=True),
    Column("kind", String(16), nullable=False),
    Column("delta", BigInteger, nullable=False),
    Column("reason", String(200), nullable=False),
    Column("idempotency_key", String(64), nullable=True),
    Column("created_us", BigInteger, nullable=False),
    UniqueConstraint("order_id", "kind", name="uq_ledger_order_kind"),
    UniqueConstraint("customer_id", "idempotency_key", name="uq_ledger_customer_key"),
)

applications = Table(
    "applications",
    metadata,
    Column("order_id", String(64), primary_key=True),
    Column("customer_id", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("tier", String(32), nullable=False),
    Column("discount_percent", Integer, nullable=False),
    Column("subtotal", BigInteger, nullable=False),
    Column("discount", BigInteger, nullable=False),
    Column("points_redeemed", BigInteger, nullable=False),
    Column("total", BigInteger, nullable=False),
    Column("points_earned", BigInteger, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
)

# outbox, relay lease, inbox and parked events (orderflow.events), in the same database.
outbox_tables = event_tables(metadata)

# Idempotency keys of the admin use cases and their results (ADR 0023).
idempotency_keys = idempotency_table(metadata)

_APPLICATION_COLUMNS = [c for c in applications.c if c.name not in ("created_us", "updated_us")]


def _application(row: Row[*tuple[Any, ...]]) -> Application:
    values = dict(row._mapping)
    values["state"] = ApplicationState(values["state"])
    return Application(**values)


# Hot-path statements are built once: building a statement costs more than running it.
_GET_ACCOUNT = select(accounts.c.tier, accounts.c.points).where(
    accounts.c.customer_id == bindparam("_customer_id")
)
_ADD_POINTS = (
    update(accounts)
    .where(
        accounts.c.customer_id == bindparam("_customer_id"),
        accounts.c.points + bindparam("_delta") >= 0,
    )
    .values(points=accounts.c.points + bindparam("_delta"), updated_us=bindparam("_now"))
    .returning(accounts.c.points)
)
_ADD_ENTRY = ledger.insert()
_GET_APPLICATION = select(*_APPLICATION_COLUMNS).where(
    applications.c.order_id == bindparam("_order_id")
)
_LOCK_APPLICATION = _GET_APPLICATION.with_for_update()
# The fast path of every transition (platform/transitions.py): source -> target only if the
# application is still in source. It restates the domain's rule `outcome(fast_from) is MOVE`
# (loyalty/domain.py); tests/integration/test_loyalty.py checks the two agree.
_MOVE_APPLICATION = (
    update(applications)
    .where(
        applications.c.order_id == bindparam("_order_id"),
        applications.c.state == bindparam("_from"),
    )
    .values(state=bindparam("_to"), updated_us=bindparam("_now"))
    .returning(*_APPLICATION_COLUMNS)
)


class SqlAccountRepository(SqlRepository):
    """Accounts and their ledger: a balance changes only with its ledger entry."""

    __slots__ = ()

    async def get(self, customer_id: str) -> tuple[str, int] | None:
        """(tier, points) of the customer's account, or None."""
        row = (await self.connection.execute(_GET_ACCOUNT, {"_customer_id": customer_id})).first()
        return None if row is None else (row.tier, row.points)

    async def ensure(self, customer_id: str, tier: str, now: int) -> bool:
        """Open an account at tier with no points unless the customer has one; True if it
        was opened now."""
        result = await self.connection.execute(
            self.database.insert_ignore(accounts, ["customer_id"]),
            {
                "customer_id": customer_id,
                "tier": tier,
                "points": 0,
                "created_us": now,
                "updated_us": now,
            },
        )
        return result.rowcount == 1

    async def set_tier(self, customer_id: str, tier: str, now: int) -> None:
        await self.connection.execute(
            update(accounts)
            .where(accounts.c.customer_id == customer_id)
            .values(tier=tier, updated_us=now)
        )

    async def add_points(self, entry: LedgerEntry, now: int) -> int | None:
        """Change the balance by entry.delta and book the entry: the balance after, or None
        (nothing done) if it would go negative or there is no account. A zero delta books
        nothing (and gives the balance as it is)."""
        if entry.delta == 0:
            found = await self.get(entry.customer_id)
            return None if found is None else found[1]
        balance = (
            await self.connection.execute(
                _ADD_POINTS,
                {"_customer_id": entry.customer_id, "_delta": entry.delta, "_now": now},
            )
        ).scalar_one_or_none()
        if balance is None:
            return None
        await self.connection.execute(
            _ADD_ENTRY,
            {
                "customer_id": entry.customer_id,
                "order_id": entry.order_id,
                "kind": entry.kind.value,
                "delta": entry.delta,
                "reason": entry.reason or entry.kind.value.lower(),
                "idempotency_key": entry.idempotency_key,
                "created_us": now,
            },
        )
        return int(balance)

    async def entries(self, customer_id: str, before: int | None, limit: int) -> list[BookedEntry]:
        """The customer's ledger entries newest first, with an id below `before` if given."""
        query = (
            select(ledger)
            .where(ledger.c.customer_id == customer_id)
            .order_by(ledger.c.id.desc())
            .limit(limit)
        )
        if before is not None:
            query = query.where(ledger.c.id < before)
        return [
            BookedEntry(
                id=int(row.id),
                entry=LedgerEntry(
                    customer_id=row.customer_id,
                    delta=int(row.delta),
                    kind=EntryKind(row.kind),
                    order_id=row.order_id,
                    reason=row.reason,
                ),
                created_us=int(row.created_us),
            )
            for row in await self.connection.execute(query)
        ]


class SqlApplicationRepository(SqlRepository):
    """Per-order applications: one per order, moved between states by conditional UPDATEs."""

    __slots__ = ()

    async def get(self, order_id: str, *, lock: bool = False) -> Application | None:
        query = _LOCK_APPLICATION if lock else _GET_APPLICATION
        row = (await self.connection.execute(query, {"_order_id": order_id})).first()
        return None if row is None else _application(row)

    async def add(self, application: Application, now: int) -> None:
        """Insert the application; if the order has one already, IntegrityError, so the
        transaction is retried and sees it."""
        await self.connection.execute(applications.insert(), _application_row(application, now))

    async def add_if_absent(self, application: Application, now: int) -> bool:
        """Insert the application; False (nothing inserted) if the order already has one."""
        result = await self.connection.execute(
            self.database.insert_ignore(applications, ["order_id"]),
            _application_row(application, now),
        )
        return result.rowcount == 1

    async def move(
        self, order_id: str, source: ApplicationState, target: ApplicationState, now: int
    ) -> Application | None:
        """source -> target in one statement; the application in its new state, or None if it
        was not in source (then nothing changed)."""
        row = (
            await self.connection.execute(
                _MOVE_APPLICATION,
                {"_order_id": order_id, "_from": source.value, "_to": target.value, "_now": now},
            )
        ).first()
        return None if row is None else _application(row)


def _application_row(application: Application, now: int) -> dict[str, Any]:
    values = {c.name: getattr(application, c.name) for c in _APPLICATION_COLUMNS}
    values["state"] = application.state.value
    return {**values, "created_us": now, "updated_us": now}


class SqlLoyaltyUnitOfWork(OutboxUnitOfWork):
    """A transaction on the loyalty database with its repositories and its outbox."""

    event_tables = outbox_tables
    accounts: SqlAccountRepository
    applications: SqlApplicationRepository
    idempotency: SqlIdempotencyRecords

    def _attach(self) -> None:
        super()._attach()
        self.accounts = SqlAccountRepository(self.connection, self.database)
        self.applications = SqlApplicationRepository(self.connection, self.database)
        self.idempotency = SqlIdempotencyRecords(self.connection, self.database, idempotency_keys)
