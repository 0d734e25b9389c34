"""extract's schema subset, act's tools and tool sets, and their typed errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edge_slm.contract import (
    CloudReply,
    DeviceConfig,
    ErrorCode,
    Escalation,
    Request,
    Response,
    Task,
    ToolCall,
    WireError,
    check_schema,
    decode,
    tool_call_schema,
    validation_errors,
)
from edge_slm.contract.structured import MAX_SCHEMA_BYTES, SchemaError

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": ["string", "null"], "maxLength": 64},
        "age": {"type": ["integer", "null"], "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
        "unit": {"enum": ["c", "f"]},
        "where": {
            "type": "object",
            "properties": {"room": {"type": "string"}},
            "required": ["room"],
            "additionalProperties": False,
        },
        "either": {"anyOf": [{"type": "string"}, {"type": "number"}]},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}

SET_TEMP = {
    "type": "function",
    "function": {
        "name": "set_temperature",
        "description": "Set a room's thermostat.",
        "parameters": {
            "type": "object",
            "properties": {"room": {"type": "string"}, "celsius": {"type": "number"}},
            "required": ["room", "celsius"],
            "additionalProperties": False,
        },
    },
}


def _request(**fields: Any) -> Request:
    return decode(Request, {"v": 1, "text": "set the bedroom to 21", **fields})


def test_extract_takes_a_schema_in_the_subset() -> None:
    request = _request(task="extract", schema=PERSON)
    assert request.json_schema == PERSON


@pytest.mark.parametrize(
    ("schema", "code", "says"),
    [
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}}, "unsupported", "$ref"),
        ({"type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}}, "u", "pat"),
        ({"type": "object", "properties": {"a": {"oneOf": [{"type": "string"}]}}}, "u", "oneOf"),
        ({"type": "object", "properties": {"a": {"type": "string", "format": "date"}}}, "u", "fo"),
        ({"type": "object", "properties": {"a": {"type": "strin"}}}, "u", "not a valid JSON"),
        ({"type": "array", "items": {"type": "string"}}, "u", "object schema"),
        ({"type": "object", "properties": {}, "additionalProperties": True}, "u", "additional"),
        ({"type": "object", "properties": {}, "required": ["x"]}, "u", "unknown properties"),
    ],
)
def test_schema_outside_the_subset_is_a_typed_error(
    schema: dict[str, Any], code: str, says: str
) -> None:
    with pytest.raises(WireError) as caught:
        _request(task="extract", schema=schema)
    assert caught.value.code is ErrorCode.UNSUPPORTED_SCHEMA
    assert says in str(caught.value)


def test_oversized_or_deep_schema_is_schema_too_large() -> None:
    wide = {
        "type": "object",
        "properties": {f"f{i}": {"type": "string", "description": "d" * 300} for i in range(40)},
    }
    assert len(json.dumps(wide)) > MAX_SCHEMA_BYTES
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(6):
        deep = {"type": "object", "properties": {"x": deep}}
    many = {"type": "object", "properties": {f"f{i}": {"type": "string"} for i in range(65)}}
    for schema in (wide, deep, many):
        with pytest.raises(WireError) as caught:
            _request(task="extract", schema=schema)
        assert caught.value.code is ErrorCode.SCHEMA_TOO_LARGE, schema


def test_check_schema_raises_its_own_error_outside_a_request() -> None:
    with pytest.raises(SchemaError) as caught:
        check_schema({"type": "object", "properties": {"a": {"not": {}}}})
    assert caught.value.code is ErrorCode.UNSUPPORTED_SCHEMA


def test_schema_only_with_extract_and_tools_only_with_act() -> None:
    with pytest.raises(WireError, match="'extract' only"):
        _request(task="answer", schema=PERSON)
    with pytest.raises(WireError, match="'act' only"):
        _request(task="answer", tools=[SET_TEMP])
    with pytest.raises(WireError, match="'tools' or 'tool_set'"):
        _request(task="act")
    with pytest.raises(WireError, match="'tools' or 'tool_set'"):
        _request(task="act", tools=[SET_TEMP], tool_set="home")


def test_act_takes_openai_tools_or_a_tool_set() -> None:
    request = _request(
        task="act",
        tools=[SET_TEMP, {**SET_TEMP, "risk": "high"} | {"function": {"name": "unlock"}}],
    )
    assert request.task is Task.ACT
    assert [t.name for t in request.tools or []] == ["set_temperature", "unlock"]
    assert request.tools is not None
    assert request.tools[1].risk == "high"
    assert request.tools[0].openai() == SET_TEMP  # edge-only fields are not in OpenAI's form
    assert _request(task="act", tool_set="home").tool_set == "home"


def test_bad_tools_are_refused() -> None:
    bad_params = {"type": "function", "function": {"name": "f", "parameters": {"type": "x"}}}
    with pytest.raises(WireError) as caught:
        _request(task="act", tools=[bad_params])
    assert caught.value.code is ErrorCode.UNSUPPORTED_SCHEMA
    with pytest.raises(WireError, match="unique"):
        _request(task="act", tools=[SET_TEMP, SET_TEMP])
    with pytest.raises(WireError, match="reserved"):
        _request(task="act", tools=[{"type": "function", "function": {"name": "none"}}])


def test_tool_call_schema_chooses_a_tool_or_none() -> None:
    request = _request(task="act", tools=[SET_TEMP])
    schema = tool_call_schema(request.tools or [])
    ok = {"name": "set_temperature", "arguments": {"room": "bedroom", "celsius": 21}}
    assert validation_errors(schema, ok) == []
    assert validation_errors(schema, {"name": "none"}) == []
    assert validation_errors(schema, {"name": "set_temperature", "arguments": {"room": 1}})
    assert validation_errors(schema, {"name": "open_door", "arguments": {}})


def test_replies_carry_data_tool_call_and_field_confidence() -> None:
    reply = Response(
        id="r",
        ok=True,
        tool_call=ToolCall(name="set_temperature", arguments={"room": "bedroom", "celsius": 21}),
        field_confidence={"name": 0.99, "arguments.room": 0.9, "arguments.celsius": 0.7},
        confidence=0.7,
    )
    wire = json.loads(reply.to_wire())
    assert wire["tool_call"] == {
        "name": "set_temperature",
        "arguments": {"room": "bedroom", "celsius": 21},
    }
    assert wire["field_confidence"]["arguments.celsius"] == 0.7
    assert json.loads(Response(id="r", ok=True, data={"a": None}).to_wire())["data"] == {"a": None}


def test_escalation_and_cloud_reply_carry_schema_and_tools_under_their_wire_names() -> None:
    escalation = Escalation(
        id="r",
        device_id="d",
        kind="text",
        task="extract",
        text="x",
        json_schema=PERSON,
        tools=None,
        max_tokens=8,
        reason="low_confidence",
        reason_text="low",
        created_at=1.0,
    )
    wire = json.loads(escalation.to_wire())
    assert wire["schema"] == PERSON
    assert decode(Escalation, escalation.to_wire()).json_schema == PERSON
    reply = decode(
        CloudReply,
        {
            "v": 1,
            "id": "r",
            "device_id": "d",
            "ok": True,
            "outcome": "ok",
            "tool_call": {"name": "f", "arguments": {"a": 1}},
        },
    )
    assert reply.tool_call == ToolCall(name="f", arguments={"a": 1})


def test_device_config_pushes_tool_sets() -> None:
    config = decode(
        DeviceConfig,
        {
            "v": 1,
            "device_id": "d",
            "issued_at": 1.0,
            "tool_sets": {
                "home": {
                    "tools": [SET_TEMP],
                    "exemplars": [
                        {
                            "text": "bedroom to 20",
                            "call": {
                                "name": "set_temperature",
                                "arguments": {"room": "bedroom", "celsius": 20},
                            },
                        },
                        {"text": "tell me a joke", "call": None},
                    ],
                }
            },
        },
    )
    assert config.tool_sets is not None
    assert config.tool_sets["home"].exemplars[1].call is None
