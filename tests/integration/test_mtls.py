"""Mutual TLS: only a client the CA vouches for, and whose certificate names an allowed
identity (the gateway, by default), gets in."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from orderflow.boot import build_component
from orderflow.gateway.clients import GrpcInventory
from orderflow.gateway.rpc import Channels
from orderflow.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from orderflow.platform.grpc_server import create_server
from orderflow.platform.tls import (
    channel_credentials,
    issue_certificate,
    make_certs,
    server_credentials,
)
from orderflow.settings import CommonSettings, GatewaySettings, InventorySettings

NAMES = ["localhost", "127.0.0.1"]


def tls(ca: Path, cert: Path, key: Path) -> CommonSettings:
    return CommonSettings(tls_ca_file=ca, tls_cert_file=cert, tls_key_file=key)


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[tuple[str, dict[str, Path], dict[str, Path]]]:
    ours = make_certs(tmp_path / "ours", NAMES)
    theirs = make_certs(tmp_path / "theirs", NAMES)
    common = tls(ours["ca"], ours["inventory_cert"], ours["inventory_key"])
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


async def _call(channel: grpc.aio.Channel) -> tuple[grpc.StatusCode, str]:
    stub = inventory_pb2_grpc.InventoryServiceStub(channel)
    try:
        await stub.GetItem(inventory_pb2.GetItemRequest(sku="MUG-1"), timeout=3)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    finally:
        await channel.close()
    return grpc.StatusCode.OK, ""


async def _get_item(channel: grpc.aio.Channel) -> grpc.StatusCode:
    return (await _call(channel))[0]


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


def _client(ca: Path, cert: Path, key: Path) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes(),
        certificate_chain=cert.read_bytes(),
    )


async def test_another_services_certificate_is_refused_as_a_client(
    secured: tuple[str, dict[str, Path], dict[str, Path]],
) -> None:
    target, ours, _ = secured
    for service in ("orders", "loyalty"):
        creds = _client(ours["ca"], ours[f"{service}_cert"], ours[f"{service}_key"])
        # A service's certificate is for serving only: the handshake itself refuses it.
        assert await _get_item(grpc.aio.secure_channel(target, creds)) == (
            grpc.StatusCode.UNAVAILABLE
        )


async def test_a_service_name_is_refused_even_on_a_client_certificate(
    secured: tuple[str, dict[str, Path], dict[str, Path]],
) -> None:
    # Were a service's certificate made for client use as well, its name still does not
    # pass: only the allowed identities (gateway) do.
    target, ours, _ = secured
    cert, key = issue_certificate(ours["ca"].parent, "orders", client=True)
    code, details = await _call(grpc.aio.secure_channel(target, _client(ours["ca"], cert, key)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "orders" in details and "ORDERFLOW_TLS_ALLOWED_CLIENTS" in details


async def test_a_certificate_for_another_name_from_the_same_ca_is_refused(
    secured: tuple[str, dict[str, Path], dict[str, Path]],
) -> None:
    target, ours, _ = secured
    cert, key = issue_certificate(ours["ca"].parent, "reporting", client=True)
    code, _ = await _call(grpc.aio.secure_channel(target, _client(ours["ca"], cert, key)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # The identity is the name, not the CA: the gateway's certificate is let in.
    gateway = _client(ours["ca"], ours["gateway_cert"], ours["gateway_key"])
    assert await _get_item(grpc.aio.secure_channel(target, gateway)) == grpc.StatusCode.NOT_FOUND


async def test_the_allowed_clients_are_configurable(tmp_path: Path) -> None:
    files = make_certs(tmp_path / "certs", NAMES)
    reporting_cert, reporting_key = issue_certificate(tmp_path / "certs", "reporting", client=True)
    common = CommonSettings(
        tls_ca_file=files["ca"],
        tls_cert_file=files["inventory_cert"],
        tls_key_file=files["inventory_key"],
        tls_allowed_clients=["reporting"],
    )
    settings = InventorySettings(database_url=f"sqlite+aiosqlite:///{tmp_path}/inventory.db")
    component = await build_component("inventory", settings, common)
    running = await create_server(
        [component.spec], "127.0.0.1", 0, credentials=server_credentials(common)
    )
    target = f"127.0.0.1:{running.port}"
    try:
        reporting = _client(files["ca"], reporting_cert, reporting_key)
        assert await _get_item(grpc.aio.secure_channel(target, reporting)) == (
            grpc.StatusCode.NOT_FOUND
        )
        gateway = _client(files["ca"], files["gateway_cert"], files["gateway_key"])
        code, _ = await _call(grpc.aio.secure_channel(target, gateway))
        assert code == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await running.stop(0)
        await component.close()


def test_tls_settings_come_all_together(tmp_path: Path) -> None:
    files = make_certs(tmp_path, NAMES)
    with pytest.raises(ValueError, match="together"):
        CommonSettings(tls_ca_file=files["ca"])
    with pytest.raises(ValueError, match="no such file"):
        CommonSettings(
            tls_ca_file=tmp_path / "nope.pem",
            tls_cert_file=files["inventory_cert"],
            tls_key_file=files["inventory_key"],
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
    for component in ("orders", "inventory", "loyalty", "gateway"):
        cert = x509.load_pem_x509_certificate((tmp_path / f"{component}.pem").read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName)[:1] == [component]
        assert "svc" in san.get_values_for_type(x509.DNSName)
        assert (tmp_path / f"{component}-key.pem").stat().st_mode & 0o077 == 0
        assert f"ORDERFLOW_TLS_CERT_FILE={tmp_path / component}.pem" in done.stdout
    assert (tmp_path / "ca-key.pem").stat().st_mode & 0o077 == 0
    assert "ORDERFLOW_TLS_CA_FILE" in done.stdout
