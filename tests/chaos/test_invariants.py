"""The soak's checks can fail: a consistent snapshot of the databases passes, and each way
of breaking an invariant is named (fast: no processes, no databases)."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from typing import Any

import pytest

from tests.chaos.test_soak import (
    START_STOCK,
    AdminCall,
    Placement,
    Record,
    client_violations,
)
from tests.invariants import Snapshot, violations

SKU = "SKU-1"
LINES = [{"sku": SKU, "quantity": 3, "unit_price": 100}]


def order(order_id: str, status: str, **figures: int) -> dict[str, Any]:
    return {
        "id": order_id,
        "customer_id": "c1",
        "status": status,
        "settled": True,
        "idempotency_key": None,
        "lines": LINES,
        "discount": 0,
        "points_redeemed": figures.get("redeemed", 0),
        "points_earned": figures.get("earned", 0),
        "total": 300 - figures.get("redeemed", 0),
    }


def application(order_id: str, state: str, redeemed: int, earned: int) -> dict[str, Any]:
    return {
        "order_id": order_id,
        "customer_id": "c1",
        "state": state,
        "discount": 0,
        "points_redeemed": redeemed,
        "total": 300 - redeemed,
        "points_earned": earned,
    }


def entry(order_id: str | None, kind: str, delta: int, reason: str = "") -> dict[str, Any]:
    return {
        "customer_id": "c1",
        "order_id": order_id,
        "kind": kind,
        "delta": delta,
        "reason": reason,
    }


def consistent() -> Snapshot:
    """One CONFIRMED order (3 units sold, 10 points redeemed, 5 earned), one REJECTED (its
    stock released, its points refunded) and one CANCELLED (stock and points given back)."""
    rows = {
        "orders": [
            order("o-ok", "CONFIRMED", redeemed=10, earned=5),
            order("o-no", "REJECTED", redeemed=10),
            order("o-cx", "CANCELLED", redeemed=10, earned=5),
        ],
        "items": [{"sku": SKU, "available": 7, "reserved": 0, "sold": 3, "received": 10}],
        "reservations": [
            {"order_id": "o-ok", "state": "COMMITTED", "lines": LINES},
            {"order_id": "o-no", "state": "RELEASED", "lines": LINES},
            {"order_id": "o-cx", "state": "RETURNED", "lines": LINES},
        ],
        "accounts": [{"customer_id": "c1", "points": 95}],
        "ledger": [
            entry(None, "ADJUST", 100, "setup"),
            entry("o-ok", "REDEEM", -10),
            entry("o-ok", "EARN", 5),
            entry("o-no", "REDEEM", -10),
            entry("o-no", "REFUND_REDEEM", 10),
            entry("o-cx", "REDEEM", -10),
            entry("o-cx", "EARN", 5),
            entry("o-cx", "REFUND_REDEEM", 10),
            entry("o-cx", "REVOKE_EARN", -5),
        ],
        "applications": [
            application("o-ok", "COMMITTED", 10, 5),
            application("o-no", "CANCELLED", 10, 0),
            application("o-cx", "REFUNDED", 10, 5),
        ],
    }
    services = {"orders": 0, "inventory": 0, "loyalty": 0}
    return Snapshot(rows, dict(services), dict(services))


def test_a_consistent_snapshot_passes() -> None:
    assert violations(consistent()) == []


def _set(table: str, index: int, **values: Any) -> Callable[[Snapshot], object]:
    return lambda snap: snap[table][index].update(values)


BREAKS: dict[str, tuple[Callable[[Snapshot], object], str]] = {
    "order left pending": (_set("orders", 0, status="PENDING"), "not terminal"),
    "order unsettled": (_set("orders", 1, settled=False), "not settled"),
    "stock not conserved": (_set("items", 0, available=8), "not conserved"),
    "stock negative": (
        _set("items", 0, available=-1, sold=11, received=10),
        "negative",
    ),
    "sold without a committed reservation": (
        _set("reservations", 0, state="RELEASED"),
        "COMMITTED reservations hold 0",
    ),
    "stock still reserved": (_set("reservations", 0, state="RESERVED"), "still RESERVED"),
    "points not conserved": (_set("accounts", 0, points=96), "not conserved"),
    "redeemed twice": (
        lambda snap: snap["ledger"].append(entry("o-ok", "REDEEM", -10)),
        "ledger entries twice",
    ),
    "rejected order keeps points": (
        lambda snap: snap["ledger"].pop(4),
        "sum to non-zero",
    ),
    "confirmed order not committed in loyalty": (
        _set("applications", 0, state="APPLIED"),
        "still APPLIED",
    ),
    "figures differ between services": (
        _set("applications", 0, points_earned=6),
        "points_earned",
    ),
    "reservation of an unknown order": (
        lambda snap: snap["reservations"].append(
            {"order_id": "ghost", "state": "RELEASED", "lines": LINES}
        ),
        "does not know: ghost",
    ),
    "two orders for one key": (
        lambda snap: [o.update(idempotency_key="k") for o in snap["orders"][:2]],
        "one (customer, Idempotency-Key)",
    ),
    "event left unpublished": (lambda snap: snap.unpublished.update(orders=2), "not yet published"),
    "event parked": (lambda snap: snap.parked.update(loyalty=1), "parked"),
}


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_each_broken_invariant_is_named(name: str) -> None:
    snapshot = copy.deepcopy(consistent())
    breaks, expected = BREAKS[name]
    breaks(snapshot)
    found = violations(snapshot)
    assert any(expected in v for v in found), found


def client_snapshot() -> Snapshot:
    snapshot = consistent()
    snapshot["items"][0].update(received=START_STOCK + 5, available=START_STOCK + 2)
    return snapshot


def record(restock_status: int | str) -> Record:
    rec = Record(random.Random(1))
    rec.item_names.add("r1")
    rec.restocks.append(AdminCall(SKU, 5, "r1", restock_status))
    rec.adjustments.append(AdminCall("c1", 100, "setup", 200))
    rec.cancel_asked.add("o-cx")
    return rec


def test_client_view_of_a_consistent_run_passes() -> None:
    changes = [{"sku": SKU, "name": "r1", "created": False}]
    assert client_violations(record(200), client_snapshot(), changes, [SKU]) == []


@pytest.mark.parametrize(
    ("restock_status", "changes", "expected"),
    [
        (200, [], "answered 200 but did not take effect"),
        ("timeout", [{"name": "r1"}, {"name": "r1"}], "took effect 2 times"),
        (200, [{"name": "r1"}, {"name": "r2"}], "which no request gave"),
    ],
)
def test_restocks_are_matched_to_their_effects(
    restock_status: int | str, changes: list[dict[str, Any]], expected: str
) -> None:
    found = client_violations(record(restock_status), client_snapshot(), changes, [SKU])
    assert any(expected in v for v in found), found


def test_a_500_a_201_for_a_rejected_order_and_an_unasked_cancel_are_named() -> None:
    rec = record(200)
    rec.cancel_asked.clear()
    rec.statuses[("place", 500, "INTERNAL")] += 1
    rec.placements.append(Placement({"customer_id": "c1"}, None, False, 201, "", "o-no"))
    found = client_violations(rec, client_snapshot(), [{"name": "r1"}], [SKU])
    for expected in ("HTTP 500", "201 for order o-no", "o-cx CANCELLED, but no client asked"):
        assert any(expected in v for v in found), (expected, found)
