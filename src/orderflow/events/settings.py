"""Settings of the events machinery (ORDERFLOW_NATS_URL, ORDERFLOW_EVENTS_*), checked at start-up.

Kept here until the events are wired into the services; then this class joins
`orderflow.settings` with the other components' settings.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from orderflow.events.registry import DEFAULT_STREAM, DEFAULT_SUBJECT_PREFIX

Seconds = Annotated[float, Field(gt=0, le=86_400 * 365)]


class EventsSettings(BaseSettings):
    """ORDERFLOW_NATS_URL (empty: the in-process bus) and ORDERFLOW_EVENTS_<SETTING>."""

    model_config = SettingsConfigDict(env_prefix="ORDERFLOW_", extra="ignore", frozen=True)

    # nats://host:4222 switches any mode to JetStream; empty keeps the in-process bus.
    nats_url: Annotated[str, Field(pattern=r"^$|^(nats|tls)://\S+$")] = ""
    events_stream: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")] = DEFAULT_STREAM
    events_subject_prefix: Annotated[str, Field(pattern=r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")] = (
        DEFAULT_SUBJECT_PREFIX
    )
    # Relay: rows per batch, how long its lease lasts, how often an idle relay looks again,
    # how long it waits for the broker's acks, and the cap of its retry backoff.
    events_relay_batch: Annotated[int, Field(ge=1, le=10_000)] = 100
    events_relay_lease_seconds: Seconds = 10.0
    events_relay_poll_seconds: Seconds = 0.2
    events_publish_timeout_seconds: Seconds = 5.0
    events_relay_max_backoff_seconds: Seconds = 10.0
    # Published rows are deleted after this long (7 days), in batches.
    events_retention_seconds: Seconds = 7 * 86_400
    # Consumers: a message failing this often is parked; deliveries per batch.
    events_max_attempts: Annotated[int, Field(ge=1, le=1_000)] = 5
    events_consumer_batch: Annotated[int, Field(ge=1, le=10_000)] = 50
    # Inbox rows (the record of handled events) are kept this long (30 days).
    events_inbox_retention_seconds: Seconds = 30 * 86_400
