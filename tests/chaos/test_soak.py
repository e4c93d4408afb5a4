"""Chaos soak: per-service mode with events on a JetStream of its own, on SQLite and on
PostgreSQL, the two systems soaked at the same time (each loads the other's machine, and CI
waits for one soak, not two). ~40 clients per system place orders (some with an
Idempotency-Key, replayed with the same body; some redeeming points), cancel confirmed ones
and make admin changes (restock, price, points, tier) for a bounded time, while processes
are SIGKILLed (and started again) or SIGSTOPped (and continued a few seconds later) every
5-15 s, the gateway with orders in flight among them. Once the faults stop and everything
has recovered, every invariant of DESIGN.md is checked against the databases
(tests/invariants.py), and what the clients were told is checked against what the services
did.

ORDERFLOW_CHAOS_SECONDS sets the length of the soak (120 by default; 30 is
enough for a first look), ORDERFLOW_CHAOS_CLIENTS the number of clients (40),
ORDERFLOW_CHAOS_SEED the random seed (a new one each run, printed with the figures; the
timing of replies and faults still differs from run to run).

Admin changes are matched to their effects by the services' own records: every PATCH of an
item names the item uniquely, so each item.changed event in inventory's outbox says which
request it came from; every points adjustment has a unique reason, kept in the ledger. A
request answered 2xx must have taken effect exactly once; one whose reply was lost at most
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from orderflow.registry import SERVICE_NAMES
from tests.conftest import pg_databases_sync
from tests.e2e.nats import NatsServer
from tests.invariants import describe, read_databases, unfinished, violations
from tests.system import System, per_service, start_ready

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

SOAK_SECONDS = float(os.environ.get("ORDERFLOW_CHAOS_SECONDS", "120"))
CLIENTS = int(os.environ.get("ORDERFLOW_CHAOS_CLIENTS", "40"))
SEED = os.environ.get("ORDERFLOW_CHAOS_SEED", "")
SKUS, CUSTOMERS = 8, 30
START_STOCK, START_POINTS = 300, 300
CONVERGE_SECONDS = 60.0
BACKENDS = ("sqlite", "postgres")
LOST = ("connection error", "timeout")
# Replies a correct system may give here: success, a refusal (out of stock, not enough
# points, an order another request holds), and 503 while a service is down or frozen.
ALLOWED_STATUSES = {200, 201, 409, 503, *LOST}
ORDER_ID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
# Set when a request of this client (each is its own task) got no reply.
LOST_REPLY: ContextVar[bool] = ContextVar("LOST_REPLY", default=False)

# Short budgets, leases and grace periods, so recovery converges within seconds.
FAST = {
    "ORDERFLOW_GATEWAY_REQUEST_TIMEOUT_SECONDS": "3",
    "ORDERFLOW_GATEWAY_RPC_TIMEOUT_SECONDS": "1",
    "ORDERFLOW_GATEWAY_LEASE_SECONDS": "4",
    "ORDERFLOW_GATEWAY_RECOVERY_INTERVAL_SECONDS": "0.5",
    "ORDERFLOW_ORDERS_EVENTS_GRACE_SECONDS": "5",
    "ORDERFLOW_EVENTS_RELAY_LEASE_SECONDS": "3",
    "ORDERFLOW_EVENTS_PUBLISH_TIMEOUT_SECONDS": "1",
    "ORDERFLOW_EVENTS_RELAY_MAX_BACKOFF_SECONDS": "1",
    "ORDERFLOW_EVENTS_ACK_WAIT_SECONDS": "3",
}


class Target(Protocol):
    """A process the chaos may hit: a System's Process, or the NatsServer."""

    popen: Any

    def start(self) -> None: ...

    @property
    def running(self) -> bool: ...


@dataclass
class Soak:
    backend: str
    system: System
    nats: NatsServer
    urls: dict[str, str]

    @property
    def targets(self) -> dict[str, Target]:
        return {**self.system.processes, "nats": self.nats}

    @property
    def log_paths(self) -> dict[str, Path]:
        paths = {name: p.log_path for name, p in self.system.processes.items()}
        return {**paths, "nats": self.nats.log_path}


@contextlib.contextmanager
def started(backend: str, workdir: Path) -> Iterator[Soak]:
    """Per-service mode on `backend` with a nats-server of its own, stopped afterwards."""
    workdir.mkdir()
    services = list(SERVICE_NAMES)
    nats = NatsServer(workdir)
    nats.start()
    drop: Callable[[], None] = lambda: None  # noqa: E731
    try:
        if backend == "sqlite":
            urls = {name: f"sqlite+aiosqlite:///{workdir}/{name}.db" for name in services}
        else:
            urls, drop = pg_databases_sync(services)
        system = per_service(workdir, urls, {**FAST, "ORDERFLOW_NATS_URL": nats.url})
        try:
            yield Soak(backend, start_ready(system), nats, urls)
        finally:
            frozen: list[Target] = [*system.processes.values(), nats]  # after a failed soak
            for proc in frozen:
                if proc.running and proc.popen is not None:
                    os.kill(proc.popen.pid, signal.SIGCONT)
            system.stop()
    finally:
        drop()
        nats.stop()


@pytest.fixture
def soaks(tmp_path: Path) -> Iterator[list[Soak]]:
    """Both backends at once: each soak is its own system, and the two together load the
    machine harder than either alone, in half the time."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(started(b, tmp_path / b)) for b in BACKENDS]


@dataclass
class Placement:
    """One POST /orders and what came back (status: HTTP code, or how it was lost)."""

    body: dict[str, Any]
    key: str | None
    replay: bool
    status: int | str = ""
    code: str = ""  # the error code of a refusal
    order_id: str | None = None
    order_status: str = ""


@dataclass
class AdminCall:
    """A restock (item name tags it) or points adjustment (reason tags it)."""

    target: str  # sku or customer
    amount: int
    tag: str
    status: int | str = ""


@dataclass
class Record:
    rng: random.Random
    statuses: Counter[tuple[str, int | str, str]] = field(default_factory=Counter)
    placements: list[Placement] = field(default_factory=list)
    keyed: list[Placement] = field(default_factory=list)  # first request of each key
    confirmed: list[str] = field(default_factory=list)  # cancel candidates
    cancel_asked: set[str] = field(default_factory=set)
    cancelled: set[str] = field(default_factory=set)  # a cancel answered 200
    restocks: list[AdminCall] = field(default_factory=list)
    item_names: set[str] = field(default_factory=set)  # every name a PATCH gave an item
    adjustments: list[AdminCall] = field(default_factory=list)
    faults: Counter[tuple[str, str]] = field(default_factory=Counter)
    gateway_kills: list[int] = field(default_factory=list)  # orders in flight at each
    crashed: list[str] = field(default_factory=list)
    in_flight: int = 0

    async def call(
        self, action: str, send: Awaitable[httpx.Response]
    ) -> tuple[int | str, dict[str, Any]]:
        """Send a request; (status, JSON body), the status saying how a reply was lost."""
        try:
            response = await send
        except httpx.TimeoutException:
            status: int | str = "timeout"
            body: dict[str, Any] = {}
        except httpx.TransportError:
            status, body = "connection error", {}
        else:
            status = response.status_code
            try:
                body = response.json()
            except ValueError:
                body = {"unparsed": response.text[:200]}
        code = body.get("error", {}).get("code", "") if isinstance(body, dict) else ""
        if status in LOST:
            LOST_REPLY.set(True)
        self.statuses[(action, status, code)] += 1
        return status, body


def _tag(prefix: str) -> str:
    return f"{prefix} {uuid.uuid4().hex[:12]}"


async def place(api: httpx.AsyncClient, rec: Record, placement: Placement) -> None:
    headers = {"Idempotency-Key": placement.key} if placement.key else {}
    action = "replay" if placement.replay else ("place keyed" if placement.key else "place")
    rec.in_flight += 1
    try:
        status, body = await rec.call(
            action, api.post("/api/v1/orders", json=placement.body, headers=headers)
        )
    finally:
        rec.in_flight -= 1
    placement.status = status
    rec.placements.append(placement)
    if status == 201:
        placement.order_id, placement.order_status = body["id"], body["status"]
        if body["status"] == "CONFIRMED" and not placement.replay:
            rec.confirmed.append(body["id"])
    elif "error" in body:
        placement.code = body["error"]["code"]
        details = body["error"].get("details") or {}
        placement.order_id = details.get("order_id")
        placement.order_status = details.get("status", "")


def order_body(rec: Record, skus: list[str], customers: list[str]) -> dict[str, Any]:
    rng = rec.rng
    return {
        "customer_id": rng.choice(customers),
        "items": [
            {"sku": sku, "quantity": rng.randint(1, 3)}
            for sku in rng.sample(skus, rng.randint(1, 3))
        ],
        "redeem_points": rng.choice([0, 0, 0, 10, 25, 60]),
    }


async def admin(api: httpx.AsyncClient, rec: Record, skus: list[str], customers: list[str]) -> None:
    rng = rec.rng
    kind = rng.choice(["restock", "price", "points", "tier"])
    if kind in ("restock", "price"):
        sku = rng.choice(skus)
        name = _tag(f"{sku} {kind}")
        rec.item_names.add(name)
        patch: dict[str, Any] = {"name": name}
        if kind == "restock":
            call = AdminCall(sku, rng.randint(5, 40), name)
            rec.restocks.append(call)
            patch["restock"] = call.amount
        else:
            patch["price"] = rng.randint(500, 3000)
        status, _ = await rec.call(kind, api.patch(f"/api/v1/items/{sku}", json=patch))
        if kind == "restock":
            call.status = status
    elif kind == "points":
        call = AdminCall(rng.choice(customers), rng.choice([5, 10, 40, -5, -20]), _tag("chaos"))
        rec.adjustments.append(call)
        call.status, _ = await rec.call(
            kind,
            api.post(
                f"/api/v1/customers/{call.target}/loyalty/points",
                json={"delta": call.amount, "reason": call.tag},
            ),
        )
    else:
        tier = rng.choice(["standard", "silver", "gold"])
        customer = rng.choice(customers)
        await rec.call(kind, api.put(f"/api/v1/customers/{customer}/loyalty", json={"tier": tier}))


async def client(
    api: httpx.AsyncClient, rec: Record, deadline: float, skus: list[str], customers: list[str]
) -> None:
    rng = rec.rng
    while time.monotonic() < deadline:
        roll = rng.random()
        if roll < 0.45:
            await place(api, rec, Placement(order_body(rec, skus, customers), None, False))
        elif roll < 0.65:
            first = Placement(order_body(rec, skus, customers), f"key-{uuid.uuid4().hex}", False)
            rec.keyed.append(first)
            await place(api, rec, first)
            if rng.random() < 0.3:
                await place(api, rec, Placement(first.body, first.key, True))
        elif roll < 0.75 and rec.keyed:
            earlier = rng.choice(rec.keyed)
            await place(api, rec, Placement(earlier.body, earlier.key, True))
        elif roll < 0.85 and rec.confirmed:
            order_id = rng.choice(rec.confirmed)
            rec.cancel_asked.add(order_id)
            status, body = await rec.call("cancel", api.post(f"/api/v1/orders/{order_id}/cancel"))
            if status == 200:
                assert body["status"] == "CANCELLED", body
                rec.cancelled.add(order_id)
        else:
            await admin(api, rec, skus, customers)
        if LOST_REPLY.get():  # the gateway is down or frozen: back off as a client would
            LOST_REPLY.set(False)
            await asyncio.sleep(rng.uniform(0.1, 0.5))


async def restart_crashed(soak: Soak, rec: Record) -> None:
    """A process that exited though no fault killed it crashed: note it, start it again."""
    for name, proc in soak.targets.items():
        if not proc.running:
            code = proc.popen.poll() if proc.popen is not None else None
            rec.crashed.append(f"{name} (exit code {code})")
            await asyncio.to_thread(proc.start)


async def chaos(soak: Soak, rec: Record, deadline: float) -> None:
    """Every 5-15 s, SIGKILL (then start again) or SIGSTOP (then SIGCONT) a process; the
    first fault kills the gateway, with orders in flight. Processes are taken in rounds, each
    a shuffle of all of them, so that every one is hit in a soak of two minutes."""
    rng = random.Random(rec.rng.random())
    targets = soak.targets
    schedule = [("gateway", "SIGKILL")]
    await asyncio.sleep(3)
    while time.monotonic() < deadline:
        await restart_crashed(soak, rec)
        if not schedule:
            schedule = [(n, rng.choice(["SIGKILL", "SIGSTOP"])) for n in targets]
            rng.shuffle(schedule)
        name, kind = schedule.pop(0)
        proc = targets[name]
        pid = proc.popen.pid
        if kind == "SIGKILL":
            if name == "gateway":
                rec.gateway_kills.append(rec.in_flight)
            os.kill(pid, signal.SIGKILL)
            await asyncio.to_thread(proc.popen.wait)
            await asyncio.sleep(rng.uniform(0.2, 2.0))
            await asyncio.to_thread(proc.start)
        else:
            os.kill(pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(rng.uniform(2.0, 5.0))
            finally:
                os.kill(pid, signal.SIGCONT)
        rec.faults[(kind, name)] += 1
        await asyncio.sleep(min(rng.uniform(5, 15), max(0.0, deadline - time.monotonic())))


async def setup(api: httpx.AsyncClient, rec: Record) -> tuple[list[str], list[str], str]:
    """SKUS items of START_STOCK, CUSTOMERS accounts of START_POINTS, and a probe item no
    client orders (to show that ordering works once the faults are over)."""
    skus = [f"SKU-{i}-{uuid.uuid4().hex[:6]}" for i in range(SKUS + 1)]
    for i, sku in enumerate(skus):
        item = {"sku": sku, "name": f"Item {sku}", "price": 500 + 250 * i, "stock": START_STOCK}
        response = await api.post("/api/v1/items", json=item)
        assert response.status_code == 201, response.text
        rec.item_names.add(str(item["name"]))
    customers = [f"cust-{i}-{uuid.uuid4().hex[:6]}" for i in range(CUSTOMERS)]
    for i, customer in enumerate(customers):
        tier = ["standard", "silver", "gold"][i % 3]
        response = await api.put(f"/api/v1/customers/{customer}/loyalty", json={"tier": tier})
        assert response.status_code == 200, response.text
        call = AdminCall(customer, START_POINTS, _tag("setup"), 200)
        response = await api.post(
            f"/api/v1/customers/{customer}/loyalty/points",
            json={"delta": call.amount, "reason": call.tag},
        )
        assert response.status_code == 200, response.text
        rec.adjustments.append(call)
    return skus[:-1], customers, skus[-1]


async def item_changes(url: str) -> list[dict[str, Any]]:
    """Inventory's own record of its item changes: the item.changed events in its outbox."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT aggregate_id, payload FROM outbox"
                    " WHERE event_type = 'item.changed' ORDER BY seq"
                )
            )
            return [{"sku": r.aggregate_id, **json.loads(r.payload)} for r in rows]
    finally:
        await engine.dispose()


def client_violations(
    rec: Record, snapshot: Any, changes: list[dict[str, Any]], skus: list[str]
) -> list[str]:
    """What the clients were told, against what the databases hold."""
    out = []
    orders = {o["id"]: o for o in snapshot["orders"]}
    for (action, status, code), n in sorted(rec.statuses.items(), key=str):
        if status not in ALLOWED_STATUSES:
            out.append(f"{n} x HTTP {status} {code} to {action}")

    # Every 201 is an order that is CONFIRMED, or CANCELLED because a client asked.
    for p in rec.placements:
        if p.status != 201:
            continue
        order = orders.get(p.order_id or "")
        if order is None:
            out.append(f"201 for order {p.order_id}, which the orders service does not have")
        elif order["status"] == "CANCELLED" and p.order_id not in rec.cancel_asked:
            out.append(f"201 for order {p.order_id}, CANCELLED though no client cancelled it")
        elif order["status"] not in ("CONFIRMED", "CANCELLED"):
            out.append(f"201 for order {p.order_id}, which is {order['status']}")
    for order_id, order in orders.items():
        if order["status"] == "CANCELLED" and order_id not in rec.cancel_asked:
            out.append(f"order {order_id} CANCELLED, but no client asked")
    for order_id in rec.cancelled:
        if orders.get(order_id, {}).get("status") != "CANCELLED":
            out.append(f"cancel of {order_id} answered 200, but the order is not CANCELLED")

    # Idempotency: one order per key, every reply naming it, final replies all alike.
    by_key: dict[str, list[Placement]] = defaultdict(list)
    for p in rec.placements:
        if p.key:
            by_key[p.key].append(p)
    stored = {(o["customer_id"], o["idempotency_key"]): o for o in orders.values()}
    for key, replies in by_key.items():
        customer = replies[0].body["customer_id"]
        order = stored.get((customer, key))
        named = {p.order_id for p in replies if p.order_id}
        if named and (order is None or named != {order["id"]}):
            out.append(f"key {key}: replies name orders {named}, stored {order and order['id']}")
        final = {
            (p.status, p.code, p.order_id)
            for p in replies
            if p.status == 201 or p.order_status == "REJECTED"
        }
        if len(final) > 1:
            out.append(f"key {key}: replays answered differently: {sorted(final, key=str)}")

    # Restocks: received is the initial stock plus each restock that took effect, once.
    by_tag = Counter(c["name"] for c in changes if not c.get("created"))
    for name in by_tag:
        if name not in rec.item_names:
            out.append(f"item changed to name {name!r}, which no request gave")
    received = {i["sku"]: int(i["received"]) for i in snapshot["items"]}
    expected = Counter({sku: START_STOCK for sku in received})
    for call in rec.restocks:
        times = by_tag[call.tag]
        expected[call.target] += times * call.amount
        if times > 1:
            out.append(f"restock {call.tag!r} ({call.status}) took effect {times} times")
        if call.status == 200 and times == 0:
            out.append(f"restock {call.tag!r} answered 200 but did not take effect")
    for sku in received:
        if received[sku] != expected[sku]:
            out.append(f"{sku}: received {received[sku]}, restocks account for {expected[sku]}")

    # Points adjustments: each one in the ledger (found by its reason) at most once.
    adjusted = Counter(
        (e["customer_id"], e["reason"], int(e["delta"]))
        for e in snapshot["ledger"]
        if e["kind"] == "ADJUST"
    )
    asked = {(c.target, c.tag, c.amount): c for c in rec.adjustments}
    for entry, times in adjusted.items():
        request = asked.get(entry)
        if request is None:
            out.append(f"ledger adjustment {entry} that no request made")
        elif times > 1:
            out.append(f"adjustment {entry} ({request.status}) booked {times} times")
    for made, request in asked.items():
        if request.status == 200 and not adjusted[made]:
            out.append(f"adjustment {made} answered 200 but is not in the ledger")
    return out


def tracebacks(soak: Soak) -> list[str]:
    out = []
    for name, path in soak.log_paths.items():
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        hits = [line for line in lines if "Traceback" in line]
        if hits:
            out.append(f"{len(hits)} Traceback(s) in the {name} log, first: {hits[0][:1500]}")
    return out


def figures(rec: Record, snapshot: Any, soak: Soak, took: dict[str, float], seed: int) -> str:
    status_by_order = Counter(o["status"] for o in snapshot["orders"])
    lost = Counter(p.status for p in rec.placements if p.status in LOST)
    replayed = sum(1 for p in rec.placements if p.replay and p.order_id)
    lines = [
        f"chaos soak on {soak.backend}: {SOAK_SECONDS:.0f}s, {CLIENTS} clients, "
        f"ORDERFLOW_CHAOS_SEED={seed}",
        f"  order requests: {len(rec.placements)} "
        f"(keyed {len(rec.keyed)}, replays {sum(p.replay for p in rec.placements)}, "
        f"lost replies {dict(lost)})",
        f"  replays answered with an order: {replayed} (each the order its key first got)",
        f"  orders stored: {len(snapshot['orders'])} {dict(sorted(status_by_order.items()))}",
        f"  cancels asked for {len(rec.cancel_asked)} orders, answered 200 for "
        f"{len(rec.cancelled)}",
        f"  restocks {len(rec.restocks)}, points adjustments {len(rec.adjustments)}",
        f"  faults: {sum(rec.faults.values())} "
        + ", ".join(f"{k} {p}: {n}" for (k, p), n in sorted(rec.faults.items())),
        f"  orders in flight at each gateway kill: {rec.gateway_kills}",
        f"  recovery: ready {took['ready']:.1f}s, converged {took['converged']:.1f}s "
        "after the faults stopped",
        "  replies (action, status, code): count",
    ]
    for (action, status, code), n in sorted(rec.statuses.items(), key=str):
        lines.append(f"    {action:12} {status!s:17} {code:22} {n}")
    return "\n".join(lines)


@dataclass
class Outcome:
    report: str
    found: list[str]
    rows: str
    logs: str


async def run_soak(soak: Soak, seed: int, stream: int) -> Outcome:
    """Load and faults for SOAK_SECONDS, everything back, then every check; what it found.
    The run's choices come from `seed` and this soak's `stream` (one per backend)."""
    rec = Record(random.Random(seed * len(BACKENDS) + stream))
    limits = httpx.Limits(max_connections=CLIENTS + 10, max_keepalive_connections=CLIENTS + 10)
    async with httpx.AsyncClient(base_url=soak.system.base_url, timeout=20, limits=limits) as api:
        skus, customers, probe = await setup(api, rec)
        deadline = time.monotonic() + SOAK_SECONDS
        faults = asyncio.create_task(chaos(soak, rec, deadline))
        await asyncio.gather(*(client(api, rec, deadline, skus, customers) for _ in range(CLIENTS)))
        await faults
        stopped = time.monotonic()
        await restart_crashed(soak, rec)
        await asyncio.to_thread(soak.system.wait_ready, 60)
        took = {"ready": time.monotonic() - stopped}

        # Once everything is back, an order goes through without restarting anything.
        probe_order = Placement(
            {"customer_id": customers[0], "items": [{"sku": probe, "quantity": 1}]}, None, False
        )
        for _ in range(20):  # a service just started may still answer 503 for a moment
            await place(api, rec, probe_order)
            if probe_order.status not in (503, *LOST):
                break
            await asyncio.sleep(0.5)

    snapshot = await read_databases(soak.urls)
    while unfinished(snapshot) and time.monotonic() - stopped < CONVERGE_SECONDS:
        await asyncio.sleep(0.5)
        snapshot = await read_databases(soak.urls)
    took["converged"] = time.monotonic() - stopped
    changes = await item_changes(soak.urls["inventory"])

    found = violations(snapshot) + client_violations(rec, snapshot, changes, skus)
    if probe_order.status != 201:
        found.append(f"an order after recovery got {probe_order.status} {probe_order.code}")
    if not any(n > 0 for n in rec.gateway_kills):
        found.append(f"the gateway was never killed with orders in flight: {rec.gateway_kills}")
    found += [f"{name} exited by itself" for name in rec.crashed]
    found += tracebacks(soak)
    listed = "\n".join(found[:60])
    # The rows of the first orders named, in every service: how they came to be.
    named = list(dict.fromkeys(re.findall(ORDER_ID, listed)))[:5]
    rows = "\n".join(describe(snapshot, order_id) for order_id in named)
    logs = soak.system.logs() if found else ""
    return Outcome(figures(rec, snapshot, soak, took, seed), found, rows, logs)


@pytest.mark.postgres
async def test_chaos_soak_keeps_every_invariant(
    soaks: list[Soak], record_property: Callable[[str, object], None]
) -> None:
    seed = int(SEED) if SEED else random.randrange(1_000_000)
    outcomes = await asyncio.gather(*(run_soak(s, seed, i) for i, s in enumerate(soaks)))
    for outcome in outcomes:  # printed after the results (tests/conftest.py), pass or fail
        record_property("summary", outcome.report)
    failed = [
        f"{soak.backend}: {len(o.found)} invariant violation(s):\n"
        + "\n".join(o.found[:60])
        + f"\n{o.rows}\n{o.logs}"
        for soak, o in zip(soaks, outcomes, strict=True)
        if o.found
    ]
    assert not failed, "\n\n".join(failed)
