"""InventoryService's use cases on fake repositories: stock and reservations after each call."""

from __future__ import annotations

import pytest

from orderflow.errors import (
    AlreadyExistsError,
    CompensatedError,
    InvalidArgumentError,
    InvalidStateError,
    NotFoundError,
    OutOfStockError,
    UnknownSkuError,
)
from orderflow.inventory.domain import Item, Reservation, ReservationState, ReservedLine
from orderflow.inventory.service import InventoryService
from tests.unit.fake_uow import FakeInventoryStore

S = ReservationState
NOW = 1_000_000


def make() -> tuple[InventoryService, FakeInventoryStore]:
    store = FakeInventoryStore()
    return InventoryService(store, currency="EUR", clock=lambda: NOW), store


async def stocked() -> tuple[InventoryService, FakeInventoryStore]:
    """MUG-1 (12.50, 10 in stock) and TEE-1 (20.00, 5 in stock)."""
    service, store = make()
    await service.create_item("MUG-1", "Mug", 1250, 10)
    await service.create_item("TEE-1", "Tee", 2000, 5)
    return service, store


def counters(store: FakeInventoryStore, sku: str) -> tuple[int, int, int, int]:
    """(available, reserved, sold, received) of sku."""
    item = store.items.rows[sku]
    return item.available, item.reserved, item.sold, item.received


# -- catalog ---------------------------------------------------------------------------


async def test_create_get_and_list_items() -> None:
    service, store = await stocked()

    assert await service.get_item("MUG-1") == Item("MUG-1", "Mug", 1250, "EUR", 10, 0, 0, 10)
    first, cursor = await service.list_items(1, "")
    assert [i.sku for i in first] == ["MUG-1"] and cursor
    rest, end = await service.list_items(1, cursor)
    assert [i.sku for i in rest] == ["TEE-1"] and end == ""
    assert store.commits == 2  # the two creations; reads commit nothing


async def test_create_item_twice_is_refused_and_changes_nothing() -> None:
    service, store = await stocked()
    with pytest.raises(AlreadyExistsError):
        await service.create_item("MUG-1", "Other", 1, 1)
    assert store.items.rows["MUG-1"].name == "Mug"
    assert store.rollbacks == 1


async def test_get_unknown_item_and_bad_input() -> None:
    service, _ = await stocked()
    with pytest.raises(NotFoundError):
        await service.get_item("NOPE-1")
    with pytest.raises(InvalidArgumentError):
        await service.create_item("bad sku", "Mug", 1250, 10)


async def test_update_item_restocks_and_renames() -> None:
    service, store = await stocked()
    item = await service.update_item("MUG-1", "Big mug", None, 5)
    assert (item.name, item.price) == ("Big mug", 1250)
    assert counters(store, "MUG-1") == (15, 0, 0, 15)
    with pytest.raises(NotFoundError):
        await service.update_item("NOPE-1", None, 1, None)


# -- reserve ---------------------------------------------------------------------------


async def test_reserve_takes_stock_of_every_line_at_its_price() -> None:
    service, store = await stocked()
    reservation = await service.reserve("o-1", [("TEE-1", 2), ("MUG-1", 3)])

    assert reservation == Reservation(
        "o-1", S.RESERVED, (ReservedLine("MUG-1", 3, 1250), ReservedLine("TEE-1", 2, 2000)), "EUR"
    )
    assert store.reservations.rows["o-1"] == reservation
    assert counters(store, "MUG-1") == (7, 3, 0, 10)
    assert counters(store, "TEE-1") == (3, 2, 0, 5)


async def test_reserve_repeated_returns_the_first_and_takes_nothing_more() -> None:
    service, store = await stocked()
    first = await service.reserve("o-1", [("MUG-1", 3)])
    rollbacks = store.rollbacks

    again = await service.reserve("o-1", [("MUG-1", 3)])

    assert again == first
    assert counters(store, "MUG-1") == (7, 3, 0, 10)
    assert store.rollbacks == rollbacks + 1  # the repeat's stock was taken, then rolled back


async def test_reserve_repeated_when_stock_ran_out_still_returns_the_first() -> None:
    service, store = await stocked()
    first = await service.reserve("o-1", [("TEE-1", 5)])
    assert await service.reserve("o-1", [("TEE-1", 5)]) == first
    assert counters(store, "TEE-1") == (0, 5, 0, 5)


async def test_reserve_out_of_stock_rolls_back_the_lines_before() -> None:
    service, store = await stocked()
    with pytest.raises(OutOfStockError) as caught:
        await service.reserve("o-1", [("MUG-1", 3), ("TEE-1", 6)])

    assert caught.value.details == {"sku": "TEE-1", "requested": 6, "available": 5}
    assert counters(store, "MUG-1") == (10, 0, 0, 10)  # taken, then rolled back
    assert store.reservations.rows == {}


async def test_reserve_names_every_unknown_sku() -> None:
    service, store = await stocked()
    with pytest.raises(UnknownSkuError) as caught:
        await service.reserve("o-1", [("MUG-1", 1), ("ZZZ-1", 1), ("AAA-1", 1)])
    assert caught.value.details == {"skus": ["AAA-1", "ZZZ-1"]}
    assert counters(store, "MUG-1") == (10, 0, 0, 10)


@pytest.mark.parametrize("undo", ["release", "return_stock"])
async def test_reserve_after_the_undo_is_refused(undo: str) -> None:
    service, store = await stocked()
    await getattr(service, undo)("o-1")  # before the reservation: a tombstone
    with pytest.raises(CompensatedError):
        await service.reserve("o-1", [("MUG-1", 3)])
    assert counters(store, "MUG-1") == (10, 0, 0, 10)


# -- release / commit_stock / return_stock ---------------------------------------------


async def test_release_gives_stock_back_once() -> None:
    service, store = await stocked()
    await service.reserve("o-1", [("MUG-1", 3)])

    assert await service.release("o-1") == S.RELEASED
    assert await service.release("o-1") == S.RELEASED  # a repeat changes nothing
    assert counters(store, "MUG-1") == (10, 0, 0, 10)


async def test_release_without_reservation_leaves_a_tombstone() -> None:
    service, store = await stocked()
    assert await service.release("o-9") == S.RELEASED
    assert store.reservations.rows["o-9"] == Reservation("o-9", S.RELEASED, (), "EUR")


async def test_commit_stock_turns_reserved_into_sold() -> None:
    service, store = await stocked()
    await service.reserve("o-1", [("MUG-1", 3)])

    assert await service.commit_stock("o-1") == S.COMMITTED
    assert await service.commit_stock("o-1") == S.COMMITTED
    assert counters(store, "MUG-1") == (7, 0, 3, 10)


async def test_commit_stock_without_reservation_is_not_found() -> None:
    service, store = await stocked()
    with pytest.raises(NotFoundError):
        await service.commit_stock("o-9")
    assert store.reservations.rows == {}


async def test_commit_stock_after_release_is_refused() -> None:
    service, store = await stocked()
    await service.reserve("o-1", [("MUG-1", 3)])
    await service.release("o-1")
    with pytest.raises(InvalidStateError) as caught:
        await service.commit_stock("o-1")
    assert caught.value.details == {"order_id": "o-1", "state": "RELEASED"}
    assert counters(store, "MUG-1") == (10, 0, 0, 10)


async def test_release_after_commit_is_refused() -> None:
    service, store = await stocked()
    await service.reserve("o-1", [("MUG-1", 3)])
    await service.commit_stock("o-1")
    with pytest.raises(InvalidStateError):
        await service.release("o-1")
    assert counters(store, "MUG-1") == (7, 0, 3, 10)


@pytest.mark.parametrize(
    ("commit_first", "before"), [(True, (7, 0, 3, 10)), (False, (7, 3, 0, 10))]
)
async def test_return_stock_from_sold_or_reserved(
    commit_first: bool, before: tuple[int, int, int, int]
) -> None:
    service, store = await stocked()
    await service.reserve("o-1", [("MUG-1", 3)])
    if commit_first:
        await service.commit_stock("o-1")
    assert counters(store, "MUG-1") == before

    assert await service.return_stock("o-1") == S.RETURNED
    assert await service.return_stock("o-1") == S.RETURNED
    assert counters(store, "MUG-1") == (10, 0, 0, 10)


async def test_return_stock_after_release_is_a_no_op() -> None:
    service, store = await stocked()
    await service.reserve("o-1", [("MUG-1", 3)])
    await service.release("o-1")
    assert await service.return_stock("o-1") == S.RELEASED
    assert counters(store, "MUG-1") == (10, 0, 0, 10)


async def test_return_stock_without_reservation_leaves_a_tombstone() -> None:
    service, store = await stocked()
    assert await service.return_stock("o-9") == S.RETURNED
    assert store.reservations.rows["o-9"].state == S.RETURNED
