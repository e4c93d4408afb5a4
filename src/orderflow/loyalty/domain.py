"""Loyalty domain: tiers and discounts, points, and per-order applications (no I/O).

An account's points equal the sum of its ledger entries and are never negative. An
application belongs to one order and moves APPLIED -> COMMITTED or CANCELLED, and
APPLIED or COMMITTED -> REFUNDED; CANCELLED and REFUNDED are final (tombstones). The
transition tables below are the whole state machine; each move names the ledger entries
it books (`order_entry` says how many points each one is).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from orderflow.errors import InvalidArgumentError
from orderflow.platform.transitions import Transition
from orderflow.validation import MAX_MONEY, check_id, check_money, check_range, check_text


class ApplicationState(StrEnum):
    APPLIED = "APPLIED"
    CANCELLED = "CANCELLED"
    COMMITTED = "COMMITTED"
    REFUNDED = "REFUNDED"

    @property
    def compensated(self) -> bool:
        """Cancelled or refunded: a late Apply for the order must be refused."""
        return self in (ApplicationState.CANCELLED, ApplicationState.REFUNDED)


class EntryKind(StrEnum):
    """Why a ledger entry exists; per order there is at most one entry of each kind."""

    REDEEM = "REDEEM"
    REFUND_REDEEM = "REFUND_REDEEM"
    EARN = "EARN"
    REVOKE_EARN = "REVOKE_EARN"
    ADJUST = "ADJUST"


# Each move is tried first as one conditional UPDATE from fast_from (storage.py's
# _MOVE_APPLICATION restates that row of the table in SQL; tests/integration/
# test_loyalty.py checks they agree in every state).
# The ledger entries a move of an application books, in order.
Entries = tuple[EntryKind, ...]
_S = ApplicationState

# Undo Apply (the saga's compensation): redeemed points come back. With nothing applied
# yet, leave a CANCELLED tombstone, so a late Apply for the order is refused.
VOID_DISCOUNT = Transition[ApplicationState, Entries](
    target=_S.CANCELLED,
    moves={_S.APPLIED: (EntryKind.REFUND_REDEEM,)},
    done=frozenset({_S.CANCELLED, _S.REFUNDED}),
    tombstone=True,
    fast_from=_S.APPLIED,
)
# Make the order's loyalty effects final: its earned points are credited.
COMMIT_DISCOUNT = Transition[ApplicationState, Entries](
    target=_S.COMMITTED,
    moves={_S.APPLIED: (EntryKind.EARN,)},
    done=frozenset({_S.COMMITTED}),
    tombstone=False,
    fast_from=_S.APPLIED,
)
# For a cancelled order: redeemed points come back, earned points are taken back.
REFUND_DISCOUNT = Transition[ApplicationState, Entries](
    target=_S.REFUNDED,
    moves={
        _S.APPLIED: (EntryKind.REFUND_REDEEM,),
        _S.COMMITTED: (EntryKind.REFUND_REDEEM, EntryKind.REVOKE_EARN),
    },
    done=frozenset({_S.CANCELLED, _S.REFUNDED}),
    tombstone=True,
    fast_from=_S.APPLIED,
)


@dataclass(frozen=True)
class Account:
    customer_id: str
    tier: str
    discount_percent: int
    points: int


@dataclass(frozen=True)
class Application:
    order_id: str
    customer_id: str
    state: ApplicationState
    tier: str
    discount_percent: int
    subtotal: int
    discount: int
    points_redeemed: int
    total: int
    points_earned: int


@dataclass(frozen=True)
class LedgerEntry:
    """A change of delta points to a customer's balance, and why: one row of the ledger."""

    customer_id: str
    delta: int
    kind: EntryKind
    order_id: str | None = None
    reason: str = ""
    idempotency_key: str | None = None


@dataclass(frozen=True)
class BookedEntry:
    """A ledger entry as booked: its position in the ledger (ids only grow) and time."""

    id: int
    entry: LedgerEntry
    created_us: int


def order_entry(application: Application, kind: EntryKind) -> LedgerEntry:
    """The ledger entry of kind that an order's application books (negative: points taken)."""
    if kind is EntryKind.REDEEM:
        delta = -application.points_redeemed
    elif kind is EntryKind.REFUND_REDEEM:
        delta = application.points_redeemed
    elif kind is EntryKind.EARN:
        delta = application.points_earned
    elif kind is EntryKind.REVOKE_EARN:
        delta = -application.points_earned
    else:
        raise ValueError(f"{kind} is not an entry of an order")
    return LedgerEntry(application.customer_id, delta, kind, order_id=application.order_id)


def tombstone(order_id: str, state: ApplicationState) -> Application:
    """The record of an application finished before it was made: nothing priced, a final state."""
    return Application(order_id, "", state, "", 0, 0, 0, 0, 0, 0)


class Tiers:
    """The configured tier table: tier name -> discount percent, and the tier of new accounts."""

    def __init__(self, percents: Mapping[str, int], default: str) -> None:
        if default not in percents:
            raise ValueError(f"default tier {default!r} is not one of {sorted(percents)}")
        self.percents = dict(percents)
        self.default = default

    def check(self, tier: str) -> str:
        if tier not in self.percents:
            raise InvalidArgumentError(
                f"unknown tier {tier!r}; tiers are {', '.join(sorted(self.percents))}",
                field="tier",
                tiers=sorted(self.percents),
            )
        return tier

    def percent(self, tier: str) -> int:
        """Discount of a tier; a tier dropped from the configuration counts as the default."""
        return self.percents.get(tier, self.percents[self.default])


def price_order(
    order_id: str,
    customer_id: str,
    tier: str,
    percent: int,
    subtotal: int,
    redeem_points: int,
    minor_units: int,
) -> Application:
    """The loyalty figures of an order: discount by tier, points redeemed, total, points earned.

    discount = floor(subtotal * percent / 100); one point pays one minor unit, up to what is
    due after the discount; points earned = whole currency units of the total paid.
    """
    discount = subtotal * percent // 100
    due = subtotal - discount
    if redeem_points > due:
        raise InvalidArgumentError(
            f"cannot redeem {redeem_points} points on an order of which {due} is due",
            field="redeem_points",
            requested=redeem_points,
            due=due,
        )
    total = due - redeem_points
    return Application(
        order_id=order_id,
        customer_id=customer_id,
        state=ApplicationState.APPLIED,
        tier=tier,
        discount_percent=percent,
        subtotal=subtotal,
        discount=discount,
        points_redeemed=redeem_points,
        total=total,
        points_earned=total // minor_units,
    )


@dataclass(frozen=True)
class ApplyRequest:
    order_id: str
    customer_id: str
    subtotal: int
    redeem_points: int


def apply_request(
    order_id: str, customer_id: str, subtotal: int, redeem_points: int
) -> ApplyRequest:
    return ApplyRequest(
        order_id=check_id("order_id", order_id),
        customer_id=check_id("customer_id", customer_id),
        subtotal=check_money("subtotal", subtotal),
        redeem_points=check_money("redeem_points", redeem_points),
    )


MAX_IDEMPOTENCY_KEY = 255  # as every idempotency key (ADR 0023)


@dataclass(frozen=True)
class Adjustment:
    customer_id: str
    delta: int
    reason: str
    idempotency_key: str


def adjustment(customer_id: str, delta: int, reason: str, idempotency_key: str) -> Adjustment:
    if delta == 0:
        raise InvalidArgumentError("delta must not be 0", field="delta")
    check_range("delta", delta, -MAX_MONEY, MAX_MONEY)
    return Adjustment(
        customer_id=check_id("customer_id", customer_id),
        delta=delta,
        reason=check_text("reason", reason),
        idempotency_key=(
            check_id("idempotency_key", idempotency_key, max_len=MAX_IDEMPOTENCY_KEY)
            if idempotency_key
            else ""
        ),
    )
