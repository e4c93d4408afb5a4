"""Loyalty domain rules without I/O: pricing, tiers, input checks and application states."""

from __future__ import annotations

import pytest

from orderflow.errors import InvalidArgumentError
from orderflow.loyalty import domain
from orderflow.loyalty.domain import ApplicationState, EntryKind, Tiers
from orderflow.platform.transitions import Outcome, Transition
from orderflow.validation import MAX_MONEY

TIERS = {"standard": 0, "silver": 5, "gold": 10}


def price(subtotal: int, percent: int, redeem: int = 0, minor_units: int = 100):
    return domain.price_order("o-1", "c-1", "t", percent, subtotal, redeem, minor_units)


# -- price_order ---------------------------------------------------------------------------


def test_discount_is_floored() -> None:
    app = price(999, 10)
    assert app.discount == 99
    assert app.total == 900
    assert app.points_earned == 9


def test_figures_for_gold_with_redeem() -> None:
    app = price(5000, 10, 200)
    assert (app.discount, app.points_redeemed, app.total, app.points_earned) == (500, 200, 4300, 43)
    assert app.state is ApplicationState.APPLIED
    assert (app.order_id, app.customer_id, app.tier, app.discount_percent, app.subtotal) == (
        "o-1",
        "c-1",
        "t",
        10,
        5000,
    )


def test_redeem_up_to_due() -> None:
    app = price(1000, 10, 900)
    assert app.total == 0
    assert app.points_earned == 0
    assert app.points_redeemed == 900


def test_redeem_more_than_due_is_invalid() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        price(1000, 10, 901)
    assert info.value.details["field"] == "redeem_points"
    assert info.value.details["due"] == 900
    assert info.value.details["requested"] == 901


@pytest.mark.parametrize(
    ("total", "minor_units", "earned"),
    [(0, 100, 0), (99, 100, 0), (100, 100, 1), (4399, 100, 43), (4399, 1, 4399), (4399, 1000, 4)],
)
def test_points_earned_are_whole_currency_units(total: int, minor_units: int, earned: int) -> None:
    assert price(total, 0, 0, minor_units).points_earned == earned


def test_zero_percent_tier() -> None:
    app = price(12345, 0, 45)
    assert app.discount == 0
    assert app.total == 12300
    assert app.points_earned == 123


def test_zero_subtotal() -> None:
    app = price(0, 10)
    assert (app.discount, app.total, app.points_earned) == (0, 0, 0)
    with pytest.raises(InvalidArgumentError):
        price(0, 10, 1)


def test_hundred_percent_tier_leaves_nothing_due() -> None:
    app = price(777, 100)
    assert (app.discount, app.total) == (777, 0)
    with pytest.raises(InvalidArgumentError):
        price(777, 100, 1)


# -- Tiers ---------------------------------------------------------------------------------


def test_tiers_check_known_and_unknown() -> None:
    tiers = Tiers(TIERS, "standard")
    assert tiers.check("gold") == "gold"
    with pytest.raises(InvalidArgumentError) as info:
        tiers.check("platinum")
    assert info.value.details["field"] == "tier"
    assert info.value.details["tiers"] == ["gold", "silver", "standard"]
    with pytest.raises(InvalidArgumentError):
        tiers.check("")
    with pytest.raises(InvalidArgumentError):
        tiers.check("Gold")


def test_tiers_percent() -> None:
    tiers = Tiers(TIERS, "standard")
    assert tiers.percent("standard") == 0
    assert tiers.percent("silver") == 5
    assert tiers.percent("gold") == 10


def test_tier_dropped_from_config_counts_as_default() -> None:
    tiers = Tiers({"standard": 2, "silver": 5}, "standard")
    assert tiers.percent("gold") == 2
    tiers = Tiers({"basic": 3, "gold": 10}, "basic")
    assert tiers.percent("silver") == 3


def test_default_tier_must_be_configured() -> None:
    with pytest.raises(ValueError, match="default tier"):
        Tiers(TIERS, "bronze")


def test_tiers_copy_their_table() -> None:
    table = dict(TIERS)
    tiers = Tiers(table, "standard")
    table["gold"] = 50
    assert tiers.percent("gold") == 10


# -- apply_request -------------------------------------------------------------------------


def test_apply_request_accepts_bounds() -> None:
    req = domain.apply_request("o" * 64, "c" * 64, MAX_MONEY, 0)
    assert req.subtotal == MAX_MONEY
    assert req.redeem_points == 0
    req = domain.apply_request("o", "c", 0, MAX_MONEY)
    assert req.redeem_points == MAX_MONEY


@pytest.mark.parametrize(
    ("order_id", "customer_id", "subtotal", "redeem", "field"),
    [
        ("", "c", 1, 0, "order_id"),
        ("o" * 65, "c", 1, 0, "order_id"),
        (" o", "c", 1, 0, "order_id"),
        ("o\n", "c", 1, 0, "order_id"),
        ("o", "", 1, 0, "customer_id"),
        ("o", "c" * 65, 1, 0, "customer_id"),
        ("o", "c ", 1, 0, "customer_id"),
        ("o", "c", -1, 0, "subtotal"),
        ("o", "c", MAX_MONEY + 1, 0, "subtotal"),
        ("o", "c", 1, -1, "redeem_points"),
        ("o", "c", 1, MAX_MONEY + 1, "redeem_points"),
    ],
)
def test_apply_request_rejects(
    order_id: str, customer_id: str, subtotal: int, redeem: int, field: str
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        domain.apply_request(order_id, customer_id, subtotal, redeem)
    assert info.value.details["field"] == field


# -- adjustment ----------------------------------------------------------------------------


def test_adjustment_strips_reason_and_keeps_key() -> None:
    adj = domain.adjustment("c", -5, "  goodwill  ", "k-1")
    assert adj == domain.Adjustment("c", -5, "goodwill", "k-1")
    assert domain.adjustment("c", 5, "r", "").idempotency_key == ""


def test_adjustment_accepts_bounds() -> None:
    assert domain.adjustment("c", MAX_MONEY, "r", "").delta == MAX_MONEY
    assert domain.adjustment("c", -MAX_MONEY, "r", "").delta == -MAX_MONEY
    assert domain.adjustment("c", 1, "r" * 200, "k" * 255).reason == "r" * 200


@pytest.mark.parametrize(
    ("customer_id", "delta", "reason", "key", "field"),
    [
        ("c", 0, "r", "", "delta"),
        ("c", MAX_MONEY + 1, "r", "", "delta"),
        ("c", -MAX_MONEY - 1, "r", "", "delta"),
        ("", 1, "r", "", "customer_id"),
        ("c" * 65, 1, "r", "", "customer_id"),
        ("c", 1, "", "", "reason"),
        ("c", 1, "   ", "", "reason"),
        ("c", 1, "r" * 201, "", "reason"),
        ("c", 1, "a\x00b", "", "reason"),
        ("c", 1, "r", "k" * 256, "idempotency_key"),
        ("c", 1, "r", " k", "idempotency_key"),
    ],
)
def test_adjustment_rejects(
    customer_id: str, delta: int, reason: str, key: str, field: str
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        domain.adjustment(customer_id, delta, reason, key)
    assert info.value.details["field"] == field


# -- ApplicationState ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "compensated"),
    [
        (ApplicationState.APPLIED, False),
        (ApplicationState.COMMITTED, False),
        (ApplicationState.CANCELLED, True),
        (ApplicationState.REFUNDED, True),
    ],
)
def test_compensated(state: ApplicationState, compensated: bool) -> None:
    assert state.compensated is compensated


# -- the application state machine --------------------------------------------------------

M, D, X = Outcome.MOVE, Outcome.DONE, Outcome.INVALID


@pytest.mark.parametrize(
    ("transition", "expected"),
    [
        # state:            none               APPLIED  CANCELLED  COMMITTED  REFUNDED
        (domain.VOID_DISCOUNT, [Outcome.TOMBSTONE, M, D, X, D]),
        (domain.COMMIT_DISCOUNT, [Outcome.MISSING, M, X, D, X]),
        (domain.REFUND_DISCOUNT, [Outcome.TOMBSTONE, M, D, M, D]),
    ],
)
def test_the_transition_table(
    transition: Transition[ApplicationState, domain.Entries], expected: list[Outcome]
) -> None:
    assert [transition.outcome(s) for s in [None, *ApplicationState]] == expected
    assert transition.fast_from == ApplicationState.APPLIED


def test_each_move_books_its_ledger_entries_with_these_deltas() -> None:
    S, K = ApplicationState, EntryKind
    assert domain.VOID_DISCOUNT.moves == {S.APPLIED: (K.REFUND_REDEEM,)}
    assert domain.COMMIT_DISCOUNT.moves == {S.APPLIED: (K.EARN,)}
    assert domain.REFUND_DISCOUNT.moves == {
        S.APPLIED: (K.REFUND_REDEEM,),
        S.COMMITTED: (K.REFUND_REDEEM, K.REVOKE_EARN),
    }
    app = domain.price_order("o-1", "c-1", "gold", 20, 10_000, 500, 100)  # 7500 paid, 75 earned
    deltas = {k: domain.order_entry(app, k).delta for k in (*K,) if k is not K.ADJUST}
    assert deltas == {K.REDEEM: -500, K.REFUND_REDEEM: 500, K.EARN: 75, K.REVOKE_EARN: -75}
    assert domain.order_entry(app, K.EARN) == domain.LedgerEntry("c-1", 75, K.EARN, "o-1")
    with pytest.raises(ValueError):
        domain.order_entry(app, K.ADJUST)
