"""Idempotency keys of the admin RPCs (ADR 0023) through the real stubs, on SQLite and
PostgreSQL: a repeat has no second effect and gets the first reply, another request with
the key is refused, a live claim of another request is in progress, and an expired one is
taken over. Keys past their retention are purged."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

import grpc
import pytest
from sqlalchemy import insert

from orderflow.events.outbox import Outbox
from orderflow.inventory import storage as inventory_storage
from orderflow.inventory.service import InventoryService
from orderflow.inventory.v1 import inventory_pb2 as ipb
from orderflow.inventory.v1 import inventory_pb2_grpc as ipb_grpc
from orderflow.loyalty.v1 import loyalty_pb2 as lpb
from orderflow.loyalty.v1 import loyalty_pb2_grpc as lpb_grpc
from orderflow.platform.component import open_database
from orderflow.platform.db import now_us
from orderflow.platform.idempotency import keyed
from tests.integration.conftest import Serve
from tests.integration.grpc_checks import T, error_code, fails
from tests.integration.test_loyalty import check_ledger, db_rows

SECOND = 1_000_000


async def served(
    serve: Serve, make_db_url: Callable[[str], Awaitable[str]], service: str
) -> tuple[grpc.aio.Channel, str]:
    url = await make_db_url(service)
    return await serve(service, url), url


async def received(stub: ipb_grpc.InventoryServiceStub, sku: str) -> int:
    return (await stub.GetItem(ipb.GetItemRequest(sku=sku), timeout=T)).item.received


async def test_restock_and_create_with_a_key_happen_once(
    serve: Serve, make_db_url: Callable[[str], Awaitable[str]]
) -> None:
    channel, url = await served(serve, make_db_url, "inventory")
    stub = ipb_grpc.InventoryServiceStub(channel)
    create = ipb.CreateItemRequest(
        sku="MUG-1", name="Mug", price=1250, stock=10, idempotency_key="c-1", lease_owner="r1"
    )
    first = (await stub.CreateItem(create, timeout=T)).item
    create.lease_owner = "r2"  # another attempt of the request: its first reply
    assert (await stub.CreateItem(create, timeout=T)).item == first

    restock = ipb.UpdateItemRequest(
        sku="MUG-1", restock=1, idempotency_key="r-1", idempotency_scope="admin:a"
    )
    once = (await stub.UpdateItem(restock, timeout=T)).item
    await stub.UpdateItem(ipb.UpdateItemRequest(sku="MUG-1", price=999), timeout=T)
    assert (await stub.UpdateItem(restock, timeout=T)).item == once
    assert (once.received, once.price) == (11, 1250)
    assert await received(stub, "MUG-1") == 11

    restock.restock = 2
    await fails(
        stub.UpdateItem(restock, timeout=T),
        grpc.StatusCode.ALREADY_EXISTS,
        "IDEMPOTENCY_KEY_REUSED",
    )
    # another caller's key of the same text is another key
    restock.idempotency_scope = "admin:b"
    assert (await stub.UpdateItem(restock, timeout=T)).item.received == 13
    assert await db_rows(url, "SELECT COUNT(*) FROM idempotency_keys") == [(3,)]


async def test_a_claim_of_another_live_request_is_in_progress_an_expired_one_is_taken_over(
    serve: Serve, make_db_url: Callable[[str], Awaitable[str]]
) -> None:
    channel, url = await served(serve, make_db_url, "inventory")
    stub = ipb_grpc.InventoryServiceStub(channel)
    await stub.CreateItem(ipb.CreateItemRequest(sku="MUG-1", name="Mug", price=1), timeout=T)
    request = ipb.UpdateItemRequest(
        sku="MUG-1", restock=3, idempotency_key="k", idempotency_scope="s", lease_owner="mine"
    )
    claim = keyed("k", "s", "theirs", "UpdateItem", "MUG-1", name=None, price=None, restock=3)
    assert claim is not None
    database = await open_database(url, 1, "inventory", migrate=False)
    try:
        # Another request claimed the key (and is still running, or died just now).
        async with database.engine.begin() as conn:
            await conn.execute(
                insert(inventory_storage.idempotency_keys).values(
                    scope=claim.scope,
                    key=claim.key,
                    fingerprint=claim.fingerprint,
                    owner="theirs",
                    token="t" * 32,
                    lease_until_us=now_us() + 60 * SECOND,
                    result=None,
                    created_us=now_us(),
                )
            )
        await fails(
            stub.UpdateItem(request, timeout=T), grpc.StatusCode.ABORTED, "REQUEST_IN_PROGRESS"
        )
        assert await received(stub, "MUG-1") == 0
        # Its lease runs out: the next attempt takes the claim over, once.
        async with database.engine.begin() as conn:
            await conn.execute(
                inventory_storage.idempotency_keys.update().values(lease_until_us=now_us() - 1)
            )
        assert (await stub.UpdateItem(request, timeout=T)).item.received == 3
        request.lease_owner = "yet another"
        assert (await stub.UpdateItem(request, timeout=T)).item.received == 3
        assert await received(stub, "MUG-1") == 3
    finally:
        await database.dispose()


async def test_points_and_tier_with_a_key_happen_once(
    serve: Serve, make_db_url: Callable[[str], Awaitable[str]]
) -> None:
    channel, url = await served(serve, make_db_url, "loyalty")
    stub = lpb_grpc.LoyaltyServiceStub(channel)
    adjust = lpb.AdjustPointsRequest(
        customer_id="c-1", delta=7, reason="promo", idempotency_key="p", idempotency_scope="a"
    )
    replies = await asyncio.gather(
        *(stub.AdjustPoints(adjust, timeout=T) for _ in range(5)), return_exceptions=True
    )
    for reply in replies:
        if isinstance(reply, grpc.aio.AioRpcError):
            assert error_code(reply) == "REQUEST_IN_PROGRESS", reply
        else:
            assert not isinstance(reply, BaseException), reply
            assert reply.account.points == 7
    assert (await stub.AdjustPoints(adjust, timeout=T)).account.points == 7
    assert await check_ledger(url) == {"c-1": 7}
    assert await db_rows(url, "SELECT COUNT(*) FROM ledger") == [(1,)]

    tier = lpb.SetTierRequest(customer_id="c-1", tier="gold", idempotency_key="t")
    first = (await stub.SetTier(tier, timeout=T)).account
    await stub.SetTier(lpb.SetTierRequest(customer_id="c-1", tier="silver"), timeout=T)
    assert (await stub.SetTier(tier, timeout=T)).account == first
    assert first.tier == "gold"
    assert await db_rows(url, "SELECT tier FROM accounts") == [("silver",)]

    # A refusal is the answer to the request: the same again, though it would pass now.
    take = lpb.AdjustPointsRequest(customer_id="c-1", delta=-10, reason="fix", idempotency_key="n")
    await fails(stub.AdjustPoints(take, timeout=T), grpc.StatusCode.FAILED_PRECONDITION)
    await stub.AdjustPoints(lpb.AdjustPointsRequest(customer_id="c-1", delta=5, reason="r"))
    await fails(
        stub.AdjustPoints(take, timeout=T), grpc.StatusCode.FAILED_PRECONDITION, "NEGATIVE_BALANCE"
    )
    assert await check_ledger(url) == {"c-1": 12}


@pytest.mark.parametrize("service", ["inventory"])
async def test_keys_past_their_retention_are_purged(
    service: str, make_db_url: Callable[[str], Awaitable[str]]
) -> None:
    url = await make_db_url(service)
    database = await open_database(url, 2, service, migrate=True)
    clock = [now_us()]
    try:
        uow = functools.partial(
            inventory_storage.SqlInventoryUnitOfWork,
            database,
            Outbox(inventory_storage.outbox_tables),
        )
        inventory = InventoryService(
            uow,
            currency="USD",
            clock=lambda: clock[0],
            idempotency_retention_seconds=86_400,
        )
        await inventory.create_item("OLD-1", "Old", 1, 0, idempotency_key="old")
        clock[0] += 86_000 * SECOND
        await inventory.create_item("NEW-1", "New", 1, 0, idempotency_key="new")
        assert await inventory.purge_idempotency_keys() == 0
        clock[0] += 1_000 * SECOND
        assert await inventory.purge_idempotency_keys() == 1
        assert await db_rows(url, "SELECT key FROM idempotency_keys") == [("new",)]
    finally:
        await database.dispose()
