"""The loyalty gRPC service through its real stub, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from orderflow.errors import InvalidStateError, NotFoundError
from orderflow.loyalty import domain, storage
from orderflow.loyalty.domain import ApplicationState, Entries, Tiers
from orderflow.loyalty.service import LoyaltyService
from orderflow.loyalty.storage import SqlLoyaltyUnitOfWork
from orderflow.loyalty.v1 import loyalty_pb2 as pb
from orderflow.loyalty.v1 import loyalty_pb2_grpc as pb_grpc
from orderflow.platform.component import open_database
from orderflow.platform.transitions import Outcome, Transition
from tests.integration.conftest import Serve
from tests.integration.grpc_checks import (
    STANDARD_SERVICES,
    T,
    assert_serving,
    error_code,
    error_details,
    fails,
    reflected_services,
    schema_diff,
)

SLOW_T = 60.0  # deadline of calls made many at once
SERVICE = "orderflow.loyalty.v1.LoyaltyService"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
FAILED = grpc.StatusCode.FAILED_PRECONDITION

# -- helpers ------------------------------------------------------------------------------


@dataclass
class Loyalty:
    stub: pb_grpc.LoyaltyServiceStub
    channel: grpc.aio.Channel
    url: str

    async def account(self, customer_id: str) -> pb.Account:
        reply = await self.stub.GetAccount(pb.GetAccountRequest(customer_id=customer_id), timeout=T)
        return reply.account

    async def points(self, customer_id: str) -> int:
        return (await self.account(customer_id)).points

    async def has_account(self, customer_id: str) -> bool:
        try:
            await self.account(customer_id)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
            assert error_code(error) == "NOT_FOUND"
            return False
        return True

    def set_tier(self, customer_id: str, tier: str) -> Awaitable[pb.SetTierResponse]:
        return self.stub.SetTier(pb.SetTierRequest(customer_id=customer_id, tier=tier), timeout=T)

    def adjust(
        self, customer_id: str, delta: int, reason: str = "test", key: str = ""
    ) -> Awaitable[pb.AdjustPointsResponse]:
        return self.stub.AdjustPoints(
            pb.AdjustPointsRequest(
                customer_id=customer_id, delta=delta, reason=reason, idempotency_key=key
            ),
            timeout=T,
        )

    def apply(
        self, order_id: str, customer_id: str, subtotal: int, redeem: int = 0, timeout: float = T
    ) -> Awaitable[pb.ApplyDiscountResponse]:
        return self.stub.ApplyDiscount(
            pb.ApplyDiscountRequest(
                order_id=order_id,
                customer_id=customer_id,
                subtotal=subtotal,
                redeem_points=redeem,
            ),
            timeout=timeout,
        )

    def cancel(self, order_id: str) -> Awaitable[pb.CancelDiscountResponse]:
        return self.stub.CancelDiscount(pb.CancelDiscountRequest(order_id=order_id), timeout=T)

    def commit(self, order_id: str) -> Awaitable[pb.CommitDiscountResponse]:
        return self.stub.CommitDiscount(pb.CommitDiscountRequest(order_id=order_id), timeout=T)

    def refund(self, order_id: str) -> Awaitable[pb.RefundDiscountResponse]:
        return self.stub.RefundDiscount(pb.RefundDiscountRequest(order_id=order_id), timeout=T)

    async def customer(self, customer_id: str, points: int = 0, tier: str = "") -> None:
        """Open an account with points (and tier, if given)."""
        if tier:
            await self.set_tier(customer_id, tier)
        if points:
            await self.adjust(customer_id, points, "opening balance")


async def db_rows(url: str, query: str) -> list[tuple[Any, ...]]:
    """Rows of a query run on the service's database over a connection of our own."""
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return [tuple(row) for row in (await conn.execute(text(query))).all()]
    finally:
        await engine.dispose()


async def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Everything the service stores, minus timestamps: to show a refused call changed nothing."""
    return {
        "accounts": await db_rows(
            url, "SELECT customer_id, tier, points FROM accounts ORDER BY customer_id"
        ),
        "ledger": await db_rows(
            url,
            "SELECT id, customer_id, order_id, kind, delta, reason, idempotency_key "
            "FROM ledger ORDER BY id",
        ),
        "applications": await db_rows(
            url,
            "SELECT order_id, customer_id, state, points_redeemed, points_earned "
            "FROM applications ORDER BY order_id",
        ),
    }


async def check_ledger(url: str) -> dict[str, int]:
    """Assert the ledger invariants; return each customer's balance."""
    balances = dict(await db_rows(url, "SELECT customer_id, points FROM accounts"))
    sums = dict(
        await db_rows(url, "SELECT customer_id, SUM(delta) FROM ledger GROUP BY customer_id")
    )
    for customer_id, points in balances.items():
        assert points >= 0, (customer_id, points)
        assert points == int(sums.get(customer_id, 0)), (customer_id, points, sums)
    assert set(sums) <= set(balances), "ledger entries of a customer without an account"
    doubles = await db_rows(
        url,
        "SELECT order_id, kind, COUNT(*) FROM ledger WHERE order_id IS NOT NULL "
        "GROUP BY order_id, kind HAVING COUNT(*) > 1",
    )
    assert doubles == []
    return balances


@pytest.fixture
async def loyalty(serve: Serve, make_db_url: Callable[[str], Awaitable[str]]) -> Loyalty:
    url = await make_db_url("loyalty")
    channel = await serve("loyalty", url)
    return Loyalty(pb_grpc.LoyaltyServiceStub(channel), channel, url)


# -- accounts -----------------------------------------------------------------------------


async def test_set_tier_creates_account(loyalty: Loyalty) -> None:
    assert not await loyalty.has_account("c-1")
    reply = await loyalty.set_tier("c-1", "silver")
    assert reply.account == pb.Account(
        customer_id="c-1", tier="silver", discount_percent=5, points=0
    )
    assert await loyalty.account("c-1") == reply.account
    reply = await loyalty.set_tier("c-1", "gold")
    assert (reply.account.tier, reply.account.discount_percent) == ("gold", 10)
    await check_ledger(loyalty.url)


async def test_set_unknown_tier(loyalty: Loyalty) -> None:
    error = await fails(loyalty.set_tier("c-1", "platinum"), INVALID, "INVALID_ARGUMENT")
    assert error_details(error)["field"] == "tier"
    assert not await loyalty.has_account("c-1")
    await loyalty.set_tier("c-2", "gold")
    await fails(loyalty.set_tier("c-2", "platinum"), INVALID)
    assert (await loyalty.account("c-2")).tier == "gold"


async def test_adjust_points_adds_and_removes(loyalty: Loyalty) -> None:
    reply = await loyalty.adjust("c-1", 500, "welcome")
    assert reply.account == pb.Account(
        customer_id="c-1", tier="standard", discount_percent=0, points=500
    )
    assert (await loyalty.adjust("c-1", -200)).account.points == 300
    assert (await loyalty.adjust("c-1", -300)).account.points == 0
    assert await check_ledger(loyalty.url) == {"c-1": 0}
    rows = await db_rows(loyalty.url, "SELECT kind, delta, reason FROM ledger ORDER BY id")
    assert rows == [("ADJUST", 500, "welcome"), ("ADJUST", -200, "test"), ("ADJUST", -300, "test")]


async def test_adjust_below_zero_is_refused(loyalty: Loyalty) -> None:
    await loyalty.adjust("c-1", 100)
    error = await fails(loyalty.adjust("c-1", -101), FAILED, "NEGATIVE_BALANCE")
    assert error_details(error)["points"] == 100
    assert await loyalty.points("c-1") == 100
    assert await check_ledger(loyalty.url) == {"c-1": 100}


async def test_negative_adjust_of_new_customer_opens_nothing(loyalty: Loyalty) -> None:
    before = await snapshot(loyalty.url)
    await fails(loyalty.adjust("new", -1), FAILED, "NEGATIVE_BALANCE")
    assert not await loyalty.has_account("new")
    assert await snapshot(loyalty.url) == before


async def test_adjust_idempotency_key(loyalty: Loyalty) -> None:
    for _ in range(3):
        reply = await loyalty.adjust("c-1", 250, "bonus", key="k-1")
        assert reply.account.points == 250
    await loyalty.adjust("c-1", -50, key="k-2")
    # a repeat answers what the first answered (ADR 0023), and books nothing
    assert (await loyalty.adjust("c-1", 250, "bonus", key="k-1")).account.points == 250
    await fails(
        loyalty.adjust("c-1", 251, "bonus", key="k-1"),
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
    )
    await fails(
        loyalty.adjust("c-1", -250, key="k-1"),
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
    )
    assert await loyalty.points("c-1") == 200
    # keys belong to a customer
    assert (await loyalty.adjust("c-2", 7, key="k-1")).account.points == 7
    assert await check_ledger(loyalty.url) == {"c-1": 200, "c-2": 7}
    keyed = await db_rows(
        loyalty.url, "SELECT COUNT(*) FROM idempotency_keys WHERE key='k-1' AND result IS NOT NULL"
    )
    assert keyed == [(2,)]


async def test_adjust_without_key_is_not_deduplicated(loyalty: Loyalty) -> None:
    await loyalty.adjust("c-1", 10)
    await loyalty.adjust("c-1", 10)
    assert await loyalty.points("c-1") == 20


async def test_concurrent_adjusts_with_one_key(loyalty: Loyalty) -> None:
    await loyalty.adjust("c-1", 1)
    results = await asyncio.gather(
        *(loyalty.adjust("c-1", 5, key="same") for _ in range(10)), return_exceptions=True
    )
    # each gets the first reply, or (while the first still runs) REQUEST_IN_PROGRESS
    for result in results:
        if isinstance(result, grpc.aio.AioRpcError):
            assert result.code() == grpc.StatusCode.ABORTED, result
            assert error_code(result) == "REQUEST_IN_PROGRESS"
        else:
            assert not isinstance(result, BaseException), result
            assert result.account.points == 6
    assert any(not isinstance(r, BaseException) for r in results)
    assert (await loyalty.adjust("c-1", 5, key="same")).account.points == 6
    assert await loyalty.points("c-1") == 6
    assert await check_ledger(loyalty.url) == {"c-1": 6}


async def test_tier_dropped_from_config_counts_as_default(
    serve: Serve, make_db_url: Callable[[str], Awaitable[str]]
) -> None:
    url = await make_db_url("loyalty")
    channel = await serve("loyalty", url)
    first = Loyalty(pb_grpc.LoyaltyServiceStub(channel), channel, url)
    await first.set_tier("c-1", "gold")
    channel = await serve("loyalty", url, tiers={"standard": 3, "silver": 5})
    second = Loyalty(pb_grpc.LoyaltyServiceStub(channel), channel, url)
    account = await second.account("c-1")
    assert (account.tier, account.discount_percent) == ("gold", 3)
    reply = await second.apply("o-1", "c-1", 1000)
    assert (reply.tier, reply.discount_percent, reply.discount, reply.total) == ("gold", 3, 30, 970)
    await fails(second.set_tier("c-1", "gold"), INVALID)


# -- ApplyDiscount ------------------------------------------------------------------------


async def test_apply_gold_figures(loyalty: Loyalty) -> None:
    await loyalty.customer("c-1", 1000, "gold")
    reply = await loyalty.apply("o-1", "c-1", 5000, 200)
    assert reply == pb.ApplyDiscountResponse(
        tier="gold",
        discount_percent=10,
        discount=500,
        points_redeemed=200,
        total=4300,
        points_earned=43,
        state=pb.APPLICATION_STATE_APPLIED,
    )
    assert await loyalty.points("c-1") == 800
    assert await check_ledger(loyalty.url) == {"c-1": 800}


async def test_apply_floors_the_discount(loyalty: Loyalty) -> None:
    await loyalty.customer("c-1", 0, "gold")
    reply = await loyalty.apply("o-1", "c-1", 999)
    assert (reply.discount, reply.total, reply.points_earned) == (99, 900, 9)


async def test_apply_redeems_up_to_what_is_due(loyalty: Loyalty) -> None:
    await loyalty.customer("c-1", 1000, "gold")
    reply = await loyalty.apply("o-1", "c-1", 1000, 900)
    assert (reply.discount, reply.points_redeemed, reply.total, reply.points_earned) == (
        100,
        900,
        0,
        0,
    )
    assert await loyalty.points("c-1") == 100


async def test_apply_opens_account_for_new_customer(loyalty: Loyalty) -> None:
    reply = await loyalty.apply("o-1", "new", 1234)
    assert (reply.tier, reply.discount_percent, reply.discount, reply.total) == (
        "standard",
        0,
        0,
        1234,
    )
    assert reply.points_earned == 12
    assert await loyalty.account("new") == pb.Account(
        customer_id="new", tier="standard", discount_percent=0, points=0
    )


async def test_apply_insufficient_points(loyalty: Loyalty) -> None:
    await loyalty.customer("c-1", 150, "gold")
    before = await snapshot(loyalty.url)
    error = await fails(loyalty.apply("o-1", "c-1", 5000, 200), FAILED, "INSUFFICIENT_POINTS")
    assert error_details(error) == {"requested": 200, "available": 150}
    assert await snapshot(loyalty.url) == before
    # nothing was left behind for the order: a smaller redeem now works
    reply = await loyalty.apply("o-1", "c-1", 5000, 150)
    assert (reply.points_redeemed, reply.total) == (150, 4350)
    assert await loyalty.points("c-1") == 0
    await check_ledger(loyalty.url)


async def test_apply_insufficient_points_of_new_customer_opens_nothing(loyalty: Loyalty) -> None:
    await fails(loyalty.apply("o-1", "new", 5000, 1), FAILED, "INSUFFICIENT_POINTS")
    assert not await loyalty.has_account("new")


async def test_apply_redeem_more_than_due(loyalty: Loyalty) -> None:
    await loyalty.customer("c-1", 10_000, "gold")
    before = await snapshot(loyalty.url)
    error = await fails(loyalty.apply("o-1", "c-1", 1000, 901), INVALID, "INVALID_ARGUMENT")
    assert error_details(error)["due"] == 900
    await fails(loyalty.apply("o-2", "new", 1000, 1001), INVALID)
    assert await snapshot(loyalty.url) == before
    assert not await loyalty.has_account("new")


async def test_apply_repeated_returns_first_result(loyalty: Loyalty) -> None:
    await loyalty.customer("c-1", 1000, "gold")
    replies = [await loyalty.apply("o-1", "c-1", 5000, 200) for _ in range(3)]
    assert replies[0] == replies[1] == replies[2]
    assert await loyalty.points("c-1") == 800
    # the figures were fixed at the first apply, whatever the tier is now
    await loyalty.set_tier("c-1", "standard")
    assert await loyalty.apply("o-1", "c-1", 5000, 200) == replies[0]
    assert await loyalty.points("c-1") == 800
    assert await check_ledger(loyalty.url) == {"c-1": 800}


async def test_concurrent_applies_of_one_order(loyalty: Loyalty) -> None:
    await loyalty.customer("c-1", 1000, "gold")
    results = await asyncio.gather(
        *(loyalty.apply("o-1", "c-1", 5000, 200, timeout=SLOW_T) for _ in range(10)),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    assert len({r.SerializeToString() for r in results}) == 1  # type: ignore[union-attr]
    assert await loyalty.points("c-1") == 800
    assert await check_ledger(loyalty.url) == {"c-1": 800}


# -- Cancel / Commit / Refund -------------------------------------------------------------


async def test_cancel_is_idempotent(loyalty: Loyalty) -> None:
    await loyalty.customer("c-1", 1000, "gold")
    await loyalty.apply("o-1", "c-1", 5000, 200)
    for _ in range(3):
        assert (await loyalty.cancel("o-1")).state == pb.APPLICATION_STATE_CANCELLED
        assert await loyalty.points("c-1") == 1000
    await fails(
        loyalty.apply("o-1", "c-1", 5000, 200), grpc.StatusCode.ABORTED, "ALREADY_COMPENSATED"
    )
    assert await loyalty.points("c-1") == 1000
    assert await check_ledger(loyalty.url) == {"c-1": 1000}


async def test_cancel_before_apply_leaves_tombstone(loyalty: Loyalty) -> None:
    await loyalty.customer("c-1", 1000, "gold")
    for _ in range(3):
        assert (await loyalty.cancel("o-1")).state == pb.APPLICATION_STATE_CANCELLED
    before = await snapshot(loyalty.url)
    error = await fails(
        loyalty.apply("o-1", "c-1", 5000, 200), grpc.StatusCode.ABORTED, "ALREADY_COMPENSATED"
    )
    assert error_details(error)["state"] == "CANCELLED"
    assert await snapshot(loyalty.url) == before
    assert await loyalty.points("c-1") == 1000
    # the tombstone is final
    await fails(loyalty.commit("o-1"), FAILED, "INVALID_STATE")
    assert (await loyalty.refund("o-1")).state == pb.APPLICATION_STATE_CANCELLED


async def test_refund_before_apply_leaves_tombstone(loyalty: Loyalty) -> None:
    await loyalty.customer("c-1", 1000)
    assert (await loyalty.refund("o-1")).state == pb.APPLICATION_STATE_REFUNDED
    await fails(
        loyalty.apply("o-1", "c-1", 5000, 200), grpc.StatusCode.ABORTED, "ALREADY_COMPENSATED"
    )
    assert (await loyalty.cancel("o-1")).state == pb.APPLICATION_STATE_REFUNDED
    assert await loyalty.points("c-1") == 1000


async def test_commit_credits_earned_points_once(loyalty: Loyalty) -> None:
    await loyalty.customer("c-1", 1000, "gold")
    await loyalty.apply("o-1", "c-1", 5000, 200)
    for _ in range(3):
        reply = await loyalty.commit("o-1")
        assert (reply.state, reply.points_earned) == (pb.APPLICATION_STATE_COMMITTED, 43)
        assert await loyalty.points("c-1") == 843
    # a repeated apply of a committed order answers with its figures and changes nothing
    again = await loyalty.apply("o-1", "c-1", 5000, 200)
    assert (again.state, again.total) == (pb.APPLICATION_STATE_COMMITTED, 4300)
    await fails(loyalty.cancel("o-1"), FAILED, "INVALID_STATE")
    assert await check_ledger(loyalty.url) == {"c-1": 843}


async def test_commit_unknown_order(loyalty: Loyalty) -> None:
    before = await snapshot(loyalty.url)
    await fails(loyalty.commit("nope"), grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    assert await snapshot(loyalty.url) == before


async def test_commit_after_cancel(loyalty: Loyalty) -> None:
    await loyalty.customer("c-1", 1000, "gold")
    await loyalty.apply("o-1", "c-1", 5000, 200)
    await loyalty.cancel("o-1")
    before = await snapshot(loyalty.url)
    error = await fails(loyalty.commit("o-1"), FAILED, "INVALID_STATE")
    assert error_details(error)["state"] == "CANCELLED"
    assert await snapshot(loyalty.url) == before


async def test_refund_of_applied_order(loyalty: Loyalty) -> None:
    await loyalty.customer("c-1", 1000, "gold")
    await loyalty.apply("o-1", "c-1", 5000, 200)
    for _ in range(3):
        assert (await loyalty.refund("o-1")).state == pb.APPLICATION_STATE_REFUNDED
        assert await loyalty.points("c-1") == 1000
    await fails(loyalty.commit("o-1"), FAILED, "INVALID_STATE")
    assert await check_ledger(loyalty.url) == {"c-1": 1000}


async def test_refund_of_committed_order(loyalty: Loyalty) -> None:
    await loyalty.customer("c-1", 1000, "gold")
    await loyalty.apply("o-1", "c-1", 5000, 200)
    await loyalty.commit("o-1")
    assert await loyalty.points("c-1") == 843
    for _ in range(3):
        assert (await loyalty.refund("o-1")).state == pb.APPLICATION_STATE_REFUNDED
        assert await loyalty.points("c-1") == 1000
    assert (await loyalty.cancel("o-1")).state == pb.APPLICATION_STATE_REFUNDED
    await fails(
        loyalty.apply("o-1", "c-1", 5000, 200), grpc.StatusCode.ABORTED, "ALREADY_COMPENSATED"
    )
    assert await check_ledger(loyalty.url) == {"c-1": 1000}
    kinds = await db_rows(
        loyalty.url, "SELECT kind, delta FROM ledger WHERE order_id = 'o-1' ORDER BY id"
    )
    assert kinds == [("REDEEM", -200), ("EARN", 43), ("REFUND_REDEEM", 200), ("REVOKE_EARN", -43)]


async def test_refund_when_earned_points_were_spent(loyalty: Loyalty) -> None:
    await loyalty.customer("c-1", 10, "gold")
    reply = await loyalty.apply("o-1", "c-1", 5000, 10)
    assert reply.points_earned == 44  # 5000 - 500 - 10 = 4490
    await loyalty.commit("o-1")
    assert await loyalty.points("c-1") == 44
    await loyalty.adjust("c-1", -44, "spent")
    before = await snapshot(loyalty.url)
    error = await fails(loyalty.refund("o-1"), FAILED, "NOT_CANCELLABLE")
    assert error_details(error)["points_earned"] == 44
    assert await snapshot(loyalty.url) == before
    assert await loyalty.points("c-1") == 0
    # once the customer has the points again the refund goes through
    await loyalty.adjust("c-1", 34, "top up")
    assert (await loyalty.refund("o-1")).state == pb.APPLICATION_STATE_REFUNDED
    assert await loyalty.points("c-1") == 0
    assert await check_ledger(loyalty.url) == {"c-1": 0}


async def test_ledger_invariant_after_mixed_sequence(loyalty: Loyalty) -> None:
    await loyalty.customer("a", 5000, "gold")
    await loyalty.customer("b", 300, "silver")
    await loyalty.customer("c", 0)
    await loyalty.apply("a-1", "a", 10_000, 1000)
    await loyalty.apply("a-2", "a", 2000, 1800)
    await loyalty.commit("a-1")
    await loyalty.cancel("a-2")
    await loyalty.apply("b-1", "b", 999, 300)
    await loyalty.commit("b-1")
    await loyalty.refund("b-1")
    await loyalty.apply("c-1", "c", 12_345)
    await loyalty.commit("c-1")
    await loyalty.adjust("c", -23, key="x")
    await loyalty.adjust("c", -23, key="x")
    await fails(loyalty.adjust("c", -101), FAILED, "NEGATIVE_BALANCE")
    await fails(loyalty.apply("c-2", "c", 500, 101), FAILED, "INSUFFICIENT_POINTS")
    await loyalty.cancel("never")
    await loyalty.refund("a-3")
    await loyalty.apply("d-1", "d", 100)
    balances = await check_ledger(loyalty.url)
    # a: 5000 - 1000 + 80 (10000 - 1000 - 1000 = 8000 paid) ; a-2 redeemed 1800 and got it back
    # b: 300 - 300 + 6 (999 - 49 - 300 = 650) back to 300 by the refund
    # c: 123 - 23
    assert balances == {"a": 4080, "b": 300, "c": 100, "d": 0}
    for customer_id, points in balances.items():
        assert await loyalty.points(customer_id) == points


# -- bad input ----------------------------------------------------------------------------

LONG = "x" * 65

BAD_REQUESTS: list[tuple[str, Any]] = [
    ("GetAccount", pb.GetAccountRequest(customer_id="")),
    ("GetAccount", pb.GetAccountRequest(customer_id=LONG)),
    ("SetTier", pb.SetTierRequest(customer_id="", tier="gold")),
    ("SetTier", pb.SetTierRequest(customer_id=LONG, tier="gold")),
    ("SetTier", pb.SetTierRequest(customer_id="c-1", tier="")),
    ("AdjustPoints", pb.AdjustPointsRequest(customer_id="", delta=1, reason="r")),
    ("AdjustPoints", pb.AdjustPointsRequest(customer_id=LONG, delta=1, reason="r")),
    ("AdjustPoints", pb.AdjustPointsRequest(customer_id="c-1", delta=0, reason="r")),
    ("AdjustPoints", pb.AdjustPointsRequest(customer_id="c-1", delta=1, reason="")),
    ("AdjustPoints", pb.AdjustPointsRequest(customer_id="c-1", delta=1, reason="   ")),
    ("AdjustPoints", pb.AdjustPointsRequest(customer_id="c-1", delta=1, reason="r" * 201)),
    ("AdjustPoints", pb.AdjustPointsRequest(customer_id="c-1", delta=10**12 + 1, reason="r")),
    (
        "AdjustPoints",
        pb.AdjustPointsRequest(customer_id="c-1", delta=1, reason="r", idempotency_key="k" * 256),
    ),
    ("ApplyDiscount", pb.ApplyDiscountRequest(order_id="", customer_id="c-1", subtotal=100)),
    ("ApplyDiscount", pb.ApplyDiscountRequest(order_id=LONG, customer_id="c-1", subtotal=100)),
    ("ApplyDiscount", pb.ApplyDiscountRequest(order_id="o-9", customer_id="", subtotal=100)),
    ("ApplyDiscount", pb.ApplyDiscountRequest(order_id="o-9", customer_id=LONG, subtotal=100)),
    ("ApplyDiscount", pb.ApplyDiscountRequest(order_id="o-9", customer_id="c-1", subtotal=-1)),
    (
        "ApplyDiscount",
        pb.ApplyDiscountRequest(order_id="o-9", customer_id="c-1", subtotal=10**12 + 1),
    ),
    (
        "ApplyDiscount",
        pb.ApplyDiscountRequest(order_id="o-9", customer_id="c-1", subtotal=100, redeem_points=-1),
    ),
    ("CancelDiscount", pb.CancelDiscountRequest(order_id="")),
    ("CancelDiscount", pb.CancelDiscountRequest(order_id=LONG)),
    ("CommitDiscount", pb.CommitDiscountRequest(order_id="")),
    ("CommitDiscount", pb.CommitDiscountRequest(order_id=LONG)),
    ("RefundDiscount", pb.RefundDiscountRequest(order_id="")),
    ("RefundDiscount", pb.RefundDiscountRequest(order_id=LONG)),
    ("ListPointsEntries", pb.ListPointsEntriesRequest(customer_id="")),
    ("ListPointsEntries", pb.ListPointsEntriesRequest(customer_id=LONG)),
    ("ListPointsEntries", pb.ListPointsEntriesRequest(customer_id="c-1", limit=101)),
    ("ListPointsEntries", pb.ListPointsEntriesRequest(customer_id="c-1", cursor="forged!")),
    ("GetEventsBacklog", pb.GetEventsBacklogRequest(limit=101)),
]


async def test_bad_input_is_refused_on_every_rpc(loyalty: Loyalty) -> None:
    await loyalty.customer("c-1", 1000, "gold")
    await loyalty.apply("o-1", "c-1", 5000, 200)
    before = await snapshot(loyalty.url)
    covered = set()
    for method, request in BAD_REQUESTS:
        error = await fails(getattr(loyalty.stub, method)(request, timeout=T), INVALID)
        assert error_code(error) == "INVALID_ARGUMENT", (method, request)
        assert error_details(error).get("field"), (method, request)
        covered.add(method)
    assert covered == set(pb.DESCRIPTOR.services_by_name["LoyaltyService"].methods_by_name)
    assert await snapshot(loyalty.url) == before


# -- concurrency --------------------------------------------------------------------------


@pytest.mark.slow
async def test_concurrent_applies_never_overdraw(loyalty: Loyalty) -> None:
    await loyalty.customer("c-1", 1000)
    results = await asyncio.gather(
        *(loyalty.apply(f"o-{i}", "c-1", 10_000, 100, timeout=SLOW_T) for i in range(50)),
        return_exceptions=True,
    )
    ok = [r for r in results if isinstance(r, pb.ApplyDiscountResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(ok) + len(refused) == 50, [r for r in results if r not in ok + refused]
    for error in refused:
        assert (error.code(), error_code(error)) == (FAILED, "INSUFFICIENT_POINTS"), error
    assert (len(ok), len(refused)) == (10, 40)
    assert all(r.points_redeemed == 100 and r.total == 9900 for r in ok)
    assert await loyalty.points("c-1") == 0
    assert await check_ledger(loyalty.url) == {"c-1": 0}
    applied = await db_rows(loyalty.url, "SELECT COUNT(*) FROM applications")
    assert applied == [(10,)]


EXPECTED_REFUSALS = {
    "INSUFFICIENT_POINTS",
    "NEGATIVE_BALANCE",
    "NOT_CANCELLABLE",
    "INVALID_STATE",
    "ALREADY_COMPENSATED",
    "NOT_FOUND",
    "INVALID_ARGUMENT",  # a random redeem larger than what is due
    "IDEMPOTENCY_KEY_REUSED",
}


@pytest.mark.slow
async def test_concurrent_mixed_operations_keep_the_ledger(loyalty: Loyalty) -> None:
    rng = random.Random(7)
    customers = ["a", "b", "c"]
    for name in customers:
        await loyalty.customer(name, 500, rng.choice(["standard", "silver", "gold"]))
    orders = {f"o-{i}": rng.choice(customers) for i in range(30)}

    def one_call(order_id: str, customer_id: str) -> Awaitable[Any]:
        roll = rng.random()
        if roll < 0.4:
            return loyalty.apply(
                order_id, customer_id, rng.randrange(0, 5000), rng.randrange(0, 300), timeout=SLOW_T
            )
        if roll < 0.55:
            return loyalty.commit(order_id)
        if roll < 0.7:
            return loyalty.cancel(order_id)
        if roll < 0.85:
            return loyalty.refund(order_id)
        return loyalty.adjust(
            customer_id, rng.choice([-150, -40, 25, 100]), key=f"k-{rng.randrange(20)}"
        )

    calls = [one_call(o, c) for _ in range(4) for o, c in orders.items()]
    rng.shuffle(calls)
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, grpc.aio.AioRpcError):
            assert error_code(result) in EXPECTED_REFUSALS, result
        else:
            assert not isinstance(result, BaseException), repr(result)
    balances = await check_ledger(loyalty.url)
    for customer_id, points in balances.items():
        assert await loyalty.points(customer_id) == points


# -- health, reflection, migrations -------------------------------------------------------


async def test_health(loyalty: Loyalty) -> None:
    await assert_serving(loyalty.channel, SERVICE)


async def test_reflection(loyalty: Loyalty) -> None:
    assert {SERVICE, *STANDARD_SERVICES} <= await reflected_services(loyalty.channel)


async def test_migrations_match_models(loyalty: Loyalty) -> None:
    assert await schema_diff(loyalty.url, storage.metadata) == []


# -- the domain's transition table, through fast path and lock, on the database -----------


@pytest.mark.parametrize(
    ("method", "transition"),
    [
        ("void_discount", domain.VOID_DISCOUNT),
        ("commit_discount", domain.COMMIT_DISCOUNT),
        ("refund_discount", domain.REFUND_DISCOUNT),
    ],
)
async def test_each_move_does_what_the_domain_table_says_in_every_state(
    make_db_url: Callable[[str], Awaitable[str]],
    method: str,
    transition: Transition[ApplicationState, Entries],
) -> None:
    """The one-statement fast path restates `outcome(fast_from) is MOVE` in SQL; with the
    locked fallback it must give, from every state, what Transition.outcome says."""
    database = await open_database(await make_db_url("loyalty"), 2, "loyalty", migrate=True)
    try:
        uow = functools.partial(SqlLoyaltyUnitOfWork, database)
        service = LoyaltyService(uow, tiers=Tiers({"basic": 0}, "basic"), minor_units=100)
        for state in [None, *ApplicationState]:
            order_id = f"o-{state}"
            if state is not None:  # no points: the move changes only the state
                async with uow() as seeding:
                    await seeding.applications.add(domain.tombstone(order_id, state), 1)
                    await seeding.commit()
            outcome = transition.outcome(state)
            if outcome is Outcome.INVALID:
                with pytest.raises(InvalidStateError):
                    await getattr(service, method)(order_id)
            elif outcome is Outcome.MISSING:
                with pytest.raises(NotFoundError):
                    await getattr(service, method)(order_id)
            else:
                result = await getattr(service, method)(order_id)
                got = result[0] if isinstance(result, tuple) else result
                assert got == (state if outcome is Outcome.DONE else transition.target), state
            async with uow(readonly=True) as reading:
                stored = await reading.applications.get(order_id)
            assert (stored and stored.state) == {
                Outcome.MOVE: transition.target,
                Outcome.TOMBSTONE: transition.target,
                Outcome.DONE: state,
                Outcome.INVALID: state,
                Outcome.MISSING: None,
            }[outcome], state
    finally:
        await database.dispose()


async def test_points_ledger_newest_first_paged_by_cursor(loyalty: Loyalty) -> None:
    for delta, reason in ((100, "welcome"), (-30, "correction"), (5, "apology")):
        await loyalty.adjust("c-1", delta, reason)
    await loyalty.adjust("c-2", 7, "someone else")
    first = await loyalty.stub.ListPointsEntries(
        pb.ListPointsEntriesRequest(customer_id="c-1", limit=2), timeout=T
    )
    assert [(e.kind, e.delta, e.reason) for e in first.entries] == [
        ("adjust", 5, "apology"),
        ("adjust", -30, "correction"),
    ]
    assert all(e.HasField("created_at") and not e.order_id for e in first.entries)
    rest = await loyalty.stub.ListPointsEntries(
        pb.ListPointsEntriesRequest(customer_id="c-1", limit=2, cursor=first.next_cursor),
        timeout=T,
    )
    assert [e.reason for e in rest.entries] == ["welcome"] and not rest.next_cursor
    nobody = await loyalty.stub.ListPointsEntries(
        pb.ListPointsEntriesRequest(customer_id="nobody"), timeout=T
    )
    assert list(nobody.entries) == [] and not nobody.next_cursor
    await fails(
        loyalty.stub.ListPointsEntries(
            pb.ListPointsEntriesRequest(customer_id="c-1", cursor="forged!"), timeout=T
        ),
        INVALID,
    )
