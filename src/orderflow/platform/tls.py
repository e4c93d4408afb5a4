"""Mutual TLS between the gateway and the services, and a local CA to try it with.

When ORDERFLOW_TLS_{CA,CERT,KEY}_FILE are set, every gRPC server requires a client
certificate signed by the CA, and the gateway presents its own. `make_certs` writes a
CA, a server certificate (for the services' names and loopback) and a client
certificate (for the gateway): enough for one machine or a small cluster.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from orderflow.settings import CommonSettings

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1", "::1", "orders", "inventory", "loyalty")


@dataclass(frozen=True)
class TlsFiles:
    ca: bytes
    cert: bytes
    key: bytes

    @classmethod
    def from_settings(cls, common: CommonSettings) -> TlsFiles | None:
        if common.tls_ca_file is None or common.tls_cert_file is None:
            return None
        assert common.tls_key_file is not None  # settings require all three together
        return cls(
            common.tls_ca_file.read_bytes(),
            common.tls_cert_file.read_bytes(),
            common.tls_key_file.read_bytes(),
        )


def server_credentials(common: CommonSettings) -> grpc.ServerCredentials | None:
    """Server side of mutual TLS, or None when no certificates are configured."""
    files = TlsFiles.from_settings(common)
    if files is None:
        return None
    return grpc.ssl_server_credentials(
        [(files.key, files.cert)], root_certificates=files.ca, require_client_auth=True
    )


def channel_credentials(common: CommonSettings) -> grpc.ChannelCredentials | None:
    """Client side of mutual TLS, or None when no certificates are configured."""
    files = TlsFiles.from_settings(common)
    if files is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=files.ca, private_key=files.key, certificate_chain=files.cert
    )


def _key() -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "orderflow"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _alt_names(names: list[str]) -> Any:
    from cryptography import x509

    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def make_certs(out: Path, server_names: list[str], days: int = 365) -> dict[str, Path]:
    """Write ca.pem, server.pem/server-key.pem and gateway.pem/gateway-key.pem into out."""
    # Imported here: serving processes never need the X.509 toolkit in memory.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    until = now + datetime.timedelta(days=days)
    ca_key = _key()
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("orderflow local CA"))
        .issuer_name(_name("orderflow local CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        common_name: str, usages: list[x509.ObjectIdentifier], names: list[str]
    ) -> tuple[bytes, bytes]:
        key = _key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if names:
            builder = builder.add_extension(_alt_names(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)

    # The services' certificate may also act as a client: one process uses it both ways.
    server_cert, server_key = leaf(
        "orderflow services",
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        server_names,
    )
    client_cert, client_key = leaf("orderflow gateway", [ExtendedKeyUsageOID.CLIENT_AUTH], [])
    files = {
        "ca": out / "ca.pem",
        "server_cert": out / "server.pem",
        "server_key": out / "server-key.pem",
        "gateway_cert": out / "gateway.pem",
        "gateway_key": out / "gateway-key.pem",
    }
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["server_cert"].write_bytes(server_cert)
    files["server_key"].write_bytes(server_key)
    files["gateway_cert"].write_bytes(client_cert)
    files["gateway_key"].write_bytes(client_key)
    for key_file in (files["server_key"], files["gateway_key"]):
        key_file.chmod(0o600)
    return files
