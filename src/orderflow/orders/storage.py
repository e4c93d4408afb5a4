"""Orders table, its repository and the unit of work that exposes it (SQLAlchemy Core).

An order is written back as a compare-and-set on the version it was read at, after a
SELECT ... FOR UPDATE on PostgreSQL (the write lock serialises writers on SQLite), so a
status never moves from a state its writer did not see. Claiming stale orders uses
FOR UPDATE SKIP LOCKED, so several gateways' recovery workers never claim the same one.
The saga's step log (order_steps) is written on the same connection, so a step is kept
exactly when the change it records is (ADR 26).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    and_,
    bindparam,
    desc,
    false,
    func,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.sql.elements import ColumnElement

from orderflow.errors import ConcurrentChangeError
from orderflow.events.outbox import OutboxUnitOfWork
from orderflow.events.tables import event_tables
from orderflow.orders.domain import (
    RECOVERY_OWNER_PREFIX,
    Driver,
    Failure,
    Order,
    OrderLine,
    OrderStatus,
    Step,
    StepOutcome,
)
from orderflow.platform.db import SqlRepository

metadata = MetaData()

orders = Table(
    "orders",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("customer_id", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("subtotal", BigInteger, nullable=False),
    Column("discount", BigInteger, nullable=False),
    Column("redeem_points", BigInteger, nullable=False),
    Column("points_redeemed", BigInteger, nullable=False),
    Column("total", BigInteger, nullable=False),
    Column("points_earned", BigInteger, nullable=False),
    Column("failure_code", String(64), nullable=True),
    Column("failure_message", String(500), nullable=True),
    Column("idempotency_key", String(255), nullable=True),
    Column("request_fingerprint", String(128), nullable=False),
    Column("settled", Boolean, nullable=False),
    Column("cancel_requested", Boolean, nullable=False),
    Column("lease_owner", String(128), nullable=False),
    Column("lease_expires_us", BigInteger, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Column("version", Integer, nullable=False),
    # [{"sku", "quantity", "unit_price"}, ...]: written at creation, priced at confirmation.
    Column("lines", JSON, nullable=False),
    # Which follow-ups of a confirmed order have reported (stock.committed, loyalty.committed).
    Column("stock_committed", Boolean, nullable=False, server_default=false()),
    Column("loyalty_committed", Boolean, nullable=False, server_default=false()),
    UniqueConstraint("customer_id", "idempotency_key", name="uq_orders_customer_key"),
    CheckConstraint("total >= 0", name="ck_orders_total"),
    Index("ix_orders_created", "created_us", "id"),
    Index("ix_orders_customer_created", "customer_id", "created_us", "id"),
    Index("ix_orders_unsettled", "settled", "lease_expires_us"),
)

# The saga's step log: one row per step of an order's saga, written in the transaction of
# the change it records (or, for a step a driver reports, of the change it came with).
order_steps = Table(
    "order_steps",
    metadata,
    # Recording order: breaks ties between steps that started in the same microsecond.
    Column("seq", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("order_id", String(64), nullable=False),
    Column("step_id", String(64), nullable=False),
    Column("name", String(32), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("driver", String(16), nullable=False),
    Column("started_us", BigInteger, nullable=False),
    Column("duration_us", BigInteger, nullable=False),
    Column("error_code", String(64), nullable=True),
    Column("error_message", String(500), nullable=True),
    # A step reported twice (a retried call) is recorded once.
    UniqueConstraint("order_id", "step_id", name="uq_order_steps_step"),
)

# outbox, relay lease, inbox and parked events (orderflow.events), in the same database.
outbox_tables = event_tables(metadata)

_FIELDS = [c.name for c in orders.c if c.name not in ("failure_code", "failure_message", "lines")]


def _row_values(order: Order) -> dict[str, Any]:
    values = {name: getattr(order, name) for name in _FIELDS}
    values["status"] = order.status.value
    values["idempotency_key"] = order.idempotency_key or None
    values["failure_code"] = order.failure.code if order.failure else None
    values["failure_message"] = order.failure.message if order.failure else None
    values["lines"] = [
        {"sku": x.sku, "quantity": x.quantity, "unit_price": x.unit_price} for x in order.lines
    ]
    return values


def _order(row: Row[*tuple[Any, ...]]) -> Order:
    values = dict(row._mapping)
    values["lines"] = tuple(OrderLine(**x) for x in values["lines"])
    code, message = values.pop("failure_code"), values.pop("failure_message")
    values["failure"] = Failure(code, message or "") if code else None
    values["status"] = OrderStatus(values["status"])
    values["idempotency_key"] = values["idempotency_key"] or ""
    return Order(**values)


# Hot-path statements are built once: building a statement costs more than running it.
_GET = select(orders).where(orders.c.id == bindparam("_id"))
_LOCK = _GET.with_for_update()
# Compare-and-set: the row is written only if it is still at the version it was read at.
_SAVE = update(orders).where(
    orders.c.id == bindparam("_id"), orders.c.version == bindparam("_version")
)
# The usual settle in one statement: a decided, unsettled order whose lease the caller holds
# (or nobody holds). Anything else falls back to reading the order and the domain's rules.
# This restates domain.settle (and domain.lease_free) in SQL: change both together;
# tests/integration/test_orders.py checks that they agree in every case.
_SETTLE = (
    update(orders)
    .where(
        orders.c.id == bindparam("_id"),
        orders.c.settled.is_(False),
        orders.c.status != "PENDING",
        or_(
            orders.c.lease_owner == bindparam("_owner"),
            orders.c.lease_owner == "",
            orders.c.lease_expires_us <= bindparam("_now"),
        ),
    )
    .values(
        settled=True,
        lease_owner="",
        lease_expires_us=0,
        updated_us=bindparam("_now"),
        version=orders.c.version + 1,
    )
    .returning(*orders.c)
)


class SqlOrderRepository(SqlRepository):
    """Orders, written back as a compare-and-set on the version they were read at."""

    __slots__ = ()

    async def get(self, order_id: str, *, lock: bool = False) -> Order | None:
        row = (await self.connection.execute(_LOCK if lock else _GET, {"_id": order_id})).first()
        return None if row is None else _order(row)

    async def find_by_key(self, customer_id: str, idempotency_key: str) -> Order | None:
        row = (
            await self.connection.execute(
                select(orders).where(
                    orders.c.customer_id == customer_id,
                    orders.c.idempotency_key == idempotency_key,
                )
            )
        ).first()
        return None if row is None else _order(row)

    async def add(self, order: Order) -> bool:
        """Insert order; False (nothing inserted) when its customer already used its key."""
        result = await self.connection.execute(
            self.database.insert_ignore(orders, ["customer_id", "idempotency_key"]),
            _row_values(order),
        )
        return result.rowcount == 1

    async def save(self, order: Order, read: Order) -> None:
        """Write order over read, the version it was computed from (compare-and-set)."""
        values = _row_values(order)
        del values["id"]
        result = await self.connection.execute(
            _SAVE, {**values, "_id": order.id, "_version": read.version}
        )
        if result.rowcount != 1:
            raise ConcurrentChangeError(f"order {order.id} changed meanwhile", order_id=order.id)

    async def settle(self, order_id: str, owner: str, now: int) -> Order | None:
        """Settle in one statement if the usual conditions hold; None (nothing done) if not."""
        row = (
            await self.connection.execute(_SETTLE, {"_id": order_id, "_owner": owner, "_now": now})
        ).first()
        return None if row is None else _order(row)

    async def page(
        self, customer_id: str, status: str, before: tuple[int, str] | None, limit: int
    ) -> list[Order]:
        """Newest first, strictly older than `before` = (created_us, id)."""
        query = select(orders).order_by(orders.c.created_us.desc(), orders.c.id.desc())
        if customer_id:
            query = query.where(orders.c.customer_id == customer_id)
        if status:
            query = query.where(orders.c.status == status)
        if before is not None:
            created, order_id = before
            query = query.where(
                or_(
                    orders.c.created_us < created,
                    and_(orders.c.created_us == created, orders.c.id < order_id),
                )
            )
        return [_order(row) for row in await self.connection.execute(query.limit(limit))]

    async def unsettled(self, limit: int) -> list[Order]:
        """Unsettled orders, oldest first (read only: nothing is locked)."""
        query = (
            select(orders)
            .where(orders.c.settled.is_(False))
            .order_by(orders.c.created_us, orders.c.id)
            .limit(limit)
        )
        return [_order(row) for row in await self.connection.execute(query)]

    async def stale(self, now: int, limit: int, events_grace_us: int) -> list[Order]:
        """Unsettled orders with no live lease, oldest first, locked (skipping locked ones);
        a CONFIRMED one only once its events had events_grace_us to settle it.

        This restates domain.is_stale in SQL: change both together; tests/integration/
        test_orders.py checks that they agree in every case.
        """
        query = (
            select(orders)
            .where(orders.c.settled.is_(False), _lease_gone(now, events_grace_us))
            .order_by(orders.c.updated_us)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [_order(row) for row in await self.connection.execute(query)]

    async def count_stuck(self, now: int, events_grace_us: int) -> dict[OrderStatus, int]:
        """How many orders domain.is_stuck holds for, by status (read only; this restates
        the rule in SQL: change both together, tests/integration/test_orders.py checks that
        they agree in every case)."""
        query = (
            select(orders.c.status, func.count().label("n"))
            .where(
                orders.c.settled.is_(False),
                or_(
                    orders.c.lease_owner.startswith(RECOVERY_OWNER_PREFIX, autoescape=True),
                    _lease_gone(now, events_grace_us),
                ),
            )
            .group_by(orders.c.status)
        )
        rows = await self.connection.execute(query)
        return {OrderStatus(row.status): int(row.n) for row in rows}


def _lease_gone(now: int, events_grace_us: int) -> ColumnElement[bool]:
    """domain.is_stale of an unsettled order: no live lease, and a CONFIRMED one only once
    its events had events_grace_us to settle it."""
    return and_(
        or_(orders.c.lease_expires_us <= now, orders.c.lease_owner == ""),
        not_(
            and_(
                orders.c.status == OrderStatus.CONFIRMED.value,
                orders.c.cancel_requested.is_(False),
                orders.c.updated_us > now - events_grace_us,
            )
        ),
    )


def _step_row(order_id: str, step: Step) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "step_id": step.step_id,
        "name": step.name,
        "outcome": step.outcome.value,
        "driver": step.driver.value,
        "started_us": step.started_us,
        "duration_us": step.duration_us,
        "error_code": step.error.code if step.error else None,
        "error_message": step.error.message if step.error else None,
    }


def _step(row: Row[*tuple[Any, ...]]) -> Step:
    return Step(
        step_id=row.step_id,
        name=row.name,
        outcome=StepOutcome(row.outcome),
        driver=Driver(row.driver),
        started_us=row.started_us,
        duration_us=row.duration_us,
        error=Failure(row.error_code, row.error_message or "") if row.error_code else None,
    )


_STEPS = (
    select(order_steps)
    .where(order_steps.c.order_id == bindparam("_id"))
    .order_by(desc(order_steps.c.started_us), desc(order_steps.c.seq))
    .limit(bindparam("_limit"))
)


class SqlStepRepository(SqlRepository):
    """The saga's step log, on the unit of work's connection (its transaction)."""

    __slots__ = ()

    async def add(self, order_id: str, steps: Sequence[Step]) -> None:
        """Record steps in order; one whose (order id, step id) is recorded is skipped."""
        statement = self.database.insert_ignore(order_steps, ["order_id", "step_id"])
        await self.connection.execute(statement, [_step_row(order_id, s) for s in steps])

    async def of(self, order_id: str, limit: int) -> tuple[list[Step], bool]:
        """The newest limit steps, in time order, and whether older ones were left out."""
        rows = (await self.connection.execute(_STEPS, {"_id": order_id, "_limit": limit + 1})).all()
        return [_step(row) for row in reversed(rows[:limit])], len(rows) > limit


class SqlOrdersUnitOfWork(OutboxUnitOfWork):
    """A transaction on the orders database with its repositories and its outbox."""

    event_tables = outbox_tables
    orders: SqlOrderRepository
    steps: SqlStepRepository

    def _attach(self) -> None:
        super()._attach()
        self.orders = SqlOrderRepository(self.connection, self.database)
        self.steps = SqlStepRepository(self.connection, self.database)
