"""Loyalty use cases: each one checks its input, then runs as one retried transaction.

The service knows its storage only as the repositories described here (Protocols); the
bootstrap hands it a factory of SQL units of work, unit tests one of fakes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import structlog

from orderflow.errors import (
    CompensatedError,
    InsufficientPointsError,
    InvalidArgumentError,
    NegativeBalanceError,
    NotCancellableError,
    NotFoundError,
)
from orderflow.events.outbox import EventSink
from orderflow.loyalty import domain
from orderflow.loyalty import events as loyalty_events
from orderflow.loyalty.domain import (
    Account,
    Application,
    ApplicationState,
    BookedEntry,
    Entries,
    EntryKind,
    LedgerEntry,
    Tiers,
)
from orderflow.platform.db import Rollback, Transactional, UnitOfWorkFactory, now_us, transact
from orderflow.platform.idempotency import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_RETENTION_SECONDS,
    IdempotencyRecords,
    IdempotentRunner,
    keyed,
)
from orderflow.platform.transitions import StateRecords, Transition, TransitionRunner
from orderflow.validation import check_id, check_limit, decode_cursor, encode_cursor

T = TypeVar("T")

log = structlog.get_logger("orderflow.loyalty")

DEFAULT_ENTRIES_PAGE = 20


class AccountRepository(Protocol):
    async def get(self, customer_id: str) -> tuple[str, int] | None:
        """(tier, points) of the customer's account, or None."""
        ...

    async def ensure(self, customer_id: str, tier: str, now: int) -> bool:
        """Open an account at tier with no points unless the customer has one; True if it
        was opened now."""
        ...

    async def set_tier(self, customer_id: str, tier: str, now: int) -> None: ...

    async def entries(self, customer_id: str, before: int | None, limit: int) -> list[BookedEntry]:
        """The customer's ledger entries newest first, with an id below `before` if given."""
        ...

    async def add_points(self, entry: LedgerEntry, now: int) -> int | None:
        """Change the balance by entry.delta and book the entry: the balance after, or None
        (nothing done) if it would go negative or there is no account. A zero delta books
        nothing (and gives the balance as it is)."""
        ...


# Per-order applications: one per order, moved between states by conditional statements.
ApplicationRepository = StateRecords[ApplicationState, Application]


class LoyaltyUnitOfWork(Transactional, Protocol):
    @property
    def accounts(self) -> AccountRepository: ...

    @property
    def applications(self) -> ApplicationRepository: ...

    @property
    def events(self) -> EventSink: ...

    @property
    def idempotency(self) -> IdempotencyRecords: ...


def _account_json(account: Account) -> dict[str, object]:
    return dataclasses.asdict(account)


def _account_of(values: dict[str, object]) -> Account:
    return Account(**values)  # type: ignore[arg-type]


class LoyaltyService:
    def __init__(
        self,
        uow: UnitOfWorkFactory[LoyaltyUnitOfWork],
        *,
        tiers: Tiers,
        minor_units: int,
        clock: Callable[[], int] = now_us,
        idempotency_lease_seconds: float = DEFAULT_LEASE_SECONDS,
        idempotency_retention_seconds: float = DEFAULT_RETENTION_SECONDS,
    ) -> None:
        self.uow = uow
        self._reader = functools.partial(uow, readonly=True)
        self.tiers = tiers
        self.minor_units = minor_units
        self.now = clock
        self._applications = TransitionRunner[
            LoyaltyUnitOfWork, ApplicationState, Entries, Application
        ](
            transact=self._transact,
            records=lambda uow: uow.applications,
            effect=self._book,
            tombstone=domain.tombstone,
            clock=clock,
            noun="loyalty application",
        )
        self._idempotent = IdempotentRunner[LoyaltyUnitOfWork](
            self._transact,
            clock,
            lease_seconds=idempotency_lease_seconds,
            retention_seconds=idempotency_retention_seconds,
        )

    def _transact(self, work: Callable[[LoyaltyUnitOfWork], Awaitable[T]]) -> Awaitable[T]:
        return transact(self.uow, work)

    async def _account(self, uow: LoyaltyUnitOfWork, customer_id: str) -> Account:
        found = await uow.accounts.get(customer_id)
        if found is None:
            raise NotFoundError(
                f"customer {customer_id} has no loyalty account", customer_id=customer_id
            )
        tier, points = found
        return Account(customer_id, tier, self.tiers.percent(tier), points)

    # -- accounts ----------------------------------------------------------------------

    async def get_account(self, customer_id: str) -> Account:
        customer_id = check_id("customer_id", customer_id)
        return await transact(self._reader, lambda uow: self._account(uow, customer_id))

    async def list_entries(
        self, customer_id: str, limit: int, cursor: str
    ) -> tuple[list[BookedEntry], str]:
        """The customer's ledger newest first, paged by cursor (none for an unknown one)."""
        customer_id = check_id("customer_id", customer_id)
        limit = check_limit(limit, default=DEFAULT_ENTRIES_PAGE)
        before = None
        if cursor:
            position = decode_cursor(cursor)
            if not (position.isascii() and position.isdigit() and len(position) <= 18):
                raise InvalidArgumentError("cursor is not valid", field="cursor")
            before = int(position)

        async def work(uow: LoyaltyUnitOfWork) -> tuple[list[BookedEntry], str]:
            found = await uow.accounts.entries(customer_id, before, limit + 1)
            page = found[:limit]
            more = len(found) > limit
            return page, encode_cursor(str(page[-1].id)) if more else ""

        return await transact(self._reader, work)

    async def set_tier(
        self,
        customer_id: str,
        tier: str,
        *,
        idempotency_key: str = "",
        caller: str = "",
        owner: str = "",
    ) -> Account:
        """Set the tier, opening the account if new; with an idempotency key, a repeat gets
        the first result (ADR 0023)."""
        customer_id = check_id("customer_id", customer_id)
        tier = self.tiers.check(tier)
        request = keyed(idempotency_key, caller, owner, "SetTier", customer_id, tier=tier)

        async def work(uow: LoyaltyUnitOfWork) -> Account:
            now = self.now()
            if await uow.accounts.ensure(customer_id, tier, now):
                await self._tier_changed(uow, customer_id, tier, "")
            else:
                before = await uow.accounts.get(customer_id)
                await uow.accounts.set_tier(customer_id, tier, now)
                if before is not None and before[0] != tier:
                    await self._tier_changed(uow, customer_id, tier, before[0])
            return await self._account(uow, customer_id)

        return await self._idempotent.run(request, work, _account_json, _account_of)

    async def adjust_points(
        self,
        customer_id: str,
        delta: int,
        reason: str,
        idempotency_key: str = "",
        *,
        caller: str = "",
        owner: str = "",
    ) -> Account:
        """Add (or take away) points; never below zero. Opens the account if new. With an
        idempotency key, a repeat gets the first result and books nothing more (ADR 0023)."""
        adj = domain.adjustment(customer_id, delta, reason, idempotency_key)
        request = keyed(
            adj.idempotency_key,
            caller,
            owner,
            "AdjustPoints",
            adj.customer_id,
            delta=adj.delta,
            reason=adj.reason,
        )

        async def work(uow: LoyaltyUnitOfWork) -> Account:
            now = self.now()
            await self._open(uow, adj.customer_id, now)
            entry = LedgerEntry(adj.customer_id, adj.delta, EntryKind.ADJUST, reason=adj.reason)
            balance = await uow.accounts.add_points(entry, now)
            if balance is None:
                account = await self._account(uow, adj.customer_id)
                raise NegativeBalanceError(
                    f"customer {adj.customer_id} has {account.points} points; "
                    f"removing {-adj.delta} would leave a negative balance",
                    customer_id=adj.customer_id,
                    points=account.points,
                    delta=adj.delta,
                )
            await uow.events.add(loyalty_events.points_changed(entry, balance))
            return await self._account(uow, adj.customer_id)

        return await self._idempotent.run(request, work, _account_json, _account_of)

    async def purge_idempotency_keys(self) -> int:
        """Forget idempotency keys older than their retention."""
        return await self._idempotent.purge()

    # -- per-order applications --------------------------------------------------------

    async def apply_discount(
        self, order_id: str, customer_id: str, subtotal: int, redeem_points: int
    ) -> Application:
        """Price the order's discount and redeem its points; repeating returns the first result."""
        req = domain.apply_request(order_id, customer_id, subtotal, redeem_points)

        async def work(uow: LoyaltyUnitOfWork) -> Application:
            now = self.now()
            if await uow.accounts.get(req.customer_id) is None:
                await self._open(uow, req.customer_id, now)
            account = await self._account(uow, req.customer_id)
            application = domain.price_order(
                req.order_id,
                req.customer_id,
                account.tier,
                account.discount_percent,
                req.subtotal,
                req.redeem_points,
                self.minor_units,
            )
            if not await uow.applications.add_if_absent(application, now):
                raise Rollback  # applied before: roll back, return the first result below
            redeem = domain.order_entry(application, EntryKind.REDEEM)
            if not redeem.delta:
                return application
            balance = await uow.accounts.add_points(redeem, now)
            if balance is None:
                available = (await self._account(uow, req.customer_id)).points
                raise InsufficientPointsError(
                    f"{req.redeem_points} points requested, {available} available",
                    requested=req.redeem_points,
                    available=available,
                )
            await uow.events.add(loyalty_events.points_changed(redeem, balance))
            return application

        try:
            return await transact(self.uow, work)
        except Rollback:
            pass

        async def existing(uow: LoyaltyUnitOfWork) -> Application:
            found = await uow.applications.get(req.order_id)
            if found is None:  # pragma: no cover - applications are never deleted
                raise RuntimeError(f"loyalty application of {req.order_id} vanished")
            if found.state.compensated:
                raise CompensatedError(
                    f"the discount of order {req.order_id} was already "
                    f"{found.state.value.lower()}; it cannot be applied again",
                    order_id=req.order_id,
                    state=found.state.value,
                )
            return found

        return await transact(self._reader, existing)

    async def void_discount(self, order_id: str) -> ApplicationState:
        """Undo apply_discount: redeemed points come back. With nothing applied, a tombstone."""
        return (await self._move(domain.VOID_DISCOUNT, order_id)).state

    async def commit_discount(self, order_id: str) -> tuple[ApplicationState, int]:
        """Make the order's loyalty effects final: its earned points are credited."""
        app = await self._move(domain.COMMIT_DISCOUNT, order_id)
        return app.state, app.points_earned

    async def refund_discount(self, order_id: str) -> ApplicationState:
        """For a cancelled order: redeemed points come back, earned points are taken back."""
        return (await self._move(domain.REFUND_DISCOUNT, order_id)).state

    async def _move(
        self, transition: Transition[ApplicationState, Entries], order_id: str
    ) -> Application:
        order_id = check_id("order_id", order_id)
        return await self._applications.apply(transition, order_id)

    async def commit_discount_for(self, uow: LoyaltyUnitOfWork, order_id: str) -> None:
        """In the unit of work of the consumer of order.confirmed: commit_discount. An
        application already undone (the order was cancelled before its event came) is left
        as it is: the event is late, not wrong."""
        found = await uow.applications.get(order_id, lock=True)
        if found is not None and found.state.compensated:
            log.info("commit_discount_skipped", order_id=order_id, state=found.state.value)
            return
        runner = dataclasses.replace(self._applications, transact=lambda work: work(uow))
        await runner.apply(domain.COMMIT_DISCOUNT, order_id)

    async def _open(self, uow: LoyaltyUnitOfWork, customer_id: str, now: int) -> None:
        """Open the customer's account at the default tier unless it has one."""
        if await uow.accounts.ensure(customer_id, self.tiers.default, now):
            await self._tier_changed(uow, customer_id, self.tiers.default, "")

    async def _tier_changed(
        self, uow: LoyaltyUnitOfWork, customer_id: str, tier: str, previous: str
    ) -> None:
        await uow.events.add(
            loyalty_events.tier_changed(customer_id, tier, previous, self.tiers.percent(tier))
        )

    @staticmethod
    async def _book(uow: LoyaltyUnitOfWork, app: Application, entries: Entries, now: int) -> None:
        """Book the ledger entries of a move of app, each with its points.changed; a commit
        also tells loyalty.committed."""
        balance: int | None = None
        for kind in entries:
            entry = domain.order_entry(app, kind)
            if not entry.delta:
                continue
            balance = await uow.accounts.add_points(entry, now)
            if balance is None:
                if entry.delta < 0:
                    raise NotCancellableError(
                        f"the {app.points_earned} points earned by order {app.order_id} were "
                        "already spent, so the order cannot be cancelled",
                        order_id=app.order_id,
                        points_earned=app.points_earned,
                    )
                continue
            await uow.events.add(loyalty_events.points_changed(entry, balance))
        if app.state is ApplicationState.COMMITTED:
            if balance is None:
                found = await uow.accounts.get(app.customer_id)
                balance = found[1] if found else 0
            await uow.events.add(loyalty_events.loyalty_committed(app, balance))
