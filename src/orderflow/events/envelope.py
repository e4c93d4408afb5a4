"""The CloudEvents 1.0 envelope of every event, in binary mode, as DESIGN.md (Events) fixes it.

The attributes travel as headers (`ce-specversion`, `ce-id`, `ce-source`, `ce-type`,
`ce-subject`, `ce-time`, `content-type`, `traceparent`); `ce-id` is also sent as
`Nats-Msg-Id`, so JetStream drops a republish of the same event. The body is the
event's protobuf message in proto3 JSON, with every field present.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from orderflow.events.registry import EventType, UnknownEventTypeError, event_type, type_of
from orderflow.platform.telemetry import tracer_provider

SPECVERSION = "1.0"
CONTENT_TYPE = "application/json"
MSG_ID_HEADER = "Nats-Msg-Id"


class InvalidEventError(ValueError):
    """A message whose headers or body are not an orderflow event."""


def rfc3339(moment: datetime) -> str:
    """`2026-11-30T23:01:02.123456Z`: UTC, microseconds, as ce-time carries it."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def current_traceparent() -> str | None:
    """The W3C traceparent of the active span, or None when tracing is off (no valid span)."""
    if tracer_provider() is None:  # no span, and OpenTelemetry need not even be loaded
        return None
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def to_json(message: Message) -> str:
    """A message in proto3 JSON (lowerCamelCase names, int64 as strings), every field shown."""
    return json.dumps(
        json_format.MessageToDict(message, always_print_fields_with_no_presence=True),
        separators=(",", ":"),
        sort_keys=True,
    )


def wire_headers(
    *,
    event_id: str,
    kind: EventType,
    source: str,
    subject: str,
    time: str,
    traceparent: str | None,
) -> dict[str, str]:
    """The binary-mode CloudEvents headers of one event, plus Nats-Msg-Id."""
    headers = {
        "ce-specversion": SPECVERSION,
        "ce-id": event_id,
        "ce-source": f"orderflow/{source}",
        "ce-type": kind.ce_type,
        "ce-subject": subject,
        "ce-time": time,
        "content-type": CONTENT_TYPE,
        MSG_ID_HEADER: event_id,
    }
    if traceparent:
        headers["traceparent"] = traceparent
    return headers


@dataclass(frozen=True)
class WireMessage:
    """An event as it travels: its type (which decides the subject), headers and body."""

    type: EventType
    headers: dict[str, str]
    body: bytes

    @property
    def id(self) -> str:
        return self.headers["ce-id"]


@dataclass(frozen=True)
class Event:
    """One event: its CloudEvents attributes and its body.

    `subject` is the aggregate id (order id, sku or customer id); `source` the emitting
    service (`orders`), sent as `orderflow/<source>`.
    """

    id: str
    type: EventType
    source: str
    subject: str
    time: datetime
    data: Message
    traceparent: str | None = None

    @classmethod
    def new(
        cls,
        data: Message,
        *,
        source: str | None = None,
        time: datetime | None = None,
        event_id: str | None = None,
        traceparent: str | None = None,
    ) -> Event:
        """An event for `data`, typed by its message class, with a fresh UUID and the current
        trace (if any). `source` defaults to the service the registry says emits it."""
        kind = type_of(data)
        return cls(
            id=event_id or str(uuid.uuid4()),
            type=kind,
            source=source or kind.source,
            subject=kind.aggregate_id(data),
            time=time or datetime.now(UTC),
            data=data,
            traceparent=traceparent if traceparent is not None else current_traceparent(),
        )

    def headers(self) -> dict[str, str]:
        """The binary-mode CloudEvents headers, plus Nats-Msg-Id."""
        return wire_headers(
            event_id=self.id,
            kind=self.type,
            source=self.source,
            subject=self.subject,
            time=rfc3339(self.time),
            traceparent=self.traceparent,
        )

    def body(self) -> bytes:
        return to_json(self.data).encode()

    def wire(self) -> WireMessage:
        return WireMessage(self.type, self.headers(), self.body())

    def structured(self) -> dict[str, Any]:
        """The same event as one CloudEvents JSON object (structured mode), e.g. for a log
        line or `orderflow events tail`."""
        out: dict[str, Any] = {
            "specversion": SPECVERSION,
            "id": self.id,
            "source": f"orderflow/{self.source}",
            "type": self.type.ce_type,
            "subject": self.subject,
            "time": rfc3339(self.time),
            "datacontenttype": CONTENT_TYPE,
            "data": json.loads(self.body()),
        }
        if self.traceparent:
            out["traceparent"] = self.traceparent
        return out

    @classmethod
    def decode(cls, headers: Mapping[str, str], body: bytes) -> Event:
        """The event carried by a message's headers and body; InvalidEventError if it is not
        one (wrong specversion or content type, unknown type, missing attribute, bad body)."""
        try:
            if headers.get("ce-specversion") != SPECVERSION:
                raise InvalidEventError(f"ce-specversion is {headers.get('ce-specversion')!r}")
            if headers.get("content-type") != CONTENT_TYPE:
                raise InvalidEventError(f"content-type is {headers.get('content-type')!r}")
            kind = event_type(headers["ce-type"])
            source = headers["ce-source"]
            if not source.startswith("orderflow/"):
                raise InvalidEventError(f"ce-source {source!r} is not orderflow/<service>")
            data = json_format.Parse(body, kind.message())
            time = datetime.fromisoformat(headers["ce-time"])
            if time.tzinfo is None:
                raise InvalidEventError("ce-time has no offset")
            return cls(
                id=headers["ce-id"],
                type=kind,
                source=source.removeprefix("orderflow/"),
                subject=headers["ce-subject"],
                time=time,
                data=data,
                traceparent=headers.get("traceparent"),
            )
        except InvalidEventError:
            raise
        except (KeyError, ValueError, UnknownEventTypeError, json_format.ParseError) as exc:
            raise InvalidEventError(f"not an orderflow event: {exc!r}") from exc
