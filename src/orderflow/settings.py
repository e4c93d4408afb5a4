"""Every setting of orderflow, read from ORDERFLOW_* environment variables, checked at start-up.

Each component has its own class and prefix (ORDERFLOW_<COMPONENT>_<SETTING>); settings
shared by all components use the bare ORDERFLOW_ prefix. A bad value raises
pydantic's ValidationError, which the CLI turns into a clear message and exit code 2.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class StartupError(Exception):
    """Something at start-up that the user must fix (a database that does not exist, an
    address not on this machine); the message names the setting. The CLI prints it alone
    and exits with exit_code: 2 for a mistake in the settings, 1 for a database that did
    not answer in time (it may yet come up)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


Port = Annotated[int, Field(ge=0, le=65535)]
PositiveSeconds = Annotated[float, Field(gt=0, le=3600)]


class _Base(BaseSettings):
    model_config = SettingsConfigDict(extra="forbid", frozen=True, validate_default=True)


class CommonSettings(_Base):
    """Settings every component reads: ORDERFLOW_<SETTING>."""

    model_config = SettingsConfigDict(env_prefix="ORDERFLOW_", extra="ignore", frozen=True)

    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "USD"
    # How many minor units make one whole currency unit (100 for USD cents).
    minor_units: Annotated[int, Field(ge=1, le=10_000)] = 100
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # auto: readable on a terminal, JSON otherwise.
    log_format: Literal["auto", "json", "console"] = "auto"
    # The share of requests whose every call is logged at INFO in each service (chosen by
    # request id, the same in every process); the others' calls are DEBUG, unless they
    # failed (ADR 33).
    log_sample_rate: Annotated[float, Field(ge=0, le=1)] = 0.01
    # Mutual TLS between the gateway and the services: all three files, or none.
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Client certificate identities (a DNS name in the SAN) a service accepts under mutual
    # TLS, as JSON (ORDERFLOW_TLS_ALLOWED_CLIENTS); by default only the gateway's.
    tls_allowed_clients: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(
        default_factory=lambda: ["gateway"], min_length=1
    )
    # Lets a gRPC server listen beyond loopback in plaintext, without client certificates
    # (ORDERFLOW_INSECURE_GRPC, or --insecure-grpc): only on a network nothing else reaches.
    insecure_grpc: bool = False

    @property
    def tls(self) -> bool:
        """Mutual TLS is configured."""
        return self.tls_ca_file is not None

    @model_validator(mode="after")
    def _tls_all_or_none(self) -> CommonSettings:
        files = (self.tls_ca_file, self.tls_cert_file, self.tls_key_file)
        given = [f for f in files if f is not None]
        if given and len(given) != 3:
            raise ValueError("tls: give ca_file, cert_file and key_file together, or none")
        for path in given:
            if not path.is_file():
                raise ValueError(f"tls: no such file: {path}")
        return self

    # OTLP/gRPC endpoint for traces (e.g. http://collector:4317); empty: tracing is off,
    # unless the standard OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set.
    otlp_endpoint: str = ""


class ServiceSettings(_Base):
    """What every gRPC service needs: where it listens and where its database is."""

    host: str = "127.0.0.1"
    port: Port = 0
    database_url: str = ""
    # Seconds a stopping server lets running calls finish.
    grace_seconds: PositiveSeconds = 5.0
    # How often the health status is refreshed from a database ping.
    health_interval_seconds: PositiveSeconds = 2.0
    db_pool_size: Annotated[int, Field(ge=1, le=200)] = 10
    max_concurrent_rpcs: Annotated[int, Field(ge=1, le=100_000)] = 2000
    # Port serving Prometheus metrics at /metrics (on host), in per-service mode; 0: off.
    metrics_port: Port = 0

    @field_validator("database_url")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "must start with sqlite+aiosqlite:// or postgresql+asyncpg:// "
                f"(got {value.split('://', 1)[0] or 'nothing'}://...)"
            )
        return value


class OrdersSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ORDERFLOW_ORDERS_")

    port: Port = 50051
    database_url: str = "sqlite+aiosqlite:///./data/orders.db"
    # How long a CONFIRMED order waits for its follow-ups' events (stock.committed,
    # loyalty.committed) before the recovery worker finishes it by calls (ADR 18).
    events_grace_seconds: PositiveSeconds = 60.0
    # How often the stuck-orders gauge (orderflow_orders_stuck) is counted.
    stuck_metrics_interval_seconds: PositiveSeconds = 10.0


class InventorySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ORDERFLOW_INVENTORY_")

    port: Port = 50052
    database_url: str = "sqlite+aiosqlite:///./data/inventory.db"
    # How often the stock gauges (orderflow_stock) are read from the items table.
    stock_metrics_interval_seconds: PositiveSeconds = 10.0
    # item.low_stock is emitted when available falls to or below this (once per crossing).
    low_stock_threshold: Annotated[int, Field(ge=0, le=1_000_000_000)] = 5
    # Idempotency keys of admin calls (ADR 0023): how long a claim holds off a duplicate
    # (the request that took it has died if it has not finished by then), and how long
    # keys are kept (at least 24 hours).
    idempotency_lease_seconds: PositiveSeconds = 30.0
    idempotency_retention_seconds: Annotated[float, Field(ge=86_400)] = 2 * 86_400


DEFAULT_TIERS = {"standard": 0, "silver": 5, "gold": 10}


class LoyaltySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ORDERFLOW_LOYALTY_")

    port: Port = 50053
    database_url: str = "sqlite+aiosqlite:///./data/loyalty.db"
    # Tier name -> discount percent, as JSON in ORDERFLOW_LOYALTY_TIERS.
    tiers: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_TIERS))
    default_tier: str = "standard"
    # Idempotency keys of admin calls (ADR 0023): how long a claim holds off a duplicate
    # (the request that took it has died if it has not finished by then), and how long
    # keys are kept (at least 24 hours).
    idempotency_lease_seconds: PositiveSeconds = 30.0
    idempotency_retention_seconds: Annotated[float, Field(ge=86_400)] = 2 * 86_400

    @field_validator("tiers", mode="before")
    @classmethod
    def _parse_tiers(cls, value: object) -> object:
        if isinstance(value, str):
            return json.loads(value)
        return value

    @model_validator(mode="after")
    def _check_tiers(self) -> LoyaltySettings:
        if not self.tiers:
            raise ValueError("tiers: at least one tier is needed")
        for name, percent in self.tiers.items():
            if not name or len(name) > 32:
                raise ValueError(f"tiers: tier name {name!r} must be 1..32 characters")
            if not 0 <= percent <= 100:
                raise ValueError(f"tiers: discount of {name!r} must be 0..100, got {percent}")
        if self.default_tier not in self.tiers:
            raise ValueError(
                f"default_tier {self.default_tier!r} is not one of the tiers {sorted(self.tiers)}"
            )
        return self


class GatewaySettings(_Base):
    model_config = SettingsConfigDict(env_prefix="ORDERFLOW_GATEWAY_")

    host: str = "127.0.0.1"
    port: Port = 8080
    # The public gRPC API (orderflow.api.v1.OrderingService) on host; 0 picks a free port.
    grpc_port: Port = 8081
    orders_target: str = "127.0.0.1:50051"
    inventory_target: str = "127.0.0.1:50052"
    loyalty_target: str = "127.0.0.1:50053"
    # Budget of one REST request; every gRPC deadline comes out of what is left of it.
    request_timeout_seconds: PositiveSeconds = 5.0
    # Deadline of one gRPC call when no request budget applies (recovery, reads).
    rpc_timeout_seconds: PositiveSeconds = 2.0
    # Attempts of a call that failed with UNAVAILABLE, with exponential backoff between them.
    rpc_attempts: Annotated[int, Field(ge=1, le=10)] = 3
    rpc_backoff_seconds: PositiveSeconds = 0.05
    # Lease a saga driver takes on an order; must outlast the request budget.
    lease_seconds: PositiveSeconds = 10.0
    # How often the recovery worker looks for abandoned orders.
    recovery_interval_seconds: PositiveSeconds = 2.0
    recovery_batch: Annotated[int, Field(ge=1, le=100)] = 50
    # How often the gateway asks each service's health (orderflow_service_serving).
    service_health_interval_seconds: PositiveSeconds = 5.0
    max_body_bytes: Annotated[int, Field(ge=1024, le=10 * 1024 * 1024)] = 64 * 1024
    # Larger request heads (request line and headers) get 431 before they are parsed.
    max_header_bytes: Annotated[int, Field(ge=8 * 1024, le=1024 * 1024)] = 64 * 1024
    # More header fields than this in one request: 431.
    max_header_count: Annotated[int, Field(ge=16, le=10_000)] = 100
    # A longer request target (path and query): 414.
    max_url_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024)] = 8 * 1024
    # A request head must be complete this long after the connection opened (first
    # request) or after its first byte (later ones): else 408, or a quiet close if the
    # client sent nothing at all.
    head_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 5.0
    # The whole body must arrive this long after the head: else 408 (or, once the reply
    # is out, the connection is closed). Raise it with max_body_bytes for slow uplinks.
    body_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    # Open HTTP connections at once; one more gets a 503 TOO_MANY_CONNECTIONS and is closed.
    max_connections: Annotated[int, Field(ge=1, le=100_000)] = 1000
    # How long an idle HTTP connection stays open. Longer than the idle timeout of the
    # clients and load balancers in front (60 s is common), so that they, not the gateway,
    # close it: a client that sends on a connection the gateway just closed gets a reset,
    # and does not repeat a POST by itself (ADR 10).
    keep_alive_seconds: Annotated[int, Field(ge=1, le=3600)] = 75
    # No longer used: a CONFIRMED order is finished by its events (ADR 18). Kept so that
    # configurations that set it still load.
    finish_in_background: bool = True
    # Orders a client (token subject, or address without auth) may place per second, and
    # the burst allowed above that rate; 0 turns the limit off.
    rate_limit_per_second: Annotated[float, Field(ge=0, le=100_000)] = 20.0
    rate_limit_burst: Annotated[int, Field(ge=1, le=100_000)] = 40
    # Origins allowed by CORS, as JSON (e.g. ["https://shop.example"]); none by default.
    cors_origins: list[str] = Field(default_factory=list)
    # Port serving /metrics apart from the API (on host); 0: /metrics is on the API port.
    metrics_port: Port = 0
    # Addresses (or networks) of proxies whose X-Forwarded-For / -Proto are believed, as
    # JSON (e.g. ["10.0.0.0/8"]); none by default: the client is the connection's peer.
    trusted_proxies: list[str] = Field(default_factory=list)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_addresses(cls, value: list[str]) -> list[str]:
        for entry in value:
            if entry == "*":
                continue
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an address or a network") from None
        return value

    @model_validator(mode="after")
    def _lease_outlasts_request(self) -> GatewaySettings:
        if self.lease_seconds <= self.request_timeout_seconds:
            raise ValueError(
                f"lease_seconds ({self.lease_seconds}) must be longer than "
                f"request_timeout_seconds ({self.request_timeout_seconds}), or the recovery "
                "worker could take over an order while its request is still driving it"
            )
        return self


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AuthSettings(_Base):
    """Bearer-token authentication at the gateway: ORDERFLOW_AUTH_<SETTING>.

    Give an HS256 shared secret or an RS256 public key file. With neither, the gateway
    runs without authentication, which it allows only while bound to a loopback address.
    """

    model_config = SettingsConfigDict(env_prefix="ORDERFLOW_AUTH_")

    jwt_secret: SecretStr | None = None
    jwt_public_key_file: Path | None = None
    # Signs tokens made by `orderflow token` when RS256 is used.
    jwt_private_key_file: Path | None = None
    issuer: Annotated[str, Field(min_length=1, max_length=200)] = "orderflow"
    audience: Annotated[str, Field(min_length=1, max_length=200)] = "orderflow"
    leeway_seconds: Annotated[float, Field(ge=0, le=300)] = 5.0
    # Longest a token may be valid (exp - iat, and exp - now); longer ones are refused.
    max_token_lifetime_seconds: Annotated[int, Field(ge=60, le=366 * 24 * 3600)] = 24 * 3600
    # Longer Authorization headers are refused before any decoding (a JWT is ~0.3-1 KB).
    max_token_bytes: Annotated[int, Field(ge=256, le=64 * 1024)] = 8 * 1024
    # Failed authentications (401) one address may cause per second, and the burst above
    # that; beyond it: 429 without looking at the token. 0 turns the limit off.
    failure_limit_per_second: Annotated[float, Field(ge=0, le=100_000)] = 5.0
    failure_limit_burst: Annotated[int, Field(ge=1, le=100_000)] = 50

    @field_validator("jwt_secret")
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (a random value, e.g. openssl rand)")
        return value

    @field_validator("jwt_public_key_file", "jwt_private_key_file")
    @classmethod
    def _readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> AuthSettings:
        if self.jwt_secret is not None and self.jwt_public_key_file is not None:
            raise ValueError("give jwt_secret (HS256) or jwt_public_key_file (RS256), not both")
        return self

    @property
    def enabled(self) -> bool:
        return self.jwt_secret is not None or self.jwt_public_key_file is not None
