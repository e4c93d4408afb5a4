"""The compose deployments, live: images built with podman, containers started, orders placed.

multi.yaml (a container per component, PostgreSQL, NATS JetStream, inventory scaled to two
containers): an order placed through the published gateway port is CONFIRMED, and its
order.confirmed and order.settled events are on the broker (`orderflow events tail` in
the orders container); the gRPC services and the broker are published nowhere and cannot
be reached from outside their internal networks, nor the broker from the gateway; with the
loyalty container stopped, orders fail cleanly (503, REJECTED, stock released) while reads
work, and once it is started again orders succeed; two inventory containers sharing the
database never oversell. single.yaml (everything in one container): an order is CONFIRMED
and the published gRPC port answers.

Needs root, podman and podman-compose; skipped without them, except under CI=true.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.deploy.podman import (
    Deployment,
    PodmanSession,
    build_images,
    free_port,
    mint_token,
    podman_usable,
)

pytestmark = [pytest.mark.containers, pytest.mark.slow]

IN_CI = os.environ.get("CI", "").lower() == "true"
GRPC_PORTS = {"orders": 50051, "inventory": 50052, "loyalty": 50053}
PROJECT = f"oftest{os.getpid()}"


@pytest.fixture(scope="module")
def session() -> Iterator[PodmanSession]:
    reason = podman_usable()
    if reason:
        if IN_CI:
            pytest.fail(f"the container tests must run under CI=true: {reason}")
        pytest.skip(reason)
    with PodmanSession() as podman:
        build_images(podman)
        yield podman


@pytest.fixture(scope="module")
def secret() -> str:
    return secrets.token_hex(32)


@pytest.fixture(scope="module")
def multi(
    session: PodmanSession, secret: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    # Every request's calls logged at INFO: the tests count a service's calls in its log.
    env = {"ORDERFLOW_LOG_SAMPLE_RATE": "1"}
    deployment = Deployment(session, "multi.yaml", PROJECT, free_port(), secret, env=env)
    try:
        # Two inventory containers from the start, so that the gateway resolves both.
        deployment.up("--scale", "inventory=2")
        deployment.wait_ready()
        yield deployment
    finally:
        # What the containers said, for whoever reads a failure (pytest keeps tmp dirs).
        report = tmp_path_factory.mktemp("compose") / "multi.log"
        report.write_text(deployment.diagnostics(lines=200))
        print(f"container logs: {report}")
        left = deployment.down()
        assert not left, f"left behind: {left}"


def _headers(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


def _new_item(client: httpx.Client, admin: str, stock: int, price: int = 1000) -> str:
    sku = f"T-{uuid.uuid4().hex[:8].upper()}"
    reply = client.post(
        "/api/v1/items",
        json={"sku": sku, "name": "Test item", "price": price, "stock": stock},
        headers=_headers(admin),
    )
    assert reply.status_code == 201, reply.text
    return sku


def _order(
    client: httpx.Client, token: str, customer: str, sku: str, quantity: int = 1
) -> httpx.Response:
    return client.post(
        "/api/v1/orders",
        json={"customer_id": customer, "items": [{"sku": sku, "quantity": quantity}]},
        headers=_headers(token, **{"Idempotency-Key": uuid.uuid4().hex}),
    )


def _settled_item(client: httpx.Client, token: str, sku: str, timeout: float = 20) -> Any:
    """The item once no stock is left reserved (background commits and releases are done)."""
    deadline = time.monotonic() + timeout
    while True:
        item = client.get(f"/api/v1/items/{sku}", headers=_headers(token)).json()
        if item["reserved"] == 0 or time.monotonic() > deadline:
            return item
        time.sleep(0.5)


def test_an_order_through_the_published_gateway_is_confirmed(multi: Deployment) -> None:
    admin = multi.token(admin=True)
    customer = "c-deploy-1"
    with httpx.Client(base_url=multi.url, timeout=15) as client:
        sku = _new_item(client, admin, stock=10, price=2000)
        reply = client.put(
            f"/api/v1/customers/{customer}/loyalty", json={"tier": "gold"}, headers=_headers(admin)
        )
        assert reply.status_code == 200, reply.text
        token = multi.token(customer=customer)
        reply = _order(client, token, customer, sku, quantity=2)
        assert reply.status_code == 201, reply.text
        order = reply.json()
        assert order["status"] == "CONFIRMED"
        assert (order["subtotal"], order["discount"], order["total"]) == (4000, 400, 3600)
        again = client.get(f"/api/v1/orders/{order['id']}", headers=_headers(token))
        assert again.status_code == 200 and again.json()["status"] == "CONFIRMED"
        item = _settled_item(client, admin, sku)
        assert (item["available"], item["reserved"], item["sold"]) == (8, 0, 2)
        # Without a token, the API is closed.
        assert client.get("/api/v1/items").status_code == 401
        # The docs page's Swagger UI files are in the image (package data of the wheel).
        assert client.get("/docs").status_code == 200
        for asset, kinds in [
            ("swagger-ui-bundle.js", ("text/javascript", "application/javascript")),
            ("swagger-ui.css", ("text/css",)),
        ]:
            reply = client.get(f"/docs/assets/{asset}")
            assert reply.status_code == 200 and reply.headers["content-type"].startswith(kinds)


def _grpc_health(target: str) -> str:
    """SERVING, or the gRPC status of the failed call, for a health check from this host."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=3
            )
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_the_grpc_services_cannot_be_reached_from_outside(multi: Deployment) -> None:
    session = multi.session
    # Published nowhere: no container but the gateway has a port binding on the host.
    bindings = {}
    for name in multi.containers():
        ports = session.podman("port", name).stdout.strip()
        bindings[name] = ports
    published = {name for name, ports in bindings.items() if ports}
    assert published == {f"{PROJECT}_gateway_1"}, bindings
    # REST and the gateway's gRPC API, nothing else.
    assert sorted(
        line.rsplit(" ", 1)[-1] for line in bindings[f"{PROJECT}_gateway_1"].splitlines()
    ) == sorted([f"127.0.0.1:{multi.http_port}", multi.grpc_api]), bindings
    # A direct call from this host to the services' ports is refused (unless something
    # else of this machine happens to listen there, which is then not one of ours).
    for name, port in GRPC_PORTS.items():
        if not _listening(port):
            assert _grpc_health(f"127.0.0.1:{port}") == "UNAVAILABLE", name
    # A client on the gateway's public network (standing for the outside) reaches the
    # gateway but neither the services' names nor their addresses on the internal network.
    client = [
        "run", "--rm", f"--network={PROJECT}_public", "--entrypoint=orderflow-healthcheck",
        "localhost/orderflow-service:dev",
    ]  # fmt: skip
    reply = session.podman(*client, "http", "http://gateway:8080/healthz")
    assert reply.returncode == 0, reply.output
    for name, port in GRPC_PORTS.items():
        (container, *_) = multi.containers(name)
        networks = json.loads(
            session.podman("inspect", "--format", "{{json .NetworkSettings.Networks}}", container)
            .check()
            .stdout
        )
        assert set(networks) == {
            f"{PROJECT}_grpc",
            f"{PROJECT}_data",
            f"{PROJECT}_events",
        }, networks
        targets = [f"{name}:{port}"] + [f"{n['IPAddress']}:{port}" for n in networks.values()]
        for target in targets:
            reply = session.podman(*client, "grpc", target, timeout=60)
            assert reply.returncode != 0, f"{target} answered from the public network"
            assert "SERVING" not in reply.output, reply.output
        # ...while from its own network the gateway does reach it (the check can succeed).
        gateway = multi.containers("gateway")[0]
        reply = session.podman("exec", gateway, "orderflow-healthcheck", "grpc", f"{name}:{port}")
        assert reply.returncode == 0 and "SERVING" in reply.output, reply.output


def _tail(multi: Deployment, *args: str, timeout: float = 90) -> list[dict[str, Any]]:
    """`orderflow events tail ARGS` in the orders container (ORDERFLOW_NATS_URL there:
    the JetStream stream), as CloudEvents JSON lines."""
    (orders,) = multi.containers("orders")
    reply = multi.session.podman(
        "exec", orders, "timeout", str(int(timeout)), "orderflow", "events", "tail", *args,
        timeout=timeout + 30,
    )  # fmt: skip
    assert reply.returncode == 0, reply.output
    return [json.loads(line) for line in reply.stdout.splitlines() if line.startswith("{")]


def test_an_order_placed_through_the_gateway_shows_as_its_events_on_the_broker(
    multi: Deployment,
) -> None:
    admin = multi.token(admin=True)
    customer = "c-deploy-events"
    token = multi.token(customer=customer)
    with httpx.Client(base_url=multi.url, timeout=15) as client:
        sku = _new_item(client, admin, stock=5, price=1500)
        reply = _order(client, token, customer, sku, quantity=2)
        assert reply.status_code == 201, reply.text
        order = reply.json()
    assert order["status"] == "CONFIRMED"
    common = ("--from-start", "--subject", order["id"], "--count", "1")
    (confirmed,) = _tail(multi, "--type", "order.confirmed", *common)
    assert confirmed["specversion"] == "1.0"
    assert confirmed["type"] == "orderflow.order.confirmed.v1"
    assert confirmed["source"] == "orderflow/orders"
    assert confirmed["subject"] == order["id"]
    assert confirmed["datacontenttype"] == "application/json"
    data = confirmed["data"]
    assert data["orderId"] == order["id"] and data["customerId"] == customer
    assert [(line["sku"], int(line["quantity"])) for line in data["lines"]] == [(sku, 2)]
    assert int(data["total"]) == order["total"] == 3000
    # Finished by its events: inventory and loyalty commit, orders settles it.
    (settled,) = _tail(multi, "--type", "order.settled", *common)
    assert settled["subject"] == order["id"]
    with httpx.Client(base_url=multi.url, timeout=15) as client:
        item = _settled_item(client, admin, sku)
    assert (item["available"], item["reserved"], item["sold"]) == (3, 0, 2), item


def test_the_published_grpc_api_places_an_order(multi: Deployment) -> None:
    """Reflection lists the API; PlaceOrder confirms; the watch ends settled (events)."""
    import grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from orderflow.api.v1 import ordering_pb2 as pb
    from orderflow.api.v1 import ordering_pb2_grpc as pb_grpc

    admin = multi.token(admin=True)
    customer = "c-deploy-grpc"
    with grpc.insecure_channel(multi.grpc_api) as channel:
        listed = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        names = {s.name for reply in listed for s in reply.list_services_response.service}
        assert "orderflow.api.v1.OrderingService" in names, names
        stub = pb_grpc.OrderingServiceStub(channel)
        as_admin = (("authorization", f"Bearer {admin}"),)
        sku = f"GRPC-{secrets.token_hex(4)}"
        stub.CreateItem(
            pb.CreateItemRequest(sku=sku, name="Pen", price=500, stock=5),
            metadata=as_admin,
            timeout=10,
        )
        as_customer = (("authorization", f"Bearer {multi.token(customer=customer)}"),)
        placed = stub.PlaceOrder(
            pb.PlaceOrderRequest(
                customer_id=customer,
                items=[pb.PlaceOrderRequest.Line(sku=sku, quantity=2)],
                request_id=f"deploy-{secrets.token_hex(4)}",
            ),
            metadata=as_customer,
            timeout=15,
        )
        assert placed.order.status == pb.ORDER_STATUS_CONFIRMED
        assert placed.order.total == 1000
        updates = list(
            stub.WatchOrder(
                pb.WatchOrderRequest(order_id=placed.order.id), metadata=as_customer, timeout=30
            )
        )
        assert updates[-1].order.settled
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetItem(pb.GetItemRequest(sku=sku), timeout=10)  # no token
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_only_the_services_and_the_gateway_reach_the_broker(multi: Deployment) -> None:
    session = multi.session
    probe = "import socket,sys; socket.create_connection((sys.argv[1], 4222), timeout=5).close()"
    (nats,) = multi.containers("nats")
    assert session.podman("port", nats).stdout.strip() == ""
    for name in GRPC_PORTS:
        container = multi.containers(name)[0]
        reply = session.podman("exec", container, "python3", "-c", probe, "nats")
        assert reply.returncode == 0, f"{name} cannot reach nats: {reply.output}"
    gateway = multi.containers("gateway")[0]  # its WatchOrder streams read the order events
    reply = session.podman("exec", gateway, "python3", "-c", probe, "nats", timeout=60)
    assert reply.returncode == 0, f"the gateway cannot reach nats: {reply.output}"
    # Not by its address from the gateway's public network.
    address = json.loads(
        session.podman("inspect", "--format", "{{json .NetworkSettings.Networks}}", nats)
        .check()
        .stdout
    )[f"{PROJECT}_events"]["IPAddress"]
    reply = session.podman(
        "run", "--rm", f"--network={PROJECT}_public", "--entrypoint=python3",
        "localhost/orderflow-service:dev", "-c", probe, address, timeout=60,
    )  # fmt: skip
    assert reply.returncode != 0, "the broker answered from the public network"


def test_loyalty_down_fails_orders_cleanly_and_coming_back_restores_them(
    multi: Deployment,
) -> None:
    admin = multi.token(admin=True)
    customer = "c-deploy-2"
    token = multi.token(customer=customer)
    (loyalty,) = multi.containers("loyalty")
    with httpx.Client(base_url=multi.url, timeout=20) as client:
        sku = _new_item(client, admin, stock=5)
        before = _order(client, token, customer, sku)
        assert before.status_code == 201, before.text
        multi.session.podman("stop", "-t", "5", loyalty).check()
        try:
            reply = _order(client, token, customer, sku)
            assert reply.status_code == 503, reply.text
            body = reply.json()
            assert body["error"]["code"] == "SERVICE_UNAVAILABLE", body
            order_id = body["error"]["details"]["order_id"]
            deadline = time.monotonic() + 20
            while True:
                status = client.get(f"/api/v1/orders/{order_id}", headers=_headers(token)).json()
                if status["status"] == "REJECTED" or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert status["status"] == "REJECTED", status
            # Its stock went back; reads that do not need loyalty still work.
            item = _settled_item(client, admin, sku)
            assert (item["available"], item["reserved"], item["sold"]) == (4, 0, 1), item
            assert client.get("/api/v1/items", headers=_headers(admin)).status_code == 200
            old = client.get(f"/api/v1/orders/{before.json()['id']}", headers=_headers(token))
            assert old.status_code == 200 and old.json()["status"] == "CONFIRMED"
            listed = client.get(
                "/api/v1/orders", params={"customer_id": customer}, headers=_headers(token)
            )
            assert listed.status_code == 200
            assert {o["id"] for o in listed.json()["orders"]} >= {order_id, before.json()["id"]}
            assert client.get("/readyz").status_code == 503
        finally:
            multi.session.podman("start", loyalty).check()
        # Back: no restart of anything else, orders succeed again.
        deadline = time.monotonic() + 60
        while True:
            reply = _order(client, token, customer, sku)
            if reply.status_code == 201 or time.monotonic() > deadline:
                break
            assert reply.status_code == 503, reply.text
            time.sleep(1)
        assert reply.status_code == 201, reply.text
        assert reply.json()["status"] == "CONFIRMED"
        item = _settled_item(client, admin, sku)
        assert (item["available"], item["reserved"], item["sold"]) == (3, 0, 2), item


async def _burst(url: str, orders: list[tuple[str, str, str]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(orders), max_keepalive_connections=len(orders))
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one(token: str, customer: str, sku: str) -> httpx.Response:
            return await client.post(
                "/api/v1/orders",
                json={"customer_id": customer, "items": [{"sku": sku, "quantity": 1}]},
                headers=_headers(token, **{"Idempotency-Key": uuid.uuid4().hex}),
            )

        return await asyncio.gather(*(one(*o) for o in orders))


def _rpc_count(multi: Deployment, container: str, method: str) -> int:
    logs = multi.session.podman("logs", container).output
    return sum(1 for line in logs.splitlines() if '"rpc"' in line and method in line)


def _order_of(client: httpx.Client, reply: httpx.Response) -> str:
    """The id of the order a reply is about. A 503 from CreateOrder itself carries none (the
    orders service did not answer in time, so the order may or may not exist): it is settled
    as a client would, by sending the same request again with the same Idempotency-Key, which
    returns the order if it was made and makes it if not."""
    for _ in range(10):
        body = reply.json()
        if reply.status_code == 201:
            return str(body["id"])
        order_id = body["error"]["details"].get("order_id")
        if order_id:
            return str(order_id)
        assert reply.status_code == 503, reply.text
        time.sleep(1)
        sent = reply.request.headers
        reply = client.post(
            "/api/v1/orders",
            content=reply.request.content,
            headers={n: sent[n] for n in ("authorization", "idempotency-key", "content-type")},
        )
    raise AssertionError(f"still no order after retrying with the same key: {reply.text}")


def _final_status(client: httpx.Client, token: str, order_id: str, timeout: float = 30) -> str:
    """The order's status once terminal (the recovery worker finishes abandoned ones)."""
    deadline = time.monotonic() + timeout
    while True:
        status = str(
            client.get(f"/api/v1/orders/{order_id}", headers=_headers(token)).json()["status"]
        )
        if status != "PENDING" or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def test_two_inventory_containers_never_oversell(multi: Deployment) -> None:
    inventories = multi.containers("inventory")
    assert len(inventories) == 2, inventories
    admin = multi.token(admin=True)
    # Ten customers place twenty orders each: the rate limit is per customer (burst 40).
    customers = [
        (f"c-burst-{i}", mint_token(multi.secret, customer=f"c-burst-{i}")) for i in range(10)
    ]
    with httpx.Client(base_url=multi.url, timeout=20) as client:
        sku = _new_item(client, admin, stock=50)
        before = {c: _rpc_count(multi, c, "ReserveStock") for c in inventories}
        orders = [(token, customer, sku) for customer, token in customers for _ in range(20)]
        replies = asyncio.run(_burst(multi.url, orders))
        codes = Counter(r.status_code for r in replies)
        errors = Counter(r.json()["error"]["code"] for r in replies if r.status_code >= 400)
        assert set(codes) <= {201, 409, 503}, (codes, errors)
        assert errors.get("OUT_OF_STOCK", 0) == codes.get(409, 0), errors
        assert errors.get("SERVICE_UNAVAILABLE", 0) == codes.get(503, 0), errors
        assert all(r.json()["status"] == "CONFIRMED" for r in replies if r.status_code == 201)
        # A 503 is a request that ran out of its time budget on this busy machine (2 cores
        # for seven containers): its order ends REJECTED, or CONFIRMED if it got that far.
        late = Counter(
            _final_status(client, admin, _order_of(client, r))
            for r in replies
            if r.status_code == 503
        )
        assert set(late) <= {"CONFIRMED", "REJECTED"}, late
        confirmed = codes.get(201, 0) + late.get("CONFIRMED", 0)
        assert confirmed <= 50, f"oversold: {confirmed} orders confirmed for 50 units"
        item = _settled_item(client, admin, sku)
        assert (item["available"], item["reserved"], item["sold"]) == (
            50 - confirmed,
            0,
            confirmed,
        ), item
        if not late:
            assert confirmed == 50, codes
        # Whatever a timed-out order gave back can still be sold, and not one unit more.
        for n in range(50 - confirmed):
            customer, token = customers[n % len(customers)]
            reply = _order(client, token, customer, sku)
            assert reply.status_code == 201, reply.text
        reply = _order(client, customers[0][1], customers[0][0], sku)
        assert reply.status_code == 409 and reply.json()["error"]["code"] == "OUT_OF_STOCK"
        item = _settled_item(client, admin, sku)
        assert (item["available"], item["reserved"], item["sold"]) == (0, 0, 50), item
    # Both containers took reservations: the gateway balanced over them.
    after = {c: _rpc_count(multi, c, "ReserveStock") for c in inventories}
    assert all(after[c] > before[c] for c in inventories), (before, after)


def test_single_container_places_an_order(session: PodmanSession, secret: str) -> None:
    grpc_port = free_port()
    single = Deployment(
        session,
        "single.yaml",
        f"{PROJECT}single",
        free_port(),
        secret,
        env={"ORDERFLOW_GRPC_PUBLISH": f"127.0.0.1:{grpc_port}"},
    )
    try:
        single.up()
        single.wait_ready(timeout=120)
        token = single.token(customer="c-1")
        with httpx.Client(base_url=single.url, timeout=15) as client:
            reply = _order(client, token, "c-1", "MUG-1", quantity=2)  # demo data
            assert reply.status_code == 201, reply.text
            order = reply.json()
            assert order["status"] == "CONFIRMED"
            assert order["discount"] == 250  # c-1 is gold in the demo data
        # The one-process gRPC server is published as well, and the gateway's gRPC API.
        assert _grpc_health(f"127.0.0.1:{grpc_port}") == "SERVING"
        assert _grpc_health(single.grpc_api) == "SERVING"
    finally:
        left = single.down()
        assert not left, f"left behind: {left}"


def test_helper_runs_a_failing_command_as_failed(session: PodmanSession) -> None:
    """The session reports a command's real exit status (the tests above rely on it)."""
    assert session.run("exit 3").returncode == 3
    assert session.run("podman image exists localhost/orderflow-gateway:dev").returncode == 0
    assert session.run("podman image exists localhost/no-such-image:x").returncode != 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(subprocess.call([sys.executable, "-m", "pytest", "-q", __file__]))
