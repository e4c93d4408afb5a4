"""Inventory domain and the shared input checks, without I/O."""

from __future__ import annotations

import pytest

from orderflow import validation
from orderflow.errors import InvalidArgumentError, UnknownSkuError
from orderflow.inventory import domain
from orderflow.inventory.domain import ItemChange, NewItem, ReservationState
from orderflow.platform.transitions import Outcome, Transition
from orderflow.validation import (
    MAX_CURSOR,
    MAX_ID,
    MAX_LINES,
    MAX_MONEY,
    MAX_NAME,
    MAX_QUANTITY,
    MAX_STOCK,
)

# -- new_item -----------------------------------------------------------------------------


def test_new_item_accepts_good_input_and_strips_the_name() -> None:
    assert domain.new_item("SKU-1.a_b", "  Blue mug ", 1250, 10) == NewItem(
        "SKU-1.a_b", "Blue mug", 1250, 10
    )


@pytest.mark.parametrize(
    ("sku", "name", "price", "stock"),
    [
        (f"S{'x' * (MAX_ID - 1)}", "n" * MAX_NAME, MAX_MONEY, MAX_STOCK),
        ("s", "n", 0, 0),
    ],
)
def test_new_item_accepts_the_limits(sku: str, name: str, price: int, stock: int) -> None:
    assert domain.new_item(sku, name, price, stock) == NewItem(sku, name, price, stock)


@pytest.mark.parametrize(
    ("sku", "name", "price", "stock", "field"),
    [
        ("", "mug", 1, 1, "sku"),
        ("has space", "mug", 1, 1, "sku"),
        (" lead", "mug", 1, 1, "sku"),
        ("trail ", "mug", 1, 1, "sku"),
        ("s" * (MAX_ID + 1), "mug", 1, 1, "sku"),
        ("slash/sku", "mug", 1, 1, "sku"),
        ("tab\tsku", "mug", 1, 1, "sku"),
        ("ok", "", 1, 1, "name"),
        ("ok", "   ", 1, 1, "name"),
        ("ok", "n" * (MAX_NAME + 1), 1, 1, "name"),
        ("ok", "bell\x07", 1, 1, "name"),
        ("ok", "mug", -1, 1, "price"),
        ("ok", "mug", MAX_MONEY + 1, 1, "price"),
        ("ok", "mug", 10**18, 1, "price"),
        ("ok", "mug", 1, -1, "stock"),
        ("ok", "mug", 1, MAX_STOCK + 1, "stock"),
    ],
)
def test_new_item_refuses_bad_input(
    sku: str, name: str, price: int, stock: int, field: str
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        domain.new_item(sku, name, price, stock)
    assert type(info.value) is InvalidArgumentError
    assert info.value.code == "INVALID_ARGUMENT"
    assert info.value.details["field"] == field
    assert field in info.value.message


# -- item_change --------------------------------------------------------------------------


def test_item_change_accepts_each_field_alone_and_together() -> None:
    assert domain.item_change("s", " New ", None, None) == ItemChange("s", "New", None, None)
    assert domain.item_change("s", None, 0, None) == ItemChange("s", None, 0, None)
    assert domain.item_change("s", None, None, 1) == ItemChange("s", None, None, 1)
    assert domain.item_change("s", "n", 5, MAX_STOCK) == ItemChange("s", "n", 5, MAX_STOCK)


def test_item_change_with_no_fields_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="at least one"):
        domain.item_change("s", None, None, None)


@pytest.mark.parametrize(
    ("sku", "name", "price", "restock", "field"),
    [
        ("bad sku", "n", None, None, "sku"),
        ("s" * (MAX_ID + 1), "n", None, None, "sku"),
        ("s", "", None, None, "name"),
        ("s", " \t ", None, None, "name"),
        ("s", "n" * (MAX_NAME + 1), None, None, "name"),
        ("s", None, -1, None, "price"),
        ("s", None, MAX_MONEY + 1, None, "price"),
        ("s", None, None, 0, "restock"),
        ("s", None, None, -5, "restock"),
        ("s", None, None, MAX_STOCK + 1, "restock"),
    ],
)
def test_item_change_refuses_bad_fields(
    sku: str, name: str | None, price: int | None, restock: int | None, field: str
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        domain.item_change(sku, name, price, restock)
    assert info.value.details["field"] == field


# -- order_lines --------------------------------------------------------------------------


def test_order_lines_are_checked_and_sorted_by_sku() -> None:
    order_id, lines = domain.order_lines("order-1", [("b", 2), ("a", 1), ("c", MAX_QUANTITY)])
    assert order_id == "order-1"
    assert lines == [("a", 1), ("b", 2), ("c", MAX_QUANTITY)]


def test_order_lines_accept_exactly_the_maximum_number_of_lines() -> None:
    lines = [(f"sku-{i:03}", 1) for i in range(MAX_LINES)]
    assert domain.order_lines("o", list(reversed(lines)))[1] == lines


@pytest.mark.parametrize(
    ("lines", "field", "message"),
    [
        ([], "lines", "at least one line"),
        ([(f"sku-{i}", 1) for i in range(MAX_LINES + 1)], "lines", f"at most {MAX_LINES}"),
        ([("a", 0)], "lines[0].quantity", "between 1 and"),
        ([("a", -1)], "lines[0].quantity", "between 1 and"),
        ([("a", 1), ("b", MAX_QUANTITY + 1)], "lines[1].quantity", "between 1 and"),
        ([("a", 10**6)], "lines[0].quantity", "between 1 and"),
        ([("a", 1), ("a", 2)], "lines", "more than one line"),
        ([("with space", 1)], "lines[0].sku", "may contain only"),
        ([("s" * (MAX_ID + 1), 1)], "lines[0].sku", "longer than"),
        ([("", 1)], "lines[0].sku", "required"),
    ],
)
def test_order_lines_refuse_bad_lines(
    lines: list[tuple[str, int]], field: str, message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message) as info:
        domain.order_lines("o", lines)
    assert type(info.value) is InvalidArgumentError
    assert not isinstance(info.value, UnknownSkuError)
    assert info.value.details["field"] == field


@pytest.mark.parametrize(
    ("order_id", "message"),
    [
        ("", "required"),
        ("o" * (MAX_ID + 1), "longer than"),
        (" o", "blanks"),
        ("o ", "blanks"),
        ("o\n1", "control"),
    ],
)
def test_order_lines_refuse_a_bad_order_id(order_id: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message) as info:
        domain.order_lines(order_id, [("a", 1)])
    assert info.value.details["field"] == "order_id"


def test_order_id_of_the_maximum_length_is_accepted() -> None:
    assert domain.order_lines("o" * MAX_ID, [("a", 1)])[0] == "o" * MAX_ID


def test_unknown_sku_is_an_invalid_argument_with_its_own_code() -> None:
    error = UnknownSkuError("unknown sku: x", skus=["x"])
    assert isinstance(error, InvalidArgumentError)
    assert error.code == "UNKNOWN_SKU"
    assert error.details == {"skus": ["x"]}


# -- reservation states -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "compensated"),
    [
        (ReservationState.RESERVED, False),
        (ReservationState.COMMITTED, False),
        (ReservationState.RELEASED, True),
        (ReservationState.RETURNED, True),
    ],
)
def test_only_released_and_returned_are_compensated(
    state: ReservationState, compensated: bool
) -> None:
    assert state.compensated is compensated
    assert ReservationState(state.value) is state


# -- validation helpers -------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [(0, 25), (1, 1), (100, 100)])
def test_check_limit(value: int, expected: int) -> None:
    assert validation.check_limit(value, default=25) == expected


@pytest.mark.parametrize("value", [-1, 101, 10**9])
def test_check_limit_refuses_out_of_range(value: int) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        validation.check_limit(value, default=25)
    assert info.value.details == {"field": "limit", "minimum": 1, "maximum": 100}


def test_check_range_names_its_bounds() -> None:
    with pytest.raises(InvalidArgumentError, match="x must be between 1 and 3, got 4") as info:
        validation.check_range("x", 4, 1, 3)
    assert info.value.details == {"field": "x", "minimum": 1, "maximum": 3}
    assert validation.check_range("x", 3, 1, 3) == 3


def test_check_money_bounds() -> None:
    assert validation.check_money("p", 0) == 0
    assert validation.check_money("p", MAX_MONEY) == MAX_MONEY
    for bad in (-1, MAX_MONEY + 1):
        with pytest.raises(InvalidArgumentError):
            validation.check_money("p", bad)


@pytest.mark.parametrize("value", ["a", "sku-001", "Z" * MAX_ID, "ü-unicode", "x/y?z=1&"])
def test_cursor_round_trip(value: str) -> None:
    cursor = validation.encode_cursor(value)
    assert "=" not in cursor
    assert validation.decode_cursor(cursor) == value


@pytest.mark.parametrize(
    "cursor",
    [
        "a",  # impossible base64 length
        "é",  # not ASCII
        "_w",  # decodes to bytes that are not UTF-8
        "x" * (MAX_CURSOR + 1),  # too long
    ],
)
def test_bad_cursor_is_refused(cursor: str) -> None:
    with pytest.raises(InvalidArgumentError, match="cursor is not valid") as info:
        validation.decode_cursor(cursor)
    assert info.value.details == {"field": "cursor"}


# -- the reservation state machine --------------------------------------------------------

M, D, X = Outcome.MOVE, Outcome.DONE, Outcome.INVALID


@pytest.mark.parametrize(
    ("transition", "expected"),
    [
        # state:       none               RESERVED  RELEASED  COMMITTED  RETURNED
        (domain.RELEASE, [Outcome.TOMBSTONE, M, D, X, D]),
        (domain.COMMIT_STOCK, [Outcome.MISSING, M, X, D, X]),
        (domain.RETURN_STOCK, [Outcome.TOMBSTONE, M, D, M, D]),
    ],
)
def test_the_transition_table(
    transition: Transition[ReservationState, domain.StockMove], expected: list[Outcome]
) -> None:
    states = [None, *ReservationState]  # None: no reservation yet
    assert [transition.outcome(s) for s in states] == expected
    assert transition.fast_from == ReservationState.RESERVED


def test_each_move_names_the_counters_its_stock_moves_between() -> None:
    S = ReservationState
    assert domain.RELEASE.moves == {S.RESERVED: ("reserved", "available")}
    assert domain.COMMIT_STOCK.moves == {S.RESERVED: ("reserved", "sold")}
    assert domain.RETURN_STOCK.moves == {
        S.RESERVED: ("reserved", "available"),
        S.COMMITTED: ("sold", "available"),
    }


def test_a_transition_table_refuses_contradictions() -> None:
    S = ReservationState
    with pytest.raises(ValueError):
        Transition(S.RELEASED, {S.RESERVED: "x"}, frozenset({S.RESERVED}), tombstone=True)
    with pytest.raises(ValueError):
        Transition(
            S.RELEASED, {S.RESERVED: "x"}, frozenset(), tombstone=True, fast_from=S.COMMITTED
        )
