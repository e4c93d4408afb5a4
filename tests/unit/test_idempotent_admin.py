"""Idempotency keys of the admin use cases (ADR 0023) on fake repositories: a repeat gets the
first result with no second effect, another request with the key is refused, a live claim
of another request is in progress, an expired or own one is taken over."""

from __future__ import annotations

from dataclasses import replace

import pytest

from orderflow.errors import (
    AlreadyExistsError,
    IdempotencyKeyReusedError,
    InvalidArgumentError,
    NegativeBalanceError,
    RequestInProgressError,
)
from orderflow.inventory.domain import Item
from orderflow.inventory.service import InventoryService
from orderflow.loyalty.domain import Account, Tiers
from orderflow.loyalty.service import LoyaltyService
from orderflow.platform.idempotency import keyed
from tests.unit.fake_uow import FakeInventoryStore, FakeLoyaltyStore

SECOND = 1_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 1_000 * SECOND

    def __call__(self) -> int:
        return self.now


def inventory() -> tuple[InventoryService, FakeInventoryStore, Clock]:
    store, clock = FakeInventoryStore(), Clock()
    service = InventoryService(
        store,
        currency="EUR",
        clock=clock,
        idempotency_lease_seconds=30,
        idempotency_retention_seconds=86_400,
    )
    return service, store, clock


def loyalty() -> tuple[LoyaltyService, FakeLoyaltyStore, Clock]:
    store, clock = FakeLoyaltyStore(), Clock()
    tiers = Tiers({"basic": 0, "gold": 20}, "basic")
    service = LoyaltyService(store, tiers=tiers, minor_units=100, clock=clock)
    return service, store, clock


def received(store: FakeInventoryStore, sku: str) -> int:
    return store.items.rows[sku].received


async def test_restock_with_a_key_happens_once_and_replays_the_first_reply() -> None:
    service, store, _ = inventory()
    await service.create_item("MUG-1", "Mug", 1250, 10)
    first = await service.update_item("MUG-1", None, None, 5, idempotency_key="r-1", caller="a")
    assert received(store, "MUG-1") == 15
    await service.update_item("MUG-1", None, 1300, None)  # a change in between
    again = await service.update_item("MUG-1", None, None, 5, idempotency_key="r-1", caller="a")
    assert again == first == Item("MUG-1", "Mug", 1250, "EUR", 15, 0, 0, 15)
    assert received(store, "MUG-1") == 15
    # the same key of another caller, or for another sku, is another request
    await service.update_item("MUG-1", None, None, 5, idempotency_key="r-1", caller="b")
    assert received(store, "MUG-1") == 20
    with pytest.raises(IdempotencyKeyReusedError):
        await service.update_item("MUG-1", None, None, 6, idempotency_key="r-1", caller="a")
    assert received(store, "MUG-1") == 20


async def test_restock_without_a_key_is_not_deduplicated() -> None:
    service, store, _ = inventory()
    await service.create_item("MUG-1", "Mug", 1250, 0)
    await service.update_item("MUG-1", None, None, 1)
    await service.update_item("MUG-1", None, None, 1)
    assert received(store, "MUG-1") == 2
    assert store.idempotency.rows == {}


async def test_create_item_with_a_key_creates_once_and_answers_the_creation() -> None:
    service, store, _ = inventory()
    first = await service.create_item("NEW-1", "New", 500, 3, idempotency_key="c-1")
    assert await service.create_item("NEW-1", "New", 500, 3, idempotency_key="c-1") == first
    assert len(store.items.rows) == 1
    assert len(store.outbox.messages) == 1  # one item.changed
    with pytest.raises(IdempotencyKeyReusedError):
        await service.create_item("NEW-1", "New", 501, 3, idempotency_key="c-1")
    # without the key, the sku is simply taken
    with pytest.raises(AlreadyExistsError):
        await service.create_item("NEW-1", "New", 500, 3)


async def test_a_live_claim_of_another_request_is_in_progress_until_its_lease_ends() -> None:
    service, store, clock = inventory()
    await service.create_item("MUG-1", "Mug", 1250, 0)
    request = keyed(
        "k", "a", "other-request", "UpdateItem", "MUG-1", name=None, price=None, restock=4
    )
    assert request is not None
    # another request claimed the key, and has not finished (yet, or ever)
    async with store() as uow:
        await service._idempotent._claim(uow, request)
        await uow.commit()
    with pytest.raises(RequestInProgressError):
        await service.update_item(
            "MUG-1", None, None, 4, idempotency_key="k", caller="a", owner="me"
        )
    assert received(store, "MUG-1") == 0
    clock.now += 31 * SECOND  # its lease ran out: taken over, done once
    await service.update_item("MUG-1", None, None, 4, idempotency_key="k", caller="a", owner="me")
    await service.update_item("MUG-1", None, None, 4, idempotency_key="k", caller="a", owner="x")
    assert received(store, "MUG-1") == 4


async def test_the_same_owner_takes_its_own_claim_over_at_once() -> None:
    """A retry by the gateway of one request whose first attempt died after claiming."""
    service, store, _ = inventory()
    await service.create_item("MUG-1", "Mug", 1250, 0)
    request = keyed("k", "a", "req-1", "UpdateItem", "MUG-1", name=None, price=None, restock=4)
    assert request is not None
    async with store() as uow:
        await service._idempotent._claim(uow, request)
        await uow.commit()
    await service.update_item(
        "MUG-1", None, None, 4, idempotency_key="k", caller="a", owner="req-1"
    )
    assert received(store, "MUG-1") == 4


async def test_an_effect_whose_claim_was_taken_over_rolls_back() -> None:
    service, store, _ = inventory()
    await service.create_item("MUG-1", "Mug", 1250, 0)
    stolen = store.items.change

    async def change_then_lose_the_claim(change, now):  # type: ignore[no-untyped-def]
        # As if another attempt took the claim over while this one ran.
        for at, record in list(store.idempotency.rows.items()):
            store.idempotency.rows[at] = replace(record, token="another")
        return await stolen(change, now)

    store.items.change = change_then_lose_the_claim  # type: ignore[method-assign]
    with pytest.raises(RequestInProgressError):
        await service.update_item("MUG-1", None, None, 4, idempotency_key="k", owner="o")
    assert received(store, "MUG-1") == 0


async def test_a_refusal_is_stored_and_replayed() -> None:
    service, store, _ = loyalty()
    with pytest.raises(NegativeBalanceError) as first:
        await service.adjust_points("c-1", -10, "fix", "k-1", caller="a")
    await service.adjust_points("c-1", 50, "gift")
    with pytest.raises(NegativeBalanceError) as again:
        await service.adjust_points("c-1", -10, "fix", "k-1", caller="a")
    assert (again.value.message, again.value.details) == (first.value.message, first.value.details)
    assert [e.delta for e in store.accounts.ledger] == [50]


async def test_adjust_points_and_set_tier_with_a_key_happen_once() -> None:
    service, store, _ = loyalty()
    first = await service.adjust_points("c-1", 7, "promo", "p-1", caller="a", owner="r1")
    assert await service.adjust_points("c-1", 7, "promo", "p-1", caller="a", owner="r2") == first
    assert [e.delta for e in store.accounts.ledger] == [7]
    with pytest.raises(IdempotencyKeyReusedError):
        await service.adjust_points("c-1", 7, "other reason", "p-1", caller="a")
    tier = await service.set_tier("c-1", "gold", idempotency_key="t-1", caller="a")
    await service.set_tier("c-1", "basic")
    assert await service.set_tier("c-1", "gold", idempotency_key="t-1", caller="a") == tier
    assert tier == Account("c-1", "gold", 20, 7)
    assert (await service.get_account("c-1")).tier == "basic"


async def test_keys_are_checked() -> None:
    service, _, _ = loyalty()
    with pytest.raises(InvalidArgumentError):
        await service.set_tier("c-1", "gold", idempotency_key="k" * 256)
    with pytest.raises(InvalidArgumentError):
        await service.set_tier("c-1", "gold", idempotency_key=" k")
    assert (await service.set_tier("c-1", "gold", idempotency_key="k" * 255)).tier == "gold"


async def test_keys_are_purged_after_their_retention() -> None:
    service, store, clock = inventory()
    await service.create_item("OLD-1", "Old", 1, 0, idempotency_key="old")
    clock.now += 86_000 * SECOND
    await service.create_item("NEW-1", "New", 1, 0, idempotency_key="new")
    clock.now += 1_000 * SECOND
    assert await service.purge_idempotency_keys() == 1
    assert [k for _, k in store.idempotency.rows] == ["new"]
    # a forgotten key is a new request again
    with pytest.raises(AlreadyExistsError):
        await service.create_item("OLD-1", "Old", 1, 0, idempotency_key="old")
