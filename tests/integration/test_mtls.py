"""Mutual TLS: with certificates configured, only a client the CA vouches for gets in."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from orderflow.boot import build_component
from orderflow.gateway.clients import GrpcInventory
from orderflow.gateway.rpc import Channels
from orderflow.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from orderflow.platform.grpc_server import create_server
from orderflow.platform.tls import channel_credentials, make_certs, server_credentials
from orderflow.settings import CommonSettings, GatewaySettings, InventorySettings

NAMES = ["localhost", "127.0.0.1"]


def tls(ca: Path, cert: Path, key: Path) -> CommonSettings:
    return CommonSettings(tls_ca_file=ca, tls_cert_file=cert, tls_key_file=key)


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[tuple[str, dict[str, Path], dict[str, Path]]]:
    ours = make_certs(tmp_path / "ours", NAMES)
    theirs = make_certs(tmp_path / "theirs", NAMES)
    common = tls(ours["ca"], ours["server_cert"], ours["server_key"])
    settings = InventorySettings(database_url=f"sqlite+aiosqlite:///{tmp_path}/inventory.db")
    component = await build_component("inventory", settings, common)
    running = await create_server(
        [component.spec], "127.0.0.1", 0, credentials=server_credentials(common)
    )
    try:
        yield f"127.0.0.1:{running.port}", ours, theirs
    finally:
        await running.stop(0)
        await component.close()


async def _get_item(channel: grpc.aio.Channel) -> grpc.StatusCode:
    stub = inventory_pb2_grpc.InventoryServiceStub(channel)
    try:
        await stub.GetItem(inventory_pb2.GetItemRequest(sku="MUG-1"), timeout=3)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    finally:
        await channel.close()
    return grpc.StatusCode.OK


async def test_the_gateway_gets_in(secured: tuple[str, dict[str, Path], dict[str, Path]]) -> None:
    target, ours, _ = secured
    gateway = tls(ours["ca"], ours["gateway_cert"], ours["gateway_key"])
    channels = Channels(channel_credentials(gateway))
    try:
        inventory = GrpcInventory(channels.get(target), GatewaySettings())
        made = await inventory.create_item("MUG-1", "Mug", 1250, 5)
        assert (made.sku, made.available) == ("MUG-1", 5)
        assert (await inventory.get_item("MUG-1")).price == 1250
    finally:
        await channels.close()


async def test_no_certificate_or_another_ca_cannot_call(
    secured: tuple[str, dict[str, Path], dict[str, Path]],
) -> None:
    target, ours, theirs = secured
    plaintext = grpc.aio.insecure_channel(target)
    assert await _get_item(plaintext) == grpc.StatusCode.UNAVAILABLE
    server_only = grpc.ssl_channel_credentials(root_certificates=ours["ca"].read_bytes())
    assert await _get_item(grpc.aio.secure_channel(target, server_only)) == (
        grpc.StatusCode.UNAVAILABLE
    )
    foreign = grpc.ssl_channel_credentials(
        root_certificates=ours["ca"].read_bytes(),
        private_key=theirs["gateway_key"].read_bytes(),
        certificate_chain=theirs["gateway_cert"].read_bytes(),
    )
    assert await _get_item(grpc.aio.secure_channel(target, foreign)) == (
        grpc.StatusCode.UNAVAILABLE
    )
    # ...while the same kind of client with our CA's certificate is let in.
    own = grpc.ssl_channel_credentials(
        root_certificates=ours["ca"].read_bytes(),
        private_key=ours["gateway_key"].read_bytes(),
        certificate_chain=ours["gateway_cert"].read_bytes(),
    )
    assert await _get_item(grpc.aio.secure_channel(target, own)) == grpc.StatusCode.NOT_FOUND


def test_tls_settings_come_all_together(tmp_path: Path) -> None:
    files = make_certs(tmp_path, NAMES)
    with pytest.raises(ValueError, match="together"):
        CommonSettings(tls_ca_file=files["ca"])
    with pytest.raises(ValueError, match="no such file"):
        CommonSettings(
            tls_ca_file=tmp_path / "nope.pem",
            tls_cert_file=files["server_cert"],
            tls_key_file=files["server_key"],
        )


def test_certs_command_writes_a_usable_set(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "orderflow.cli", "certs", "--out", str(tmp_path), "--host", "svc"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for name in ("ca.pem", "server.pem", "server-key.pem", "gateway.pem", "gateway-key.pem"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "gateway-key.pem").stat().st_mode & 0o077 == 0
    assert "ORDERFLOW_TLS_CA_FILE" in done.stdout
