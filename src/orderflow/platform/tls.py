"""Mutual TLS between the gateway and the services, and a local CA to try it with.

When ORDERFLOW_TLS_{CA,CERT,KEY}_FILE are set, every gRPC server requires a client
certificate signed by the CA, and admits only clients whose certificate names an allowed
identity in its SAN (ORDERFLOW_TLS_ALLOWED_CLIENTS, by default only `gateway`;
platform.grpc_identity checks it). `make_certs` writes a CA and one certificate per
component, each naming its component: a service's certificate serves (it is no client
certificate), the gateway's is a client and, for one-process mode, a server too.
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

# Names every certificate also answers to, so that servers on this machine verify.
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1", "::1")
SERVICE_NAMES = ("orders", "inventory", "loyalty")
GATEWAY_NAME = "gateway"


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
    from orderflow.platform.grpc_identity import ClientCheckingCredentials

    inner = grpc.ssl_server_credentials(
        [(files.key, files.cert)], root_certificates=files.ca, require_client_auth=True
    )
    return ClientCheckingCredentials(inner, common.tls_allowed_clients)


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


def _ca(now: datetime.datetime, until: datetime.datetime) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

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
    return ca, ca_key


def issue_certificate(
    ca_dir: Path,
    name: str,
    *,
    extra_names: list[str] | tuple[str, ...] = DEFAULT_SERVER_NAMES,
    server: bool = True,
    client: bool = False,
    days: int = 365,
) -> tuple[Path, Path]:
    """Sign a certificate for name (first in its SAN, then extra_names) with the CA in
    ca_dir (ca.pem, ca-key.pem); write <name>.pem and <name>-key.pem there."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca-key.pem").read_bytes(), None)
    now = datetime.datetime.now(datetime.UTC)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
    usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    key = _key()
    names = [name, *(n for n in extra_names if n != name)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=days), ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(_alt_names(names), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    cert_file, key_file = ca_dir / f"{name}.pem", ca_dir / f"{name}-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(_pem_key(key))
    key_file.chmod(0o600)
    return cert_file, key_file


def make_certs(out: Path, extra_names: list[str], days: int = 365) -> dict[str, Path]:
    """Write a CA (ca.pem, ca-key.pem) and a certificate and key per component into out.

    Keys of the result: ca, ca_key, and <component>_cert / <component>_key for orders,
    inventory, loyalty and gateway. Each certificate names its component first in its
    SAN, then extra_names (addresses and names it is also reached by). A service's is a
    server certificate only, so it cannot act as a client; the gateway's is a client
    certificate and, so that one process can use it both ways, a server certificate too.
    """
    # Imported here: serving processes never need the X.509 toolkit in memory.
    from cryptography.hazmat.primitives import serialization

    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca, ca_key = _ca(now, now + datetime.timedelta(days=days))
    files = {"ca": out / "ca.pem", "ca_key": out / "ca-key.pem"}
    files["ca_key"].write_bytes(_pem_key(ca_key))
    files["ca_key"].chmod(0o600)
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for component in (*SERVICE_NAMES, GATEWAY_NAME):
        cert, key = issue_certificate(
            out,
            component,
            extra_names=extra_names,
            server=True,
            client=component == GATEWAY_NAME,
            days=days,
        )
        files[f"{component}_cert"], files[f"{component}_key"] = cert, key
    return files
