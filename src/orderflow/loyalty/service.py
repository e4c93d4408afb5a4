"""Loyalty use cases: each one checks its input, then runs as one retried transaction."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from orderflow.errors import (
    CompensatedError,
    ConflictError,
    IdempotencyKeyReusedError,
    InsufficientPointsError,
    InvalidStateError,
    NegativeBalanceError,
    NotCancellableError,
    NotFoundError,
)
from orderflow.loyalty import domain
from orderflow.loyalty.domain import Account, Application, ApplicationState, EntryKind, Tiers
from orderflow.loyalty.storage import LoyaltyUnitOfWork
from orderflow.platform.db import Database, Rollback, now_us, transact
from orderflow.validation import check_id

S = ApplicationState
# What moving an application out of one state does besides changing its state.
Step = Callable[[LoyaltyUnitOfWork, Application, int], Awaitable[None]]


class LoyaltyService:
    def __init__(
        self,
        database: Database,
        *,
        tiers: Tiers,
        minor_units: int,
        clock: Callable[[], int] = now_us,
    ) -> None:
        self.database = database
        self.tiers = tiers
        self.minor_units = minor_units
        self.now = clock

    def _uow(self, readonly: bool = False) -> Callable[[], LoyaltyUnitOfWork]:
        return lambda: LoyaltyUnitOfWork(self.database, readonly=readonly)

    async def _account(self, uow: LoyaltyUnitOfWork, customer_id: str) -> Account:
        found = await uow.get_account(customer_id)
        if found is None:
            raise NotFoundError(
                f"customer {customer_id} has no loyalty account", customer_id=customer_id
            )
        tier, points = found
        return Account(customer_id, tier, self.tiers.percent(tier), points)

    # -- accounts ----------------------------------------------------------------------

    async def get_account(self, customer_id: str) -> Account:
        customer_id = check_id("customer_id", customer_id)
        return await transact(self._uow(readonly=True), lambda uow: self._account(uow, customer_id))

    async def set_tier(self, customer_id: str, tier: str) -> Account:
        customer_id = check_id("customer_id", customer_id)
        tier = self.tiers.check(tier)

        async def work(uow: LoyaltyUnitOfWork) -> Account:
            now = self.now()
            await uow.ensure_account(customer_id, tier, now)
            await uow.set_tier(customer_id, tier, now)
            return await self._account(uow, customer_id)

        return await transact(self._uow(), work)

    async def adjust_points(
        self, customer_id: str, delta: int, reason: str, idempotency_key: str = ""
    ) -> Account:
        """Add (or take away) points; never below zero. Opens the account if new."""
        adj = domain.adjustment(customer_id, delta, reason, idempotency_key)

        async def work(uow: LoyaltyUnitOfWork) -> Account:
            now = self.now()
            if adj.idempotency_key:
                earlier = await uow.find_adjustment(adj.customer_id, adj.idempotency_key)
                if earlier is not None:
                    if earlier != adj.delta:
                        raise IdempotencyKeyReusedError(
                            f"idempotency key {adj.idempotency_key!r} was used for an "
                            f"adjustment of {earlier} points, not {adj.delta}",
                            customer_id=adj.customer_id,
                        )
                    return await self._account(uow, adj.customer_id)
            await uow.ensure_account(adj.customer_id, self.tiers.default, now)
            done = await uow.add_points(
                adj.customer_id,
                adj.delta,
                EntryKind.ADJUST,
                now,
                reason=adj.reason,
                idempotency_key=adj.idempotency_key or None,
            )
            if not done:
                account = await self._account(uow, adj.customer_id)
                raise NegativeBalanceError(
                    f"customer {adj.customer_id} has {account.points} points; "
                    f"removing {-adj.delta} would leave a negative balance",
                    customer_id=adj.customer_id,
                    points=account.points,
                    delta=adj.delta,
                )
            return await self._account(uow, adj.customer_id)

        return await transact(self._uow(), work)

    # -- per-order applications --------------------------------------------------------

    async def apply(
        self, order_id: str, customer_id: str, subtotal: int, redeem_points: int
    ) -> Application:
        """Price the order's discount and redeem its points; repeating returns the first result."""
        req = domain.apply_request(order_id, customer_id, subtotal, redeem_points)

        async def work(uow: LoyaltyUnitOfWork) -> Application:
            now = self.now()
            if await uow.get_account(req.customer_id) is None:
                await uow.ensure_account(req.customer_id, self.tiers.default, now)
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
            if not await uow.add_application(application, now, if_absent=True):
                raise Rollback  # applied before: roll back, return the first result below
            redeemed = await uow.add_points(
                req.customer_id, -req.redeem_points, EntryKind.REDEEM, now, order_id=req.order_id
            )
            if not redeemed:
                available = (await self._account(uow, req.customer_id)).points
                raise InsufficientPointsError(
                    f"{req.redeem_points} points requested, {available} available",
                    requested=req.redeem_points,
                    available=available,
                )
            return application

        try:
            return await transact(self._uow(), work)
        except Rollback:
            pass

        async def existing(uow: LoyaltyUnitOfWork) -> Application:
            found = await uow.get_application(req.order_id)
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

        return await transact(self._uow(readonly=True), existing)

    async def cancel(self, order_id: str) -> ApplicationState:
        """Undo Apply: redeemed points come back. With nothing applied, leave a tombstone."""

        async def step(uow: LoyaltyUnitOfWork, app: Application, now: int) -> None:
            await uow.add_points(
                app.customer_id,
                app.points_redeemed,
                EntryKind.REFUND_REDEEM,
                now,
                order_id=app.order_id,
            )

        app = await self._finish(
            order_id, S.CANCELLED, {S.APPLIED: step}, (S.CANCELLED, S.REFUNDED), tombstone=True
        )
        return app.state

    async def commit(self, order_id: str) -> tuple[ApplicationState, int]:
        """Make the order's loyalty effects final: its earned points are credited."""

        async def step(uow: LoyaltyUnitOfWork, app: Application, now: int) -> None:
            await uow.add_points(
                app.customer_id, app.points_earned, EntryKind.EARN, now, order_id=app.order_id
            )

        app = await self._finish(
            order_id, S.COMMITTED, {S.APPLIED: step}, (S.COMMITTED,), tombstone=False
        )
        return app.state, app.points_earned

    async def refund(self, order_id: str) -> ApplicationState:
        """For a cancelled order: redeemed points come back, earned points are taken back."""

        async def from_applied(uow: LoyaltyUnitOfWork, app: Application, now: int) -> None:
            await uow.add_points(
                app.customer_id,
                app.points_redeemed,
                EntryKind.REFUND_REDEEM,
                now,
                order_id=app.order_id,
            )

        async def from_committed(uow: LoyaltyUnitOfWork, app: Application, now: int) -> None:
            await from_applied(uow, app, now)
            revoked = await uow.add_points(
                app.customer_id,
                -app.points_earned,
                EntryKind.REVOKE_EARN,
                now,
                order_id=app.order_id,
            )
            if not revoked:
                raise NotCancellableError(
                    f"the {app.points_earned} points earned by order {app.order_id} were "
                    "already spent, so the order cannot be cancelled",
                    order_id=app.order_id,
                    points_earned=app.points_earned,
                )

        app = await self._finish(
            order_id,
            S.REFUNDED,
            {S.APPLIED: from_applied, S.COMMITTED: from_committed},
            (S.CANCELLED, S.REFUNDED),
            tombstone=True,
        )
        return app.state

    async def _finish(
        self,
        order_id: str,
        target: ApplicationState,
        steps: dict[ApplicationState, Step],
        done: tuple[ApplicationState, ...],
        *,
        tombstone: bool,
    ) -> Application:
        """Move an application to target, running the step of its current state; no-op if done."""
        order_id = check_id("order_id", order_id)

        if S.APPLIED in steps:
            # The usual case in one statement: APPLIED -> target, then its points.
            async def fast(uow: LoyaltyUnitOfWork) -> Application | None:
                now = self.now()
                app = await uow.move_application(order_id, S.APPLIED, target, now)
                if app is not None:
                    await steps[S.APPLIED](uow, app, now)
                return app

            moved = await transact(self._uow(), fast)
            if moved is not None:
                return moved

        async def work(uow: LoyaltyUnitOfWork) -> Application:
            now = self.now()
            app = await uow.get_application(order_id, lock=True)
            if app is None:
                if not tombstone:
                    raise NotFoundError(
                        f"order {order_id} has no loyalty application", order_id=order_id
                    )
                app = Application(order_id, "", target, "", 0, 0, 0, 0, 0, 0)
                await uow.add_application(app, now)
                return app
            if app.state in done:
                return app
            if app.state not in steps:
                raise InvalidStateError(
                    f"the loyalty application of order {order_id} is {app.state.value}; "
                    f"it cannot become {target.value}",
                    order_id=order_id,
                    state=app.state.value,
                )
            moved = await uow.move_application(order_id, app.state, target, now)
            if moved is None:
                raise ConflictError(f"the loyalty application of {order_id} changed meanwhile")
            await steps[app.state](uow, moved, now)
            return moved

        return await transact(self._uow(), work)
