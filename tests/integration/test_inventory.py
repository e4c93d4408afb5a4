"""The inventory gRPC service through its real stub, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orderflow.errors import InvalidStateError, NotFoundError
from orderflow.inventory import domain, storage
from orderflow.inventory.domain import Reservation, ReservationState, StockMove
from orderflow.inventory.service import InventoryService
from orderflow.inventory.storage import SqlInventoryUnitOfWork
from orderflow.inventory.v1 import inventory_pb2 as pb
from orderflow.inventory.v1 import inventory_pb2_grpc as pb_grpc
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
from tests.system import Process, free_port

SERVICE = "orderflow.inventory.v1.InventoryService"

# -- helpers ------------------------------------------------------------------------------


async def counters(stub: pb_grpc.InventoryServiceStub, sku: str) -> tuple[int, int, int, int]:
    """(available, reserved, sold, received) of an item."""
    item = (await stub.GetItem(pb.GetItemRequest(sku=sku), timeout=T)).item
    assert item.available + item.reserved + item.sold == item.received
    assert min(item.available, item.reserved, item.sold) >= 0
    return item.available, item.reserved, item.sold, item.received


async def create(
    stub: pb_grpc.InventoryServiceStub, sku: str, stock: int = 10, price: int = 100
) -> pb.Item:
    request = pb.CreateItemRequest(sku=sku, name=f"Item {sku}", price=price, stock=stock)
    return (await stub.CreateItem(request, timeout=T)).item


def reserve_request(order_id: str, *lines: tuple[str, int]) -> pb.ReserveStockRequest:
    return pb.ReserveStockRequest(
        order_id=order_id, lines=[pb.StockLine(sku=s, quantity=q) for s, q in lines]
    )


async def reserve(
    stub: pb_grpc.InventoryServiceStub, order_id: str, *lines: tuple[str, int], timeout: float = T
) -> pb.ReserveStockResponse:
    return await stub.ReserveStock(reserve_request(order_id, *lines), timeout=timeout)


async def snapshot(stub: pb_grpc.InventoryServiceStub) -> list[pb.Item]:
    """Every item with its counters (to show that a refused call changed nothing)."""
    return list((await stub.ListItems(pb.ListItemsRequest(limit=100), timeout=T)).items)


@dataclass
class Inventory:
    stub: pb_grpc.InventoryServiceStub
    channel: grpc.aio.Channel
    url: str


@pytest.fixture
async def inv(serve: Serve, make_db_url: Callable[[str], Awaitable[str]]) -> Inventory:
    url = await make_db_url("inventory")
    channel = await serve("inventory", url)
    return Inventory(pb_grpc.InventoryServiceStub(channel), channel, url)


# -- catalog ------------------------------------------------------------------------------


async def test_create_get_and_list_with_cursor_paging(inv: Inventory) -> None:
    stub = inv.stub
    created = await create(stub, "sku-c", stock=7, price=1250)
    assert created == pb.Item(
        sku="sku-c",
        name="Item sku-c",
        price=1250,
        currency="USD",
        available=7,
        reserved=0,
        sold=0,
        received=7,
    )
    for sku in ("sku-e", "sku-a", "sku-d", "sku-b"):
        await create(stub, sku)
    assert (await stub.GetItem(pb.GetItemRequest(sku="sku-c"), timeout=T)).item == created

    pages: list[list[str]] = []
    cursor = ""
    while True:
        page = await stub.ListItems(pb.ListItemsRequest(limit=2, cursor=cursor), timeout=T)
        pages.append([item.sku for item in page.items])
        cursor = page.next_cursor
        if not cursor:
            break
        assert len(pages) < 10, "paging does not end"
    assert pages == [["sku-a", "sku-b"], ["sku-c", "sku-d"], ["sku-e"]]

    everything = await stub.ListItems(pb.ListItemsRequest(), timeout=T)
    assert [i.sku for i in everything.items] == ["sku-a", "sku-b", "sku-c", "sku-d", "sku-e"]
    assert everything.next_cursor == ""


async def test_list_of_an_empty_catalog_and_exact_page(inv: Inventory) -> None:
    empty = await inv.stub.ListItems(pb.ListItemsRequest(limit=2), timeout=T)
    assert list(empty.items) == [] and empty.next_cursor == ""
    await create(inv.stub, "a")
    await create(inv.stub, "b")
    page = await inv.stub.ListItems(pb.ListItemsRequest(limit=2), timeout=T)
    assert [i.sku for i in page.items] == ["a", "b"]
    assert page.next_cursor == ""


async def test_update_name_price_and_restock(inv: Inventory) -> None:
    stub = inv.stub
    await create(stub, "mug", stock=5, price=100)
    await reserve(stub, "o-1", ("mug", 2))

    renamed = await stub.UpdateItem(pb.UpdateItemRequest(sku="mug", name="  Big mug "), timeout=T)
    assert (renamed.item.name, renamed.item.price) == ("Big mug", 100)

    repriced = await stub.UpdateItem(pb.UpdateItemRequest(sku="mug", price=0), timeout=T)
    assert (repriced.item.name, repriced.item.price) == ("Big mug", 0)

    restocked = await stub.UpdateItem(pb.UpdateItemRequest(sku="mug", restock=10), timeout=T)
    assert (restocked.item.available, restocked.item.reserved) == (13, 2)
    assert (restocked.item.sold, restocked.item.received) == (0, 15)

    both = await stub.UpdateItem(
        pb.UpdateItemRequest(sku="mug", name="Cup", price=300, restock=1), timeout=T
    )
    assert (both.item.name, both.item.price, both.item.received) == ("Cup", 300, 16)
    assert await counters(stub, "mug") == (14, 2, 0, 16)


async def test_update_of_an_unknown_item_is_not_found(inv: Inventory) -> None:
    await fails(
        inv.stub.UpdateItem(pb.UpdateItemRequest(sku="ghost", name="x"), timeout=T),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
    )


async def test_duplicate_create_already_exists_and_keeps_the_first(inv: Inventory) -> None:
    first = await create(inv.stub, "dup", stock=3, price=10)
    await fails(
        inv.stub.CreateItem(
            pb.CreateItemRequest(sku="dup", name="other", price=99, stock=99), timeout=T
        ),
        grpc.StatusCode.ALREADY_EXISTS,
        "ALREADY_EXISTS",
    )
    assert (await inv.stub.GetItem(pb.GetItemRequest(sku="dup"), timeout=T)).item == first


async def test_get_unknown_is_not_found(inv: Inventory) -> None:
    error = await fails(
        inv.stub.GetItem(pb.GetItemRequest(sku="nope"), timeout=T),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
    )
    assert error_details(error) == {"sku": "nope"}


# -- reservations: all or none ------------------------------------------------------------


async def test_reserve_all_lines_with_prices(inv: Inventory) -> None:
    stub = inv.stub
    await create(stub, "b", stock=5, price=200)
    await create(stub, "a", stock=5, price=100)
    response = await reserve(stub, "o-1", ("b", 2), ("a", 5))
    assert [(x.sku, x.quantity, x.unit_price) for x in response.lines] == [
        ("a", 5, 100),
        ("b", 2, 200),
    ]
    assert response.currency == "USD"
    assert response.state == pb.RESERVATION_STATE_RESERVED
    assert await counters(stub, "a") == (0, 5, 0, 5)
    assert await counters(stub, "b") == (3, 2, 0, 5)


async def test_reserve_is_all_or_none_when_a_line_is_out_of_stock(inv: Inventory) -> None:
    stub = inv.stub
    await create(stub, "a", stock=10)
    await create(stub, "b", stock=1)
    await create(stub, "c", stock=10)
    before = await snapshot(stub)
    error = await fails(
        reserve(stub, "o-1", ("a", 3), ("b", 2), ("c", 4)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "OUT_OF_STOCK",
    )
    assert error_details(error) == {"sku": "b", "requested": 2, "available": 1}
    assert await snapshot(stub) == before
    # Nothing was recorded for the order: it can still be reserved once stock allows it.
    await stub.UpdateItem(pb.UpdateItemRequest(sku="b", restock=1), timeout=T)
    ok = await reserve(stub, "o-1", ("a", 3), ("b", 2), ("c", 4))
    assert ok.state == pb.RESERVATION_STATE_RESERVED
    assert await counters(stub, "b") == (0, 2, 0, 2)


async def test_reserve_with_an_unknown_sku_changes_nothing(inv: Inventory) -> None:
    stub = inv.stub
    await create(stub, "a", stock=10)
    before = await snapshot(stub)
    error = await fails(
        reserve(stub, "o-1", ("a", 1), ("zz-unknown", 1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNKNOWN_SKU",
    )
    assert "zz-unknown" in error.details()
    assert error_details(error) == {"skus": ["zz-unknown"]}
    assert await snapshot(stub) == before
    # No reservation or tombstone was left: the order can still reserve.
    await reserve(stub, "o-1", ("a", 1))
    assert await counters(stub, "a") == (9, 1, 0, 10)


# -- idempotency and tombstones -----------------------------------------------------------


async def test_reserve_three_times_has_the_effect_of_once(inv: Inventory) -> None:
    stub = inv.stub
    await create(stub, "a", stock=10, price=7)
    responses = [await reserve(stub, "o-1", ("a", 3)) for _ in range(3)]
    assert responses[0] == responses[1] == responses[2]
    assert await counters(stub, "a") == (7, 3, 0, 10)
    # A repeat with different lines still returns the first result.
    again = await reserve(stub, "o-1", ("a", 5))
    assert again == responses[0]
    assert await counters(stub, "a") == (7, 3, 0, 10)


async def test_release_three_times_has_the_effect_of_once(inv: Inventory) -> None:
    stub = inv.stub
    await create(stub, "a", stock=10)
    await reserve(stub, "o-1", ("a", 4))
    for _ in range(3):
        r = await stub.ReleaseStock(pb.ReleaseStockRequest(order_id="o-1"), timeout=T)
        assert r.state == pb.RESERVATION_STATE_RELEASED
    assert await counters(stub, "a") == (10, 0, 0, 10)


async def test_commit_three_times_has_the_effect_of_once(inv: Inventory) -> None:
    stub = inv.stub
    await create(stub, "a", stock=10)
    await create(stub, "b", stock=10)
    await reserve(stub, "o-1", ("a", 4), ("b", 1))
    for _ in range(3):
        r = await stub.CommitStock(pb.CommitStockRequest(order_id="o-1"), timeout=T)
        assert r.state == pb.RESERVATION_STATE_COMMITTED
    assert await counters(stub, "a") == (6, 0, 4, 10)
    assert await counters(stub, "b") == (9, 0, 1, 10)
    # Reserve after commit returns the (committed) reservation and moves nothing.
    again = await reserve(stub, "o-1", ("a", 4), ("b", 1))
    assert again.state == pb.RESERVATION_STATE_COMMITTED
    assert await counters(stub, "a") == (6, 0, 4, 10)


async def test_return_of_a_committed_order_three_times_puts_sold_back(inv: Inventory) -> None:
    stub = inv.stub
    await create(stub, "a", stock=10)
    await reserve(stub, "o-1", ("a", 4))
    await stub.CommitStock(pb.CommitStockRequest(order_id="o-1"), timeout=T)
    assert await counters(stub, "a") == (6, 0, 4, 10)
    for _ in range(3):
        r = await stub.ReturnStock(pb.ReturnStockRequest(order_id="o-1"), timeout=T)
        assert r.state == pb.RESERVATION_STATE_RETURNED
    assert await counters(stub, "a") == (10, 0, 0, 10)
    # Returned is final: a late Reserve is refused, a Commit is an invalid transition.
    await fails(reserve(stub, "o-1", ("a", 1)), grpc.StatusCode.ABORTED, "ALREADY_COMPENSATED")
    await fails(
        stub.CommitStock(pb.CommitStockRequest(order_id="o-1"), timeout=T),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE",
    )
    assert await counters(stub, "a") == (10, 0, 0, 10)


async def test_return_of_a_reserved_order_gives_reserved_back(inv: Inventory) -> None:
    stub = inv.stub
    await create(stub, "a", stock=10)
    await reserve(stub, "o-1", ("a", 4))
    r = await stub.ReturnStock(pb.ReturnStockRequest(order_id="o-1"), timeout=T)
    assert r.state == pb.RESERVATION_STATE_RETURNED
    assert await counters(stub, "a") == (10, 0, 0, 10)


async def test_release_before_reserve_leaves_a_tombstone(inv: Inventory) -> None:
    stub = inv.stub
    await create(stub, "a", stock=10)
    for _ in range(2):
        r = await stub.ReleaseStock(pb.ReleaseStockRequest(order_id="late"), timeout=T)
        assert r.state == pb.RESERVATION_STATE_RELEASED
    error = await fails(
        reserve(stub, "late", ("a", 1)), grpc.StatusCode.ABORTED, "ALREADY_COMPENSATED"
    )
    assert error_details(error) == {"order_id": "late", "state": "RELEASED"}
    assert await counters(stub, "a") == (10, 0, 0, 10)
    # A Return on the tombstone is a no-op that reports it.
    r2 = await stub.ReturnStock(pb.ReturnStockRequest(order_id="late"), timeout=T)
    assert r2.state == pb.RESERVATION_STATE_RELEASED


async def test_return_before_reserve_leaves_a_tombstone(inv: Inventory) -> None:
    stub = inv.stub
    await create(stub, "a", stock=10)
    r = await stub.ReturnStock(pb.ReturnStockRequest(order_id="late"), timeout=T)
    assert r.state == pb.RESERVATION_STATE_RETURNED
    await fails(reserve(stub, "late", ("a", 1)), grpc.StatusCode.ABORTED, "ALREADY_COMPENSATED")
    assert await counters(stub, "a") == (10, 0, 0, 10)


async def test_reserve_after_release_is_refused(inv: Inventory) -> None:
    stub = inv.stub
    await create(stub, "a", stock=10)
    await reserve(stub, "o-1", ("a", 2))
    await stub.ReleaseStock(pb.ReleaseStockRequest(order_id="o-1"), timeout=T)
    await fails(reserve(stub, "o-1", ("a", 2)), grpc.StatusCode.ABORTED, "ALREADY_COMPENSATED")
    assert await counters(stub, "a") == (10, 0, 0, 10)


async def test_commit_after_release_is_an_invalid_state(inv: Inventory) -> None:
    stub = inv.stub
    await create(stub, "a", stock=10)
    await reserve(stub, "o-1", ("a", 2))
    await stub.ReleaseStock(pb.ReleaseStockRequest(order_id="o-1"), timeout=T)
    error = await fails(
        stub.CommitStock(pb.CommitStockRequest(order_id="o-1"), timeout=T),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE",
    )
    assert error_details(error) == {"order_id": "o-1", "state": "RELEASED"}
    assert await counters(stub, "a") == (10, 0, 0, 10)


async def test_release_after_commit_is_an_invalid_state(inv: Inventory) -> None:
    stub = inv.stub
    await create(stub, "a", stock=10)
    await reserve(stub, "o-1", ("a", 2))
    await stub.CommitStock(pb.CommitStockRequest(order_id="o-1"), timeout=T)
    await fails(
        stub.ReleaseStock(pb.ReleaseStockRequest(order_id="o-1"), timeout=T),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_STATE",
    )
    assert await counters(stub, "a") == (8, 0, 2, 10)


async def test_commit_of_an_unknown_order_is_not_found(inv: Inventory) -> None:
    await fails(
        inv.stub.CommitStock(pb.CommitStockRequest(order_id="ghost"), timeout=T),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
    )
    # It left no tombstone: the order can still be reserved and committed.
    await create(inv.stub, "a", stock=1)
    await reserve(inv.stub, "ghost", ("a", 1))
    r = await inv.stub.CommitStock(pb.CommitStockRequest(order_id="ghost"), timeout=T)
    assert r.state == pb.RESERVATION_STATE_COMMITTED


# -- bad input ----------------------------------------------------------------------------

LONG = "x" * 65
TOO_MANY_LINES = [(f"s{i}", 1) for i in range(101)]

BAD_CALLS: list[tuple[str, str, Any]] = [
    ("create empty sku", "CreateItem", pb.CreateItemRequest(sku="", name="n", price=1, stock=1)),
    ("create long sku", "CreateItem", pb.CreateItemRequest(sku=LONG, name="n", price=1)),
    ("create sku blank", "CreateItem", pb.CreateItemRequest(sku="a b", name="n", price=1)),
    ("create long name", "CreateItem", pb.CreateItemRequest(sku="new", name="n" * 201)),
    ("create blank name", "CreateItem", pb.CreateItemRequest(sku="new", name="  ", price=1)),
    ("create neg price", "CreateItem", pb.CreateItemRequest(sku="new", name="n", price=-1)),
    ("create huge price", "CreateItem", pb.CreateItemRequest(sku="new", name="n", price=10**13)),
    ("create neg stock", "CreateItem", pb.CreateItemRequest(sku="new", name="n", stock=-1)),
    ("get empty sku", "GetItem", pb.GetItemRequest(sku="")),
    ("get long sku", "GetItem", pb.GetItemRequest(sku=LONG)),
    ("list neg limit", "ListItems", pb.ListItemsRequest(limit=-1)),
    ("list big limit", "ListItems", pb.ListItemsRequest(limit=101)),
    ("list bad cursor", "ListItems", pb.ListItemsRequest(cursor="a")),
    ("update nothing", "UpdateItem", pb.UpdateItemRequest(sku="a")),
    ("update long sku", "UpdateItem", pb.UpdateItemRequest(sku=LONG, name="n")),
    ("update long name", "UpdateItem", pb.UpdateItemRequest(sku="a", name="n" * 201)),
    ("update blank name", "UpdateItem", pb.UpdateItemRequest(sku="a", name="")),
    ("update neg price", "UpdateItem", pb.UpdateItemRequest(sku="a", price=-1)),
    ("update zero restock", "UpdateItem", pb.UpdateItemRequest(sku="a", restock=0)),
    ("update neg restock", "UpdateItem", pb.UpdateItemRequest(sku="a", restock=-3)),
    ("reserve no lines", "ReserveStock", reserve_request("o")),
    ("reserve qty 0", "ReserveStock", reserve_request("o", ("a", 0))),
    ("reserve qty -1", "ReserveStock", reserve_request("o", ("a", -1))),
    ("reserve qty 1e6", "ReserveStock", reserve_request("o", ("a", 10**6))),
    ("reserve dup skus", "ReserveStock", reserve_request("o", ("a", 1), ("a", 1))),
    ("reserve long sku", "ReserveStock", reserve_request("o", (LONG, 1))),
    ("reserve empty id", "ReserveStock", reserve_request("", ("a", 1))),
    ("reserve long id", "ReserveStock", reserve_request(LONG, ("a", 1))),
    ("reserve 101 lines", "ReserveStock", reserve_request("o", *TOO_MANY_LINES)),
    ("release empty id", "ReleaseStock", pb.ReleaseStockRequest(order_id="")),
    ("release long id", "ReleaseStock", pb.ReleaseStockRequest(order_id=LONG)),
    ("commit empty id", "CommitStock", pb.CommitStockRequest(order_id="")),
    ("commit long id", "CommitStock", pb.CommitStockRequest(order_id=LONG)),
    ("return empty id", "ReturnStock", pb.ReturnStockRequest(order_id="")),
    ("return long id", "ReturnStock", pb.ReturnStockRequest(order_id=LONG)),
    ("return padded id", "ReturnStock", pb.ReturnStockRequest(order_id=" padded ")),
]


async def test_bad_input_on_every_rpc_is_refused_and_changes_nothing(inv: Inventory) -> None:
    stub = inv.stub
    await create(stub, "a", stock=10, price=5)
    await reserve(stub, "o-held", ("a", 2))
    before = await snapshot(stub)
    for label, method, request in BAD_CALLS:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await getattr(stub, method)(request, timeout=T)
        error = info.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (label, error.details())
        assert error_code(error) == "INVALID_ARGUMENT", label
        assert error.details(), label
        assert error_details(error).get("field"), label
    assert await snapshot(stub) == before
    # None of the refused order ids left a reservation or tombstone behind.
    for order_id in ("o", "o-held"):
        r = await stub.ReleaseStock(pb.ReleaseStockRequest(order_id=order_id), timeout=T)
        assert r.state == pb.RESERVATION_STATE_RELEASED
    await reserve(stub, "o-fresh", ("a", 1))
    assert await counters(stub, "a") == (9, 1, 0, 10)


# -- concurrency --------------------------------------------------------------------------

N_ORDERS = 500
N_STOCK = 100


async def _reserve_storm(stubs: list[pb_grpc.InventoryServiceStub], sku: str) -> list[str]:
    """N_ORDERS concurrent one-unit reservations spread over stubs; exactly N_STOCK win."""
    results = await asyncio.gather(
        *(
            reserve(stubs[i % len(stubs)], f"order-{i:04}", (sku, 1), timeout=60)
            for i in range(N_ORDERS)
        ),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, pb.ReserveStockResponse)]
    winners = [
        f"order-{i:04}" for i, r in enumerate(results) if isinstance(r, pb.ReserveStockResponse)
    ]
    lost = [r for r in results if not isinstance(r, pb.ReserveStockResponse)]
    unexpected = [
        r
        for r in lost
        if not (
            isinstance(r, grpc.aio.AioRpcError)
            and r.code() == grpc.StatusCode.FAILED_PRECONDITION
            and error_code(r) == "OUT_OF_STOCK"
        )
    ]
    assert unexpected == [], unexpected[:3]
    assert len(won) == N_STOCK
    assert len(lost) == N_ORDERS - N_STOCK
    assert all(r.state == pb.RESERVATION_STATE_RESERVED for r in won)
    for stub in stubs:
        assert await counters(stub, sku) == (0, N_STOCK, 0, N_STOCK)
    return winners


async def test_concurrent_reservations_never_oversell(inv: Inventory) -> None:
    await create(inv.stub, "hot", stock=N_STOCK)
    await _reserve_storm([inv.stub], "hot")


def _service_env(port: int, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERFLOW_")}
    env.update(
        {
            "ORDERFLOW_LOG_FORMAT": "json",
            "ORDERFLOW_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            "ORDERFLOW_INVENTORY_PORT": str(port),
            "ORDERFLOW_INVENTORY_DATABASE_URL": url,
        }
    )
    return env


async def _wait_serving(channel: grpc.aio.Channel, timeout: float = 20.0) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            for name in ("", SERVICE):
                r = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=2)
                last = r.status
                if r.status != health_pb2.HealthCheckResponse.SERVING:
                    break
            else:
                return
        except grpc.aio.AioRpcError as exc:
            last = exc.code()
        await asyncio.sleep(0.1)
    raise TimeoutError(f"inventory not SERVING after {timeout}s (last: {last})")


@pytest.mark.slow
async def test_two_processes_sharing_a_database_never_oversell(
    make_db_url: Callable[[str], Awaitable[str]], tmp_path: Path
) -> None:
    # Replicas of a service on one database: PostgreSQL, or one SQLite file, where the
    # two processes take turns at the file's write lock (ADR 8).
    url = await make_db_url("inventory2p")
    processes = []
    for n in range(2):
        port = free_port()
        argv = [sys.executable, "-m", "orderflow", "serve", "inventory"]
        processes.append(
            Process(f"inventory-{n}", argv, _service_env(port, url), port, tmp_path / f"{n}.log")
        )
    channels: list[grpc.aio.Channel] = []
    try:
        # Both start at once: their migrations race for the same database.
        await asyncio.gather(*(asyncio.to_thread(p.start) for p in processes))
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{p.port}") for p in processes]
        for channel in channels:
            await _wait_serving(channel)
        stubs = [pb_grpc.InventoryServiceStub(c) for c in channels]
        await create(stubs[0], "hot", stock=N_STOCK)
        winners = await _reserve_storm(stubs, "hot")
        # Both processes see every reservation: a repeat on either one is idempotent.
        for stub in stubs:
            again = await reserve(stub, winners[0], ("hot", 1))
            assert again.state == pb.RESERVATION_STATE_RESERVED
            assert [(x.sku, x.quantity) for x in again.lines] == [("hot", 1)]
        assert await counters(stubs[0], "hot") == (0, N_STOCK, 0, N_STOCK)
    finally:
        for channel in channels:
            await channel.close()
        for p in processes:
            await asyncio.to_thread(p.stop)
    for p in processes:
        assert p.popen is not None and p.popen.returncode is not None


# -- health, reflection, migrations -------------------------------------------------------


async def test_health_reports_serving(inv: Inventory) -> None:
    await assert_serving(inv.channel, SERVICE)
    health = health_pb2_grpc.HealthStub(inv.channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await health.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=T)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_the_services(inv: Inventory) -> None:
    assert {SERVICE, *STANDARD_SERVICES} <= await reflected_services(inv.channel)


async def test_migrations_match_the_models(inv: Inventory) -> None:
    # The service is running, so its migrations have been applied.
    await create(inv.stub, "a")
    assert await schema_diff(inv.url, storage.metadata) == []


# -- the domain's transition table, through fast path and lock, on the database -----------


@pytest.mark.parametrize(
    ("method", "transition"),
    [
        ("release", domain.RELEASE),
        ("commit_stock", domain.COMMIT_STOCK),
        ("return_stock", domain.RETURN_STOCK),
    ],
)
async def test_each_move_does_what_the_domain_table_says_in_every_state(
    make_db_url: Callable[[str], Awaitable[str]],
    method: str,
    transition: Transition[ReservationState, StockMove],
) -> None:
    """The one-statement fast path restates `outcome(fast_from) is MOVE` in SQL; with the
    locked fallback it must give, from every state, what Transition.outcome says."""
    database = await open_database(await make_db_url("inventory"), 2, "inventory", migrate=True)
    try:
        uow = functools.partial(SqlInventoryUnitOfWork, database)
        service = InventoryService(uow, currency="EUR")
        for state in [None, *ReservationState]:
            order_id = f"o-{state}"
            if state is not None:  # no lines: the move changes only the state
                async with uow() as seeding:
                    await seeding.reservations.add(Reservation(order_id, state, (), "EUR"), 1)
                    await seeding.commit()
            outcome = transition.outcome(state)
            if outcome is Outcome.INVALID:
                with pytest.raises(InvalidStateError):
                    await getattr(service, method)(order_id)
            elif outcome is Outcome.MISSING:
                with pytest.raises(NotFoundError):
                    await getattr(service, method)(order_id)
            else:
                expected = state if outcome is Outcome.DONE else transition.target
                assert await getattr(service, method)(order_id) == expected, state
            async with uow(readonly=True) as reading:
                stored = await reading.reservations.get(order_id)
            assert (stored and stored.state) == {
                Outcome.MOVE: transition.target,
                Outcome.TOMBSTONE: transition.target,
                Outcome.DONE: state,
                Outcome.INVALID: state,
                Outcome.MISSING: None,
            }[outcome], state
    finally:
        await database.dispose()


async def test_low_stock_lists_items_at_or_below_the_threshold_fewest_first(
    inv: Inventory,
) -> None:
    for sku, stock in (("plenty", 50), ("five", 5), ("two", 2), ("six", 6), ("none", 0)):
        await create(inv.stub, sku, stock=stock)
    response = await inv.stub.ListLowStockItems(pb.ListLowStockItemsRequest(), timeout=T)
    assert response.threshold == 5  # ORDERFLOW_INVENTORY_LOW_STOCK_THRESHOLD's default
    assert [(i.sku, i.available) for i in response.items] == [("none", 0), ("two", 2), ("five", 5)]
    assert not response.truncated
    two = await inv.stub.ListLowStockItems(pb.ListLowStockItemsRequest(limit=2), timeout=T)
    assert [i.sku for i in two.items] == ["none", "two"] and two.truncated
