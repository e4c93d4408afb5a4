"""The event registry and the CloudEvents envelope, as DESIGN.md (Events) names them."""

from __future__ import annotations

import json
import os
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider

from orderflow.events import (
    EVENT_TYPES,
    Event,
    InvalidEventError,
    UnknownEventTypeError,
    event_type,
    type_of,
)
from orderflow.events.registry import type_of_subject
from orderflow.events.v1 import events_pb2
from orderflow.platform.telemetry import use_tracer_provider

ROOT = Path(__file__).resolve().parents[2]
# shared/ lies beside the repository (CI, main) or beside the folder of worktrees.
DESIGNS = [ROOT.parent / "shared" / "DESIGN.md", ROOT.parent.parent / "shared" / "DESIGN.md"]
IN_CI = os.environ.get("CI", "").lower() == "true"

# Types added after DESIGN.md's table, each by an ADR (additive: DESIGN.md's own types
# keep their names): ce-type -> the ADR.
ADDED = {
    "orderflow.order.cancel_requested.v1": "docs/adr/0028-watching-a-cancel-from-any-gateway.md",
}
# The table of DESIGN.md (Events) and the types ADDED: ce-type, NATS subject, what ce-subject
# is.
EXPECTED = {
    "orderflow.order.confirmed.v1": ("orderflow.events.order.confirmed", "order_id"),
    "orderflow.order.rejected.v1": ("orderflow.events.order.rejected", "order_id"),
    "orderflow.order.cancel_requested.v1": (
        "orderflow.events.order.cancel_requested",
        "order_id",
    ),
    "orderflow.order.cancelled.v1": ("orderflow.events.order.cancelled", "order_id"),
    "orderflow.order.settled.v1": ("orderflow.events.order.settled", "order_id"),
    "orderflow.stock.committed.v1": ("orderflow.events.stock.committed", "order_id"),
    "orderflow.stock.returned.v1": ("orderflow.events.stock.returned", "order_id"),
    "orderflow.item.changed.v1": ("orderflow.events.item.changed", "sku"),
    "orderflow.item.low_stock.v1": ("orderflow.events.item.low_stock", "sku"),
    "orderflow.loyalty.committed.v1": ("orderflow.events.loyalty.committed", "order_id"),
    "orderflow.points.changed.v1": ("orderflow.events.points.changed", "customer_id"),
    "orderflow.tier.changed.v1": ("orderflow.events.tier.changed", "customer_id"),
}


def test_registry_is_the_design_table() -> None:
    assert {t.ce_type: (t.subject(), t.aggregate_field) for t in EVENT_TYPES} == EXPECTED
    for kind in EVENT_TYPES:
        assert kind.message.DESCRIPTOR.full_name.startswith("orderflow.events.v1.")
        assert kind.aggregate_field in kind.message.DESCRIPTOR.fields_by_name
        assert event_type(kind.name) is kind is event_type(kind.ce_type)
        assert type_of(kind.message()) is kind
        assert type_of_subject(kind.subject("x.y"), "x.y") is kind


def test_registry_matches_design_md_when_present() -> None:
    found = [path for path in DESIGNS if path.exists()]
    if not found:
        if IN_CI:
            pytest.fail("shared/DESIGN.md is not beside the repository")
        pytest.skip("shared/DESIGN.md is not beside the repository")
    text = found[0].read_text()
    section = text[text.index("## Events") : text.index("## gRPC API")]
    rows = re.findall(
        r"^\| `(orderflow\.[a-z_.]+\.v1)` \| `(orderflow\.events\.[a-z_.]+)`", section, re.M
    )
    table = dict(rows)
    registry = {t.ce_type: t.subject() for t in EVENT_TYPES}
    # Every type of the table, by its name and subject; the registry has no others but the
    # ADDED ones (which the table may come to list too).
    assert table == {ce: s for ce, s in registry.items() if ce not in ADDED or ce in table}
    for ce_type, adr in ADDED.items():
        assert ce_type in registry
        assert ce_type in (ROOT / adr).read_text(), f"{adr} does not name {ce_type}"


def test_unknown_types_are_refused() -> None:
    with pytest.raises(UnknownEventTypeError):
        event_type("order.shipped")
    with pytest.raises(UnknownEventTypeError):
        type_of(events_pb2.OrderLine())
    with pytest.raises(UnknownEventTypeError):
        type_of_subject("other.order.confirmed")


def confirmed() -> events_pb2.OrderConfirmed:
    return events_pb2.OrderConfirmed(
        order_id="o-1",
        customer_id="c-1",
        lines=[events_pb2.OrderLine(sku="MUG-1", quantity=2, unit_price=1250)],
        currency="USD",
        subtotal=2500,
        discount=250,
        points_redeemed=0,
        total=2250,
        points_earned=22,
    )


def test_headers_are_binary_mode_cloudevents() -> None:
    moment = datetime(2026, 11, 30, 23, 1, 2, 123456, tzinfo=UTC)
    event = Event.new(confirmed(), time=moment, traceparent="")
    headers = event.headers()
    assert headers == {
        "ce-specversion": "1.0",
        "ce-id": event.id,
        "ce-source": "orderflow/orders",
        "ce-type": "orderflow.order.confirmed.v1",
        "ce-subject": "o-1",
        "ce-time": "2026-11-30T23:01:02.123456Z",
        "content-type": "application/json",
        "Nats-Msg-Id": event.id,
    }
    assert uuid.UUID(event.id).version == 4
    body = json.loads(event.body())
    # proto3 JSON: lowerCamelCase, int64 as strings, zero values shown.
    assert body["orderId"] == "o-1"
    assert body["total"] == "2250"
    assert body["pointsRedeemed"] == "0"
    assert body["lines"] == [{"sku": "MUG-1", "quantity": "2", "unitPrice": "1250"}]


def test_decode_is_the_inverse_of_encode() -> None:
    event = Event.new(
        events_pb2.PointsChanged(customer_id="c-9", delta=-5, balance=10, reason="redeemed")
    )
    again = Event.decode(event.headers(), event.body())
    assert again == event
    assert again.source == "loyalty"
    assert again.subject == "c-9"
    assert again.structured()["type"] == "orderflow.points.changed.v1"
    assert again.structured()["data"]["delta"] == "-5"


@pytest.mark.parametrize(
    "change",
    [
        {"ce-specversion": "0.3"},
        {"ce-type": "orderflow.order.shipped.v1"},
        {"content-type": "application/protobuf"},
        {"ce-source": "elsewhere/orders"},
        {"ce-time": "yesterday"},
        {"ce-time": "2026-11-30T23:01:02"},
    ],
)
def test_decode_refuses_what_is_not_an_orderflow_event(change: dict[str, str]) -> None:
    event = Event.new(confirmed())
    with pytest.raises(InvalidEventError):
        Event.decode({**event.headers(), **change}, event.body())


def test_decode_refuses_a_body_of_another_type() -> None:
    event = Event.new(confirmed())
    with pytest.raises(InvalidEventError):
        Event.decode(event.headers(), b'{"orderId": "o-1", "noSuchField": 1}')
    headers = event.headers()
    del headers["ce-id"]
    with pytest.raises(InvalidEventError):
        Event.decode(headers, event.body())


def test_traceparent_is_sent_when_tracing_is_on() -> None:
    assert "traceparent" not in Event.new(confirmed()).headers()
    provider = TracerProvider()
    previous = use_tracer_provider(provider)  # tracing on, as configure_tracing does
    try:
        with provider.get_tracer("test").start_as_current_span("place order") as span:
            headers = Event.new(confirmed()).headers()
    finally:
        use_tracer_provider(previous)
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert re.fullmatch(rf"00-{trace_id}-[0-9a-f]{{16}}-0[13]", headers["traceparent"])
