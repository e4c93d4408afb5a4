"""The events of loyalty and their bodies: points.changed, tier.changed and
loyalty.committed (DESIGN.md, Events)."""

from __future__ import annotations

from orderflow.events.v1 import events_pb2
from orderflow.loyalty.domain import Application, EntryKind, LedgerEntry

# points.changed's reason for each kind of ledger entry.
REASONS = {
    EntryKind.REDEEM: "redeemed",
    EntryKind.REFUND_REDEEM: "refunded",
    EntryKind.EARN: "earned",
    EntryKind.REVOKE_EARN: "revoked",
    EntryKind.ADJUST: "adjusted",
}


def points_changed(entry: LedgerEntry, balance: int) -> events_pb2.PointsChanged:
    return events_pb2.PointsChanged(
        customer_id=entry.customer_id,
        delta=entry.delta,
        balance=balance,
        reason=REASONS[entry.kind],
        order_id=entry.order_id or "",
    )


def tier_changed(
    customer_id: str, tier: str, previous: str, percent: int
) -> events_pb2.TierChanged:
    return events_pb2.TierChanged(
        customer_id=customer_id, tier=tier, previous_tier=previous, discount_percent=percent
    )


def loyalty_committed(app: Application, balance: int) -> events_pb2.LoyaltyCommitted:
    return events_pb2.LoyaltyCommitted(
        order_id=app.order_id,
        customer_id=app.customer_id,
        points_earned=app.points_earned,
        points_redeemed=app.points_redeemed,
        balance=balance,
    )
