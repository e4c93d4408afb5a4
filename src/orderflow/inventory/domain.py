"""Inventory domain: items with stock counters, reservations and their states (no I/O).

Per sku, available + reserved + sold == received, and no counter is ever negative.
A reservation belongs to one order and moves RESERVED -> COMMITTED or RELEASED, and
COMMITTED or RESERVED -> RETURNED; RELEASED and RETURNED are final (tombstones). The
transition tables below are the whole state machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from orderflow.errors import InvalidArgumentError
from orderflow.platform.transitions import Transition
from orderflow.validation import (
    MAX_STOCK,
    check_id,
    check_lines,
    check_money,
    check_range,
    check_sku,
    check_text,
)


class ReservationState(StrEnum):
    RESERVED = "RESERVED"
    RELEASED = "RELEASED"
    COMMITTED = "COMMITTED"
    RETURNED = "RETURNED"

    @property
    def compensated(self) -> bool:
        """Released or returned: a late Reserve for the order must be refused."""
        return self in (ReservationState.RELEASED, ReservationState.RETURNED)


# Each move is tried first as one conditional UPDATE from fast_from (storage.py's
# _MOVE_RESERVATION restates that row of the table in SQL; tests/integration/
# test_inventory.py checks they agree in every state).
# Which stock counter a move of a reservation takes its quantities from, and to which.
StockMove = tuple[str, str]
_S = ReservationState

# Give reserved stock back. With no reservation yet, leave a RELEASED tombstone, so a late
# Reserve for the order is refused.
RELEASE = Transition[ReservationState, StockMove](
    target=_S.RELEASED,
    moves={_S.RESERVED: ("reserved", "available")},
    done=frozenset({_S.RELEASED, _S.RETURNED}),
    tombstone=True,
    fast_from=_S.RESERVED,
)
# Turn reserved stock into sold stock (the saga's follow-up once the order is confirmed).
COMMIT_STOCK = Transition[ReservationState, StockMove](
    target=_S.COMMITTED,
    moves={_S.RESERVED: ("reserved", "sold")},
    done=frozenset({_S.COMMITTED}),
    tombstone=False,
    fast_from=_S.RESERVED,
)
# Give a cancelled order's stock, sold or still reserved, back to available.
RETURN_STOCK = Transition[ReservationState, StockMove](
    target=_S.RETURNED,
    moves={_S.RESERVED: ("reserved", "available"), _S.COMMITTED: ("sold", "available")},
    done=frozenset({_S.RELEASED, _S.RETURNED}),
    tombstone=True,
    fast_from=_S.RESERVED,
)


@dataclass(frozen=True)
class Item:
    sku: str
    name: str
    price: int
    currency: str
    available: int
    reserved: int
    sold: int
    received: int


@dataclass(frozen=True)
class ReservedLine:
    sku: str
    quantity: int
    unit_price: int


@dataclass(frozen=True)
class Reservation:
    order_id: str
    state: ReservationState
    lines: tuple[ReservedLine, ...]
    currency: str


def tombstone(order_id: str, state: ReservationState, currency: str) -> Reservation:
    """The record of a reservation finished before it was made: no lines, a final state."""
    return Reservation(order_id, state, (), currency)


@dataclass(frozen=True)
class NewItem:
    sku: str
    name: str
    price: int
    stock: int


@dataclass(frozen=True)
class ItemChange:
    sku: str
    name: str | None
    price: int | None
    restock: int | None


def new_item(sku: str, name: str, price: int, stock: int) -> NewItem:
    return NewItem(
        sku=check_sku(sku),
        name=check_text("name", name),
        price=check_money("price", price),
        stock=check_range("stock", stock, 0, MAX_STOCK),
    )


def item_change(sku: str, name: str | None, price: int | None, restock: int | None) -> ItemChange:
    if name is None and price is None and restock is None:
        raise InvalidArgumentError("give at least one of name, price and restock", field="body")
    return ItemChange(
        sku=check_sku(sku),
        name=None if name is None else check_text("name", name),
        price=None if price is None else check_money("price", price),
        restock=None if restock is None else check_range("restock", restock, 1, MAX_STOCK),
    )


def order_lines(order_id: str, lines: list[tuple[str, int]]) -> tuple[str, list[tuple[str, int]]]:
    """The order id and its lines, checked, with lines sorted by sku (the lock order)."""
    return check_id("order_id", order_id), sorted(check_lines(lines))
