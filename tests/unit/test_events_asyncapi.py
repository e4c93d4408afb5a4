"""docs/asyncapi.yaml is valid AsyncAPI 3.0 and documents exactly the events the code emits:
one channel per registry type, at its subject, with its envelope and its protobuf payload."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # (no stubs; a test-only import)
import pytest
import yaml
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from orderflow.events import EVENT_TYPES, Event, EventType

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "docs" / "asyncapi.yaml"
# The official AsyncAPI 3.0.0 JSON Schema, vendored (see tests/data/README.md).
SCHEMA = ROOT / "tests" / "data" / "asyncapi-3.0.0.schema.json"


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    loaded = yaml.safe_load(SPEC.read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_it_is_valid_asyncapi_3(spec: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(spec), key=lambda e: list(e.path))
    assert [f"{list(e.path)}: {e.message}" for e in errors] == []
    assert spec["asyncapi"].startswith("3.")


def test_the_schema_catches_a_broken_document(spec: dict[str, Any]) -> None:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    broken = {**spec, "channels": {"x": {"address": 42}}}
    assert list(validator.iter_errors(broken))


def _resolve(spec: dict[str, Any], ref: str) -> Any:
    node: Any = spec
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _documented(spec: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """{ce-type: (channel address, message)} for every message of every channel."""
    out = {}
    for channel in spec["channels"].values():
        for ref in channel["messages"].values():
            message = _resolve(spec, ref["$ref"])
            ce_type = message["headers"]["allOf"][1]["properties"]["ce-type"]["const"]
            assert ce_type not in out, f"{ce_type} documented twice"
            out[ce_type] = (channel["address"], message)
    return out


def test_it_lists_exactly_the_event_types_of_the_registry(spec: dict[str, Any]) -> None:
    documented = _documented(spec)
    assert {ce: address for ce, (address, _) in documented.items()} == {
        t.ce_type: t.subject() for t in EVENT_TYPES
    }
    for kind in EVENT_TYPES:
        _, message = documented[kind.ce_type]
        own = message["headers"]["allOf"][1]["properties"]
        assert own["ce-source"]["const"] == f"orderflow/{kind.source}"
        assert message["payload"]["$ref"].endswith("/" + kind.message.DESCRIPTOR.name)
    sent = {op["channel"]["$ref"] for op in spec["operations"].values() if op["action"] == "send"}
    assert sent == {f"#/channels/{name}" for name in spec["channels"]}


def _sample(descriptor: Any, message: Message) -> None:
    """Set every field of message to something not its default."""
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            target = getattr(message, field.name)
            child = target.add() if field.is_repeated else target
            _sample(field.message_type, child)
        elif field.type == FieldDescriptor.TYPE_STRING:
            value: Any = f"{field.name}-1"
        elif field.type == FieldDescriptor.TYPE_BOOL:
            value = True
        else:
            value = -7 if field.type == FieldDescriptor.TYPE_INT64 else 7
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            if field.is_repeated:
                getattr(message, field.name).append(value)
            else:
                setattr(message, field.name, value)


@pytest.mark.parametrize("kind", EVENT_TYPES, ids=lambda t: t.name)
def test_headers_and_payload_of_each_event_match_the_documented_schemas(
    spec: dict[str, Any], kind: EventType
) -> None:
    _, message = _documented(spec)[kind.ce_type]
    full = kind.message()
    _sample(kind.message.DESCRIPTOR, full)
    for data in (full, kind.message()):  # every field set; every field at its default
        event = Event.new(data, traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01")
        payload = json.loads(event.body())
        headers = event.headers()
        for schema, instance in ((message["payload"], payload), (message["headers"], headers)):
            resolved = _inline(spec, schema)
            errors = [e.message for e in jsonschema.Draft7Validator(resolved).iter_errors(instance)]
            assert errors == [], (kind.name, instance)
    # And the documented payload refuses a body of another type.
    other = next(t for t in EVENT_TYPES if t.message is not kind.message)
    wrong = json.loads(Event.new(_filled(other)).body())
    resolved = _inline(spec, message["payload"])
    assert list(jsonschema.Draft7Validator(resolved).iter_errors(wrong))


def _filled(kind: EventType) -> Message:
    message = kind.message()
    _sample(kind.message.DESCRIPTOR, message)
    return message


def _inline(spec: dict[str, Any], schema: Any) -> Any:
    """schema with every local $ref replaced by what it points to."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _inline(spec, _resolve(spec, schema["$ref"]))
        return {key: _inline(spec, value) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_inline(spec, item) for item in schema]
    return schema
