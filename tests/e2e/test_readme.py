"""The README's commands work as shown: curl places the demo order, grpcurl lists the services."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import start
from tests.system import System, one_process

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def commands(prefix: str) -> list[str]:
    """Shell commands in the README starting with prefix (backslash continuations joined)."""
    found = []
    for block in readme_blocks("sh"):
        joined = block.replace("\\\n", " ")
        found += [line.strip() for line in joined.splitlines() if line.strip().startswith(prefix)]
    return found


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    system = one_process(tmp_path_factory.mktemp("readme"))
    system.processes["onebox"].argv.append("--demo")
    yield start(system)
    system.stop()


def localise(command: str, system: System, grpc_port: int) -> list[str]:
    http_port = system.base_url.rsplit(":", 1)[1]
    command = command.replace("127.0.0.1:8080", f"127.0.0.1:{http_port}")
    command = command.replace("127.0.0.1:50051", f"127.0.0.1:{grpc_port}")
    argv = shlex.split(command.split("#", 1)[0] if " # " in command else command)
    if argv[0] == "grpcurl":
        argv[0] = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    return argv


def grpc_port_of(system: System) -> int:
    argv = system.processes["onebox"].argv
    return int(argv[argv.index("--grpc-port") + 1])


def test_readme_starts_with_the_run_and_test_commands() -> None:
    first_block = readme_blocks("sh")[0]
    assert "make run" in first_block and "make test" in first_block


def test_curl_from_the_readme_places_the_demo_order(demo: System) -> None:
    (place,) = [c for c in commands("curl") if "-X POST" in c and "/api/v1/orders " in c]
    out = subprocess.run(
        localise(place, demo, grpc_port_of(demo)), capture_output=True, text=True, check=True
    )
    order = json.loads(out.stdout)
    # The README shows exactly these figures for the demo order.
    assert order["status"] == "CONFIRMED"
    assert (order["subtotal"], order["discount"], order["points_redeemed"]) == (2500, 250, 100)
    assert (order["total"], order["points_earned"]) == (2150, 21)
    again = subprocess.run(
        localise(place, demo, grpc_port_of(demo)), capture_output=True, text=True, check=True
    )
    assert json.loads(again.stdout)["id"] == order["id"]
    (account,) = [c for c in commands("curl") if "/loyalty" in c]
    out = subprocess.run(
        localise(account, demo, grpc_port_of(demo)), capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout)["points"] == 421


def test_grpcurl_lists_the_services_as_the_readme_shows(demo: System) -> None:
    listing = next(c for c in commands("grpcurl") if c.rstrip().endswith(" list"))
    out = subprocess.run(
        localise(listing, demo, grpc_port_of(demo)),
        capture_output=True,
        text=True,
        check=True,
    )
    block = next(b for b in readme_blocks("sh") if "grpcurl" in b)
    shown = [line.lstrip("# ").strip() for line in block.splitlines() if line.startswith("# ")]
    assert out.stdout.split() == shown
    get_item = next(c for c in commands("grpcurl") if "GetItem" in c)
    item = subprocess.run(
        localise(get_item, demo, grpc_port_of(demo)), capture_output=True, text=True, check=True
    )
    assert json.loads(item.stdout)["item"]["sku"] == "MUG-1"
