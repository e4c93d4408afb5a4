"""The README's commands work as shown, in both modes: one process started with `--demo`,
and one process per service on PostgreSQL, its databases made by the README's
`orderflow migrate --create-database` and its data loaded by `orderflow seed --demo`."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orderflow.registry import SERVICE_NAMES
from tests.conftest import PgDatabases, _pg_url
from tests.e2e.conftest import start
from tests.e2e.nats import NatsServer
from tests.system import System, _base_env, one_process, per_service

README = Path(__file__).resolve().parents[2] / "README.md"
# One process serves every gRPC service on its --grpc-port; per service, each has its own.
DEFAULT_GRPC_PORTS = {"orders": 50051, "inventory": 50052, "loyalty": 50053}


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def commands(prefix: str) -> list[str]:
    """Shell commands in the README starting with prefix (backslash continuations joined)."""
    found = []
    for block in readme_blocks("sh"):
        joined = block.replace("\\\n", " ")
        found += [line.strip() for line in joined.splitlines() if line.strip().startswith(prefix)]
    return found


def grpc_ports(system: System) -> dict[int, int]:
    """README port -> the port the test system really uses."""
    api = {8081: int(system.grpc_target.rpartition(":")[2])}  # the gateway's gRPC API
    if "onebox" in system.processes:
        argv = system.processes["onebox"].argv
        return {50051: int(argv[argv.index("--grpc-port") + 1]), **api}
    return {DEFAULT_GRPC_PORTS[name]: system.processes[name].port for name in SERVICE_NAMES} | api


def localise(command: str, system: System) -> list[str]:
    http_port = system.base_url.rsplit(":", 1)[1]
    command = command.replace("127.0.0.1:8080", f"127.0.0.1:{http_port}")
    for shown, real in grpc_ports(system).items():
        command = command.replace(f"127.0.0.1:{shown}", f"127.0.0.1:{real}")
    argv = shlex.split(command.split(" # ", 1)[0])
    if argv[0] == "grpcurl":
        argv[0] = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    if argv[0] == "orderflow":
        argv[:1] = [sys.executable, "-m", "orderflow"]
    return argv


def run(command: str, system: System, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        localise(command, system), capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, f"{command}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def onebox_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    system = one_process(tmp_path_factory.mktemp("readme"))
    system.processes["onebox"].argv.append("--demo")
    yield start(system)
    system.stop()


@pytest.fixture(scope="module")
def per_service_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """The README's per-service setup: databases that do not exist yet, made by its migrate
    command; the four components; then its seed command."""
    databases = PgDatabases()
    tag = uuid.uuid4().hex[:8]
    urls = {name: _pg_url(f"of_test_readme_{name}_{tag}") for name in SERVICE_NAMES}
    databases.names += [url.rsplit("/", 1)[1] for url in urls.values()]
    asyncio.run(databases.drop_all())  # reaches the server first: skips (or fails in CI) without
    env = _base_env({f"ORDERFLOW_{n.upper()}_DATABASE_URL": url for n, url in urls.items()})
    workdir = tmp_path_factory.mktemp("readme-per-service")
    nats = NatsServer(workdir)  # the README's nats-server, on a port of the test's
    nats.start()
    system = per_service(workdir, urls, {"ORDERFLOW_NATS_URL": nats.url})
    try:
        (migrate,) = commands("orderflow migrate")
        run(migrate, system, env)
        start(system)
        (seed,) = commands("orderflow seed")
        env["ORDERFLOW_URL"] = system.base_url
        out = run(seed, system, env)
        assert "item MUG-1: created" in out and "customer c-1: account created" in out, out
        yield system
    finally:
        system.stop()
        nats.stop()
        asyncio.run(databases.drop_all())


@pytest.fixture(scope="module", params=["one-process", "per-service"])
def demo(request: pytest.FixtureRequest) -> System:
    if request.param == "one-process":
        return request.getfixturevalue("onebox_demo")
    return request.getfixturevalue("per_service_demo")


def test_readme_starts_with_the_run_and_test_commands() -> None:
    first_block = readme_blocks("sh")[0]
    assert "make run" in first_block and "make test" in first_block


def test_readme_links_the_design_in_the_repository() -> None:
    text = README.read_text()
    assert "../shared" not in text
    assert "(docs/design.md)" in text
    assert (README.parent / "docs" / "design.md").is_file()
    assert "source .venv/bin/activate" in text


def test_seed_from_the_readme_changes_nothing_the_second_time(demo: System) -> None:
    (seed,) = commands("orderflow seed")
    with httpx.Client(base_url=demo.base_url, timeout=10) as api:

        def state() -> list[Any]:
            items = [api.get(f"/api/v1/items/{s}").json() for s in ("MUG-1", "TEE-1")]
            accounts = [f"/api/v1/customers/{c}/loyalty" for c in ("c-1", "c-2")]
            return items + [api.get(account).json() for account in accounts]

        before = state()
        out = run(seed, demo, _base_env({"ORDERFLOW_URL": demo.base_url}))
        assert "0 created, 7 already there" in out, out
        assert state() == before


def test_curl_from_the_readme_places_the_demo_order(demo: System) -> None:
    (place,) = [c for c in commands("curl") if "-X POST" in c and "/api/v1/orders " in c]
    order = json.loads(run(place, demo))
    # The README shows exactly these figures for the demo order.
    assert order["status"] == "CONFIRMED"
    assert (order["subtotal"], order["discount"], order["points_redeemed"]) == (2500, 250, 100)
    assert (order["total"], order["points_earned"]) == (2150, 21)
    again = json.loads(run(place, demo))
    assert again["id"] == order["id"] and again["status"] == "CONFIRMED"
    assert again["updated_at"] >= order["updated_at"]  # as the README warns, it may be later
    (account,) = [c for c in commands("curl") if "/loyalty" in c]
    deadline = time.monotonic() + 10
    while json.loads(run(account, demo))["points"] != 421:  # earned just after the reply
        assert time.monotonic() < deadline, "c-1 never reached the README's 421 points"
        time.sleep(0.1)
    (mug,) = [c for c in commands("curl") if "/api/v1/items/MUG-1 " in c]
    while (shown := json.loads(run(mug, demo)))["sold"] != 2:
        assert time.monotonic() < deadline, f"MUG-1 never showed sold 2: {shown}"
        time.sleep(0.1)
    assert shown["available"] == 98


def test_grpcurl_lists_the_services_as_the_readme_shows(onebox_demo: System) -> None:
    listing = next(c for c in commands("grpcurl") if c.rstrip().endswith(" list"))
    out = run(listing, onebox_demo)
    block = next(b for b in readme_blocks("sh") if "grpcurl" in b)
    shown = [line.lstrip("# ").strip() for line in block.splitlines() if line.startswith("# ")]
    assert out.split() == shown


@pytest.mark.parametrize(("mode", "port"), [("one-process", 50051), ("per-service", 50052)])
def test_grpcurl_reads_an_item_at_the_port_the_readme_gives(
    mode: str, port: int, request: pytest.FixtureRequest
) -> None:
    system = request.getfixturevalue("onebox_demo" if mode == "one-process" else "per_service_demo")
    (get_item,) = [c for c in commands("grpcurl") if "GetItem" in c and f":{port} " in c]
    assert json.loads(run(get_item, system))["item"]["sku"] == "MUG-1"


def _snake(message: dict[str, Any]) -> dict[str, Any]:
    """grpcurl's JSON with proto field names, whichever spelling this grpcurl uses."""
    return {
        re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), k): v for k, v in message.items()
    }


def test_grpcurl_places_an_order_on_the_gateways_grpc_api(demo: System) -> None:
    (place,) = [c for c in commands("grpcurl") if "OrderingService/PlaceOrder" in c]
    first = _snake(json.loads(run(place, demo))["order"])
    assert (first["customer_id"], first["status"]) == ("c-2", "ORDER_STATUS_CONFIRMED")
    assert (first["subtotal"], first["discount"], first["total"]) == ("2000", "100", "1900")
    again = json.loads(run(place, demo))["order"]  # request_id: the same order again
    assert again["id"] == first["id"]
    (watch,) = [c for c in commands("grpcurl") if "OrderingService/WatchOrder" in c]
    out = run(watch.replace("ORDER_ID", first["id"]), demo)
    assert '"settled": true' in out, out
