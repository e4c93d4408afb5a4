"""LoyaltyService's use cases on fake repositories: points, applications and ledger after each."""

from __future__ import annotations

import pytest

from orderflow.errors import (
    CompensatedError,
    IdempotencyKeyReusedError,
    InsufficientPointsError,
    InvalidArgumentError,
    InvalidStateError,
    NegativeBalanceError,
    NotCancellableError,
    NotFoundError,
)
from orderflow.loyalty.domain import Account, ApplicationState, EntryKind, Tiers
from orderflow.loyalty.service import LoyaltyService
from tests.unit.fake_uow import FakeLoyaltyStore

S = ApplicationState
TIERS = Tiers({"basic": 0, "silver": 10, "gold": 20}, "basic")


def make() -> tuple[LoyaltyService, FakeLoyaltyStore]:
    store = FakeLoyaltyStore()
    return LoyaltyService(store, tiers=TIERS, minor_units=100, clock=lambda: 1), store


async def with_points(points: int, tier: str = "silver") -> tuple[LoyaltyService, FakeLoyaltyStore]:
    service, store = make()
    await service.set_tier("c-1", tier)
    if points:
        await service.adjust_points("c-1", points, "welcome")
    return service, store


def points(store: FakeLoyaltyStore, customer_id: str = "c-1") -> int:
    return store.accounts.rows[customer_id][1]


def entries(store: FakeLoyaltyStore, order_id: str) -> list[tuple[EntryKind, int]]:
    return [(e.kind, e.delta) for e in store.accounts.ledger if e.order_id == order_id]


# -- accounts --------------------------------------------------------------------------


async def test_set_tier_opens_the_account_and_changes_its_discount() -> None:
    service, _ = make()
    assert await service.set_tier("c-1", "gold") == Account("c-1", "gold", 20, 0)
    assert await service.set_tier("c-1", "silver") == Account("c-1", "silver", 10, 0)
    assert await service.get_account("c-1") == Account("c-1", "silver", 10, 0)
    with pytest.raises(InvalidArgumentError):
        await service.set_tier("c-1", "platinum")


async def test_get_account_of_unknown_customer_is_not_found() -> None:
    service, _ = make()
    with pytest.raises(NotFoundError):
        await service.get_account("c-9")


async def test_adjust_points_adds_and_takes_away_never_below_zero() -> None:
    service, store = make()
    assert (await service.adjust_points("c-1", 300, "welcome")).points == 300  # opens it
    assert (await service.adjust_points("c-1", -100, "fix")).points == 200
    with pytest.raises(NegativeBalanceError) as caught:
        await service.adjust_points("c-1", -201, "too much")
    assert caught.value.details == {"customer_id": "c-1", "points": 200, "delta": -201}
    assert points(store) == 200
    assert [e.delta for e in store.accounts.ledger] == [300, -100]


async def test_adjust_points_with_a_key_happens_once() -> None:
    service, store = make()
    await service.adjust_points("c-1", 50, "promo", "k-1")
    await service.adjust_points("c-1", 5, "other")
    # a repeat answers what the first did (ADR 0023), with no second entry
    assert (await service.adjust_points("c-1", 50, "promo", "k-1")).points == 50
    assert points(store) == 55
    await service.adjust_points("c-1", -5, "other")
    with pytest.raises(IdempotencyKeyReusedError):
        await service.adjust_points("c-1", 60, "promo", "k-1")
    assert points(store) == 50 and len(store.accounts.ledger) == 3


# -- apply_discount --------------------------------------------------------------------


async def test_apply_discount_prices_and_redeems() -> None:
    service, store = await with_points(500)
    app = await service.apply_discount("o-1", "c-1", 10_000, 300)

    assert (app.state, app.tier, app.discount, app.points_redeemed) == (
        S.APPLIED,
        "silver",
        1000,
        300,
    )
    assert (app.total, app.points_earned) == (8700, 87)
    assert points(store) == 200
    assert entries(store, "o-1") == [(EntryKind.REDEEM, -300)]


async def test_apply_discount_opens_an_account_at_the_default_tier() -> None:
    service, store = make()
    app = await service.apply_discount("o-1", "c-new", 5000, 0)
    assert (app.tier, app.discount, app.total) == ("basic", 0, 5000)
    assert store.accounts.rows["c-new"] == ("basic", 0)


async def test_apply_discount_repeated_returns_the_first_and_redeems_once() -> None:
    service, store = await with_points(500)
    first = await service.apply_discount("o-1", "c-1", 10_000, 300)
    rollbacks = store.rollbacks

    assert await service.apply_discount("o-1", "c-1", 10_000, 300) == first
    assert points(store) == 200
    assert store.rollbacks == rollbacks + 1


async def test_apply_discount_with_too_few_points_changes_nothing() -> None:
    service, store = await with_points(100)
    with pytest.raises(InsufficientPointsError) as caught:
        await service.apply_discount("o-1", "c-1", 10_000, 300)
    assert caught.value.details == {"requested": 300, "available": 100}
    assert points(store) == 100
    assert store.applications.rows == {}  # the inserted application was rolled back


@pytest.mark.parametrize("undo", ["void_discount", "refund_discount"])
async def test_apply_discount_after_the_undo_is_refused(undo: str) -> None:
    service, store = await with_points(500)
    assert await getattr(service, undo)("o-1") in (S.CANCELLED, S.REFUNDED)  # a tombstone
    with pytest.raises(CompensatedError):
        await service.apply_discount("o-1", "c-1", 10_000, 300)
    assert points(store) == 500


# -- void / commit / refund -------------------------------------------------------------


async def test_void_discount_gives_redeemed_points_back_once() -> None:
    service, store = await with_points(500)
    await service.apply_discount("o-1", "c-1", 10_000, 300)

    assert await service.void_discount("o-1") == S.CANCELLED
    assert await service.void_discount("o-1") == S.CANCELLED
    assert points(store) == 500
    assert entries(store, "o-1") == [(EntryKind.REDEEM, -300), (EntryKind.REFUND_REDEEM, 300)]


async def test_void_discount_without_application_leaves_a_tombstone() -> None:
    service, store = make()
    assert await service.void_discount("o-9") == S.CANCELLED
    assert store.applications.rows["o-9"].state == S.CANCELLED
    assert store.accounts.ledger == []


async def test_commit_discount_credits_earned_points_once() -> None:
    service, store = await with_points(500)
    await service.apply_discount("o-1", "c-1", 10_000, 300)

    assert await service.commit_discount("o-1") == (S.COMMITTED, 87)
    assert await service.commit_discount("o-1") == (S.COMMITTED, 87)
    assert points(store) == 200 + 87


async def test_commit_discount_without_application_is_not_found() -> None:
    service, store = make()
    with pytest.raises(NotFoundError):
        await service.commit_discount("o-9")
    assert store.applications.rows == {}


async def test_commit_discount_after_void_is_refused() -> None:
    service, store = await with_points(500)
    await service.apply_discount("o-1", "c-1", 10_000, 300)
    await service.void_discount("o-1")
    with pytest.raises(InvalidStateError) as caught:
        await service.commit_discount("o-1")
    assert caught.value.details == {"order_id": "o-1", "state": "CANCELLED"}
    assert points(store) == 500


async def test_void_discount_after_commit_is_refused() -> None:
    service, store = await with_points(500)
    await service.apply_discount("o-1", "c-1", 10_000, 300)
    await service.commit_discount("o-1")
    with pytest.raises(InvalidStateError):
        await service.void_discount("o-1")
    assert points(store) == 287


async def test_refund_discount_of_a_committed_order_undoes_both() -> None:
    service, store = await with_points(500)
    await service.apply_discount("o-1", "c-1", 10_000, 300)
    await service.commit_discount("o-1")

    assert await service.refund_discount("o-1") == S.REFUNDED
    assert await service.refund_discount("o-1") == S.REFUNDED
    assert points(store) == 500
    assert entries(store, "o-1") == [
        (EntryKind.REDEEM, -300),
        (EntryKind.EARN, 87),
        (EntryKind.REFUND_REDEEM, 300),
        (EntryKind.REVOKE_EARN, -87),
    ]


async def test_refund_discount_of_an_applied_order_gives_points_back() -> None:
    service, store = await with_points(500)
    await service.apply_discount("o-1", "c-1", 10_000, 300)
    assert await service.refund_discount("o-1") == S.REFUNDED
    assert points(store) == 500


async def test_refund_discount_when_earned_points_were_spent_changes_nothing() -> None:
    service, store = await with_points(0)
    await service.apply_discount("o-1", "c-1", 10_000, 0)
    await service.commit_discount("o-1")
    await service.adjust_points("c-1", -90, "spent")  # 90 earned, all spent

    with pytest.raises(NotCancellableError) as caught:
        await service.refund_discount("o-1")
    assert caught.value.details == {"order_id": "o-1", "points_earned": 90}
    assert store.applications.rows["o-1"].state == S.COMMITTED
    assert points(store) == 0


async def test_refund_discount_without_application_leaves_a_tombstone() -> None:
    service, store = make()
    assert await service.refund_discount("o-9") == S.REFUNDED
    assert store.applications.rows["o-9"].state == S.REFUNDED
