"""EventsSettings: read from ORDERFLOW_* variables, bad values refused, the bus it picks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from orderflow.events import EventsSettings, InProcessBus, JetStreamBus


def test_defaults_are_designs_names_and_the_in_process_bus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ORDERFLOW_NATS_URL", raising=False)
    settings = EventsSettings()
    bus = settings.create_bus()
    assert isinstance(bus, InProcessBus)
    assert bus.subject_prefix == "orderflow.events"
    assert settings.events_stream == "ORDERFLOW_EVENTS"


def test_nats_url_switches_to_jetstream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERFLOW_NATS_URL", "nats://127.0.0.1:4222")
    monkeypatch.setenv("ORDERFLOW_EVENTS_MAX_ATTEMPTS", "3")
    settings = EventsSettings()
    bus = settings.create_bus()
    assert isinstance(bus, JetStreamBus)
    assert (bus.url, bus.stream) == ("nats://127.0.0.1:4222", "ORDERFLOW_EVENTS")
    assert settings.consumer_options()["max_attempts"] == 3
    assert settings.relay_options()["lease_seconds"] == 10.0


def test_batch_sizes_and_lingers_reach_the_relay_and_the_consumer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ORDERFLOW_EVENTS_RELAY_BATCH", "250")
    monkeypatch.setenv("ORDERFLOW_EVENTS_RELAY_LINGER_SECONDS", "0")
    monkeypatch.setenv("ORDERFLOW_EVENTS_CONSUMER_BATCH", "20")
    monkeypatch.setenv("ORDERFLOW_EVENTS_CONSUMER_LINGER_SECONDS", "0.05")
    settings = EventsSettings()
    relay, consumer = settings.relay_options(), settings.consumer_options()
    assert (relay["batch_size"], relay["linger_seconds"]) == (250, 0.0)
    assert (consumer["batch_size"], consumer["linger_seconds"]) == (20, 0.05)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ORDERFLOW_NATS_URL", "http://127.0.0.1:4222"),
        ("ORDERFLOW_EVENTS_MAX_ATTEMPTS", "0"),
        ("ORDERFLOW_EVENTS_SUBJECT_PREFIX", "orderflow.events.>"),
        ("ORDERFLOW_EVENTS_PUBLISH_TIMEOUT_SECONDS", "9"),
        ("ORDERFLOW_EVENTS_RELAY_LINGER_SECONDS", "-0.01"),
        ("ORDERFLOW_EVENTS_CONSUMER_LINGER_SECONDS", "2"),
        ("ORDERFLOW_EVENTS_CONSUMER_BATCH", "0"),
    ],
)
def test_bad_values_stop_start_up(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError):
        EventsSettings()
