"""Settings of the events machinery (ORDERFLOW_NATS_URL, ORDERFLOW_EVENTS_*), checked at start-up.

Every service process and `orderflow run` read these once at start-up (boot.load_settings),
so a wrong value is named at once with the variable that sets it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from orderflow.events.bus import InProcessBus
from orderflow.events.registry import DEFAULT_STREAM, DEFAULT_SUBJECT_PREFIX

if TYPE_CHECKING:
    from orderflow.events.jetstream import JetStreamBus

Seconds = Annotated[float, Field(gt=0, le=86_400 * 365)]
Linger = Annotated[float, Field(ge=0, le=1.0)]


class EventsSettings(BaseSettings):
    """ORDERFLOW_NATS_URL (empty: the in-process bus) and ORDERFLOW_EVENTS_<SETTING>."""

    model_config = SettingsConfigDict(env_prefix="ORDERFLOW_", extra="ignore", frozen=True)

    # nats://host:4222 switches any mode to JetStream; empty keeps the in-process bus.
    nats_url: str = ""
    events_stream: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")] = DEFAULT_STREAM
    events_subject_prefix: Annotated[str, Field(pattern=r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")] = (
        DEFAULT_SUBJECT_PREFIX
    )
    # Relay: rows per batch, how long its lease lasts, how often an idle relay looks again,
    # how long it waits for the broker's acks, and the cap of its retry backoff.
    events_relay_batch: Annotated[int, Field(ge=1, le=10_000)] = 100
    events_relay_lease_seconds: Seconds = 10.0
    events_relay_poll_seconds: Seconds = 0.2
    # While events trickle in, a relay round (and a consumer's transaction) starts at most
    # this often, so that each carries a batch rather than an event or two (ADR 32).
    events_relay_linger_seconds: Linger = 0.05
    events_publish_timeout_seconds: Seconds = 5.0
    events_relay_max_backoff_seconds: Seconds = 10.0
    # Published rows are deleted after this long (7 days), in batches.
    events_retention_seconds: Seconds = 7 * 86_400
    # Consumers: a message failing this often is parked; deliveries per batch.
    events_max_attempts: Annotated[int, Field(ge=1, le=1_000)] = 5
    events_consumer_batch: Annotated[int, Field(ge=1, le=10_000)] = 50
    events_consumer_linger_seconds: Linger = 0.05
    # JetStream: a delivery not acked within this long is delivered again (a consumer
    # that died mid-batch); longer than handling a batch takes.
    events_ack_wait_seconds: Seconds = 30.0
    # Inbox rows (the record of handled events) are kept this long (30 days).
    events_inbox_retention_seconds: Seconds = 30 * 86_400

    @field_validator("nats_url")
    @classmethod
    def _nats_url(cls, value: str) -> str:
        if value and not re.fullmatch(r"(nats|tls)://\S+", value):
            raise ValueError(
                f"{value!r} is not a NATS address: give nats://HOST:PORT (or tls://…), "
                "or leave it empty for the in-process bus"
            )
        return value

    def create_bus(self) -> JetStreamBus | InProcessBus:
        """JetStream when ORDERFLOW_NATS_URL is set, else the in-process bus (connects
        lazily: nothing is contacted here). The NATS client is loaded only when used."""
        if self.nats_url:
            from orderflow.events.jetstream import JetStreamBus

            return JetStreamBus(
                self.nats_url,
                stream=self.events_stream,
                subject_prefix=self.events_subject_prefix,
                ack_wait=self.events_ack_wait_seconds,
            )
        return InProcessBus(self.events_subject_prefix)

    def relay_options(self) -> dict[str, Any]:
        """Keyword arguments of OutboxRelay from these settings."""
        return {
            "batch_size": self.events_relay_batch,
            "lease_seconds": self.events_relay_lease_seconds,
            "poll_seconds": self.events_relay_poll_seconds,
            "linger_seconds": self.events_relay_linger_seconds,
            "publish_timeout": self.events_publish_timeout_seconds,
            "max_backoff": self.events_relay_max_backoff_seconds,
            "retention_seconds": self.events_retention_seconds,
        }

    def consumer_options(self) -> dict[str, Any]:
        """Keyword arguments of ConsumerRunner from these settings."""
        return {
            "max_attempts": self.events_max_attempts,
            "batch_size": self.events_consumer_batch,
            "linger_seconds": self.events_consumer_linger_seconds,
            "inbox_retention_seconds": self.events_inbox_retention_seconds,
        }

    @model_validator(mode="after")
    def _publish_fits_in_lease(self) -> EventsSettings:
        if self.events_publish_timeout_seconds >= self.events_relay_lease_seconds * 2 / 3:
            raise ValueError(
                "events_publish_timeout_seconds must be shorter than 2/3 of "
                "events_relay_lease_seconds (a batch must end within the relay's lease)"
            )
        return self
