"""The invariants of DESIGN.md, checked against the services' databases directly.

`read_databases` takes a snapshot of what the three services store; `violations` lists
every way that snapshot breaks an invariant (empty: all hold). It looks at nothing but the
databases, so it holds for any workload once every order is finished; a test adds what
only its client knows (which replies it got, which admin calls it made).

1. Stock: available + reserved + sold == received per sku, no counter negative; reserved
   and sold are exactly the lines of the RESERVED and COMMITTED reservations.
2. Points: balance == sum of the ledger per customer, never negative; an order has at most
   one ledger entry of each kind.
3. Orders terminal and settled; a CONFIRMED order has a COMMITTED reservation of its lines
   and a COMMITTED loyalty application with its figures, and its ledger entries; a REJECTED
   or CANCELLED one holds no stock and no points (its entries sum to zero).
4. One order per (customer, Idempotency-Key).
And the events are through: every outbox row published, nothing parked.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.system import System

TERMINAL = {"CONFIRMED", "REJECTED", "CANCELLED"}
_QUERIES = {
    "orders": {
        "orders": "SELECT id, customer_id, status, settled, idempotency_key, lines,"
        " discount, points_redeemed, points_earned, total, failure_code, lease_owner,"
        " cancel_requested, version, created_us, updated_us FROM orders",
    },
    "inventory": {
        "items": "SELECT sku, available, reserved, sold, received FROM items",
        "reservations": "SELECT order_id, state, lines, created_us, updated_us FROM reservations",
    },
    "loyalty": {
        "accounts": "SELECT customer_id, points FROM accounts",
        "ledger": "SELECT customer_id, order_id, kind, delta, reason, created_us FROM ledger",
        "applications": "SELECT order_id, customer_id, state, discount, points_redeemed,"
        " total, points_earned, created_us, updated_us FROM applications",
    },
}
_EVENT_QUERIES = {
    "unpublished": "SELECT count(*) AS n FROM outbox WHERE published_us IS NULL",
    "parked": "SELECT count(*) AS n FROM inbox_parked",
}


@dataclass
class Snapshot:
    """Rows of each service's tables (as dicts), and per service its event backlog."""

    rows: dict[str, list[dict[str, Any]]]
    unpublished: dict[str, int]
    parked: dict[str, int]

    def __getitem__(self, table: str) -> list[dict[str, Any]]:
        return self.rows[table]


def database_urls(system: System) -> dict[str, str]:
    """service -> database URL of a per-service system, as its processes were given them."""
    return {
        name: system.processes[name].env[f"ORDERFLOW_{name.upper()}_DATABASE_URL"]
        for name in _QUERIES
    }


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


async def read_databases(urls: dict[str, str]) -> Snapshot:
    """Read every table the invariants need from the databases at urls (service -> URL)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    unpublished: dict[str, int] = {}
    parked: dict[str, int] = {}
    for service, queries in _QUERIES.items():
        engine = create_async_engine(urls[service])
        try:
            async with engine.connect() as conn:
                for table, sql in queries.items():
                    result = await conn.execute(text(sql))
                    rows[table] = [dict(r._mapping) for r in result]
                counts = {}
                for name, sql in _EVENT_QUERIES.items():
                    counts[name] = int((await conn.execute(text(sql))).scalar_one())
        finally:
            await engine.dispose()
        unpublished[service], parked[service] = counts["unpublished"], counts["parked"]
    for table in ("orders", "reservations"):
        for row in rows[table]:
            row["lines"] = _json(row["lines"])
    return Snapshot(rows, unpublished, parked)


def _lines(lines: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    return sorted((x["sku"], int(x["quantity"]), int(x["unit_price"])) for x in lines)


def describe(snapshot: Snapshot, order_id: str) -> str:
    """Every row about one order, in each service's database (to see how it came to be)."""
    found = [
        f"  {table}: {row}"
        for table, key in [
            ("orders", "id"),
            ("reservations", "order_id"),
            ("applications", "order_id"),
            ("ledger", "order_id"),
        ]
        for row in snapshot[table]
        if row[key] == order_id
    ]
    return f"order {order_id}:\n" + "\n".join(found)


def unfinished(snapshot: Snapshot) -> list[str]:
    """What still moves: orders not terminal or not settled, stock or points still held,
    events not yet published. Empty once the system has converged."""
    out = []
    pending = [o["id"] for o in snapshot["orders"] if o["status"] not in TERMINAL]
    unsettled = [o["id"] for o in snapshot["orders"] if not o["settled"]]
    reserved = [r["order_id"] for r in snapshot["reservations"] if r["state"] == "RESERVED"]
    applied = [a["order_id"] for a in snapshot["applications"] if a["state"] == "APPLIED"]
    for what, ids in [
        ("orders not terminal", pending),
        ("orders not settled", unsettled),
        ("reservations still RESERVED", reserved),
        ("loyalty applications still APPLIED", applied),
    ]:
        if ids:
            out.append(f"{len(ids)} {what}, e.g. {ids[:3]}")
    for service, n in snapshot.unpublished.items():
        if n:
            out.append(f"{n} events of {service} not yet published")
    return out


def violations(snapshot: Snapshot) -> list[str]:
    """Every broken invariant, each as one sentence naming the rows involved."""
    out = unfinished(snapshot)
    orders = {o["id"]: o for o in snapshot["orders"]}
    reservations = {r["order_id"]: r for r in snapshot["reservations"]}
    applications = {a["order_id"]: a for a in snapshot["applications"]}
    entries: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in snapshot["ledger"]:
        if entry["order_id"] is not None:
            entries[entry["order_id"]].append(entry)

    # 1. stock
    held: dict[str, Counter[str]] = {"RESERVED": Counter(), "COMMITTED": Counter()}
    for r in snapshot["reservations"]:
        if r["state"] in held:
            for line in r["lines"]:
                held[r["state"]][line["sku"]] += int(line["quantity"])
    for item in snapshot["items"]:
        sku, a, r, s, got = (item[k] for k in ("sku", "available", "reserved", "sold", "received"))
        if a + r + s != got:
            out.append(f"stock of {sku} not conserved: {a} + {r} + {s} != received {got}")
        if min(a, r, s) < 0:
            out.append(f"stock of {sku} negative: available {a}, reserved {r}, sold {s}")
        for counter, held_as, n in (("reserved", "RESERVED", r), ("sold", "COMMITTED", s)):
            if n != (want := held[held_as][sku]):
                out.append(f"{sku}: {counter} {n}, {held_as} reservations hold {want}")

    # 2. points
    ledger_sum: Counter[str] = Counter()
    for entry in snapshot["ledger"]:
        ledger_sum[entry["customer_id"]] += int(entry["delta"])
    balances = {a["customer_id"]: int(a["points"]) for a in snapshot["accounts"]}
    for customer in sorted(set(balances) | set(ledger_sum)):
        balance, total = balances.get(customer), ledger_sum[customer]
        if balance is None:
            out.append(f"ledger entries of {customer}, who has no account")
        elif balance != total:
            out.append(f"points of {customer} not conserved: balance {balance} != ledger {total}")
        elif balance < 0:
            out.append(f"points of {customer} negative: {balance}")
    for order_id, mine in entries.items():
        kinds = Counter(e["kind"] for e in mine)
        if any(n > 1 for n in kinds.values()):
            out.append(f"order {order_id} has ledger entries twice: {dict(kinds)}")
        if order_id not in orders:
            out.append(f"ledger entries for an order the orders service does not know: {order_id}")

    # 3. every order's effects as its status says
    for order_id in sorted(set(reservations) - set(orders)):
        out.append(f"reservation for an order the orders service does not know: {order_id}")
    for order_id in sorted(set(applications) - set(orders)):
        out.append(f"loyalty application for an unknown order: {order_id}")
    for order_id, order in orders.items():
        reservation = reservations.get(order_id)
        application = applications.get(order_id)
        booked = {e["kind"]: int(e["delta"]) for e in entries.get(order_id, []) if e["delta"]}
        if order["status"] == "CONFIRMED":
            if reservation is None or reservation["state"] != "COMMITTED":
                state = reservation and reservation["state"]
                out.append(f"CONFIRMED order {order_id}: reservation {state}, not COMMITTED")
            elif _lines(reservation["lines"]) != _lines(order["lines"]):
                out.append(f"CONFIRMED order {order_id}: reservation lines differ from order's")
            if application is None or application["state"] != "COMMITTED":
                state = application and application["state"]
                out.append(f"CONFIRMED order {order_id}: loyalty application {state}")
            else:
                for figure in ("discount", "points_redeemed", "total", "points_earned"):
                    if int(application[figure]) != int(order[figure]):
                        out.append(
                            f"CONFIRMED order {order_id}: {figure} {order[figure]} in orders,"
                            f" {application[figure]} in loyalty"
                        )
            expected = {}
            if order["points_redeemed"]:
                expected["REDEEM"] = -int(order["points_redeemed"])
            if order["points_earned"]:
                expected["EARN"] = int(order["points_earned"])
            if booked != expected:
                out.append(f"CONFIRMED order {order_id}: ledger {booked}, expected {expected}")
        elif order["status"] in ("REJECTED", "CANCELLED"):
            status = order["status"]
            if reservation is not None and reservation["state"] not in ("RELEASED", "RETURNED"):
                out.append(f"{status} order {order_id}: reservation {reservation['state']}")
            if application is not None and application["state"] not in ("CANCELLED", "REFUNDED"):
                out.append(f"{status} order {order_id}: loyalty application {application['state']}")
            if sum(booked.values()) != 0:
                out.append(f"{status} order {order_id}: ledger entries sum to non-zero: {booked}")

    # 4. idempotency
    keyed = Counter(
        (o["customer_id"], o["idempotency_key"]) for o in orders.values() if o["idempotency_key"]
    )
    for key, n in keyed.items():
        if n > 1:
            out.append(f"{n} orders for one (customer, Idempotency-Key): {key}")

    for service, n in snapshot.parked.items():
        if n:
            out.append(f"{n} events parked by {service}'s consumers")
    return out
