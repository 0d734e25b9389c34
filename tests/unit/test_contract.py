"""The wire contract v1 (edge_slm.contract): what parses, what is rejected, what is sent."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, get_args

import jsonschema
import pytest
from pydantic import BaseModel, ValidationError

from edge_slm.contract import (
    WIRE_MODELS,
    WIRE_VERSION,
    CloudPolicy,
    CloudReply,
    EdgeAnswer,
    ErrorCode,
    ErrorInfo,
    Escalation,
    EscalationReason,
    Kind,
    Outcome,
    Privacy,
    Request,
    Response,
    SensorReading,
    Source,
    Status,
    Task,
    TokenUsage,
    UnsupportedVersion,
    WireError,
    WireVersion,
    decode,
    json_schemas,
)

# -- Request (inbound, tolerant) ---------------------------------------------


def test_minimal_request_gets_the_defaults() -> None:
    request = Request.model_validate({"v": 1, "text": "hello"})
    assert request.text == "hello"
    assert request.kind is Kind.TEXT
    assert request.task is Task.ANSWER
    assert request.cloud is CloudPolicy.AUTO
    assert request.sensor is None
    assert request.readings == []
    assert request.labels is None
    assert request.reply_to is None


def test_id_is_generated_when_absent_and_kept_when_given() -> None:
    first = Request.model_validate({"v": 1, "text": "a"})
    second = Request.model_validate({"v": 1, "text": "a"})
    assert first.id
    assert first.id != second.id
    assert Request.model_validate({"v": 1, "id": "abc", "text": "a"}).id == "abc"


@pytest.mark.parametrize("request_id", ["", "x" * 129])
def test_id_length_is_bounded(request_id: str) -> None:
    with pytest.raises(ValidationError):
        Request.model_validate({"v": 1, "id": request_id, "text": "a"})


# -- decode: the one version check of every intake ----------------------------


@pytest.mark.parametrize("model", list(WIRE_MODELS.values()), ids=list(WIRE_MODELS))
def test_decode_refuses_a_missing_version(model: type[BaseModel]) -> None:
    with pytest.raises(WireError) as caught:
        decode(model, {"text": "a"})
    assert type(caught.value) is WireError
    assert caught.value.code is ErrorCode.INVALID_REQUEST
    assert str(caught.value) == "v: field required"


@pytest.mark.parametrize("model", list(WIRE_MODELS.values()), ids=list(WIRE_MODELS))
@pytest.mark.parametrize("version", [2, 0, True, 1.0, "1", None])
def test_decode_refuses_another_version(model: type[BaseModel], version: object) -> None:
    with pytest.raises(UnsupportedVersion) as caught:
        decode(model, json.dumps({"v": version, "text": "a"}).encode())
    assert caught.value.code is ErrorCode.UNSUPPORTED_VERSION


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\xff", ErrorCode.INVALID_UTF8),
        (b'{"v": 1', ErrorCode.INVALID_JSON),
        (b"[1]", ErrorCode.INVALID_REQUEST),
        (b"[" * 100_000, ErrorCode.INVALID_JSON),
        (b'{"v": 1, "text": "\\ud800"}', ErrorCode.INVALID_REQUEST),
        (b'{"v": 1, "text": ""}', ErrorCode.INVALID_REQUEST),
    ],
)
def test_decode_refuses_unusable_payloads(payload: bytes, code: ErrorCode) -> None:
    with pytest.raises(WireError) as caught:
        decode(Request, payload)
    assert caught.value.code is code


def test_decode_ignores_unknown_fields_even_of_strict_models() -> None:
    wire = {**json.loads(Status(device_id="d", state="online", ts=1.0).to_wire()), "new": 1}
    assert decode(Status, wire) == Status(device_id="d", state="online", ts=1.0)


def test_one_version_for_every_v_field() -> None:
    assert get_args(WireVersion) == (WIRE_VERSION,)
    for model in WIRE_MODELS.values():
        assert model.model_fields["v"].default == WIRE_VERSION


@pytest.mark.parametrize("labels", [None, []])
def test_classify_without_labels_is_rejected(labels: list[str] | None) -> None:
    raw: dict[str, Any] = {"v": 1, "text": "hot?", "task": "classify"}
    if labels is not None:
        raw["labels"] = labels
    with pytest.raises(ValidationError):
        Request.model_validate(raw)


def test_classify_with_labels_is_accepted() -> None:
    request = Request.model_validate(
        {"v": 1, "text": "hot?", "task": "classify", "labels": ["yes", "no"]}
    )
    assert request.labels == ["yes", "no"]


def test_classify_needs_two_labels() -> None:
    with pytest.raises(ValidationError):
        Request.model_validate({"v": 1, "text": "hot?", "task": "classify", "labels": ["yes"]})


def test_duplicate_labels_are_rejected() -> None:
    with pytest.raises(ValidationError, match="unique"):
        Request.model_validate(
            {"v": 1, "text": "hot?", "task": "classify", "labels": ["yes", "no", "yes"]}
        )


@pytest.mark.parametrize("reply_to", ["apps/+/replies", "apps/#", "$SYS/replies", ""])
def test_reply_to_must_be_a_plain_topic_name(reply_to: str) -> None:
    with pytest.raises(ValidationError):
        Request.model_validate({"v": 1, "text": "a", "reply_to": reply_to})


def test_reply_to_plain_topic_is_kept() -> None:
    request = Request.model_validate({"v": 1, "text": "a", "reply_to": "apps/dash/replies"})
    assert request.reply_to == "apps/dash/replies"


@pytest.mark.parametrize("text", ["", "   \n"])
def test_request_needs_text_or_sensor(text: str) -> None:
    with pytest.raises(ValidationError, match="'text' or 'sensor'"):
        Request.model_validate({"v": 1, "text": text})


def test_request_with_sensor_only_is_accepted() -> None:
    request = Request.model_validate(
        {"v": 1, "kind": "sensor", "sensor": {"name": "kitchen/temp", "value": 21.5}}
    )
    assert request.text == ""
    assert request.readings == [SensorReading(name="kitchen/temp", value=21.5)]


def test_sensor_is_one_reading_or_a_list() -> None:
    one = Request.model_validate(
        {"v": 1, "sensor": {"name": "door", "value": True, "unit": None, "ts": 1.5}}
    )
    many = Request.model_validate(
        {
            "v": 1,
            "sensor": [
                {"name": "temp", "value": 21.5, "unit": "°C"},
                {"name": "mode", "value": "eco", "ts": "2026-01-01T00:00:00Z"},
            ],
        }
    )
    assert isinstance(one.sensor, SensorReading)
    assert [r.name for r in one.readings] == ["door"]
    assert isinstance(many.sensor, list)
    assert [r.name for r in many.readings] == ["temp", "mode"]
    assert many.readings[0].unit == "°C"


def test_empty_sensor_list_does_not_count_as_input() -> None:
    with pytest.raises(ValidationError, match="'text' or 'sensor'"):
        Request.model_validate({"v": 1, "sensor": []})


def test_unknown_inbound_fields_are_ignored() -> None:
    request = Request.model_validate(
        {
            "v": 1,
            "text": "a",
            "from_a_newer_minor": {"x": 1},
            "sensor": {"name": "t", "value": 1, "calibrated": True},
        }
    )
    assert "from_a_newer_minor" not in request.model_dump()
    assert "calibrated" not in request.readings[0].model_dump()


@pytest.mark.parametrize("field", ["max_tokens", "deadline_ms"])
def test_budgets_must_be_positive(field: str) -> None:
    with pytest.raises(ValidationError):
        Request.model_validate({"v": 1, "text": "a", field: 0})


def test_privacy_and_corrections_defaults() -> None:
    request = Request.model_validate({"v": 1, "text": "a"})
    assert request.privacy is Privacy.NORMAL
    assert request.corrections is True


def test_privacy_and_corrections_are_read() -> None:
    request = Request.model_validate(
        {"v": 1, "text": "a", "privacy": "local", "corrections": False}
    )
    assert request.privacy is Privacy.LOCAL
    assert request.corrections is False


@pytest.mark.parametrize(("field", "value"), [("privacy", "secret"), ("corrections", "maybe")])
def test_bad_privacy_or_corrections_is_rejected(field: str, value: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Request.model_validate({"v": 1, "text": "a", field: value})


def test_request_is_frozen() -> None:
    request = Request.model_validate({"v": 1, "text": "a"})
    with pytest.raises(ValidationError):
        request.text = "b"  # type: ignore[misc]


# -- Response (outbound, strict) ---------------------------------------------


def _answer(**overrides: Any) -> Response:
    fields: dict[str, Any] = {"id": "r1", "ok": True, "answer": "42"} | overrides
    return Response(**fields)


def test_response_forbids_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="Extra inputs"):
        Response.model_validate({"id": "r1", "ok": True, "answer": "42", "debug": "oops"})
    with pytest.raises(ValidationError):
        ErrorInfo.model_validate({"code": "busy", "message": "m", "extra": 1})
    with pytest.raises(ValidationError):
        Status.model_validate({"device_id": "d", "state": "online", "ts": 1.0, "extra": 1})


def test_failure_sets_ok_false_and_the_error() -> None:
    response = Response.failure("r1", ErrorCode.BUSY, "queue full", retry_after_ms=250)
    assert response.ok is False
    assert response.id == "r1"
    assert response.error == ErrorInfo(
        code=ErrorCode.BUSY, message="queue full", retry_after_ms=250
    )
    assert response.answer is None
    assert Response.failure(None, ErrorCode.INVALID_JSON, "bad").id is None


def test_error_is_set_exactly_when_not_ok() -> None:
    error = ErrorInfo(code=ErrorCode.INTERNAL, message="boom")
    with pytest.raises(ValidationError, match="exactly when ok is false"):
        Response(id="r1", ok=True, answer="42", error=error)
    with pytest.raises(ValidationError, match="exactly when ok is false"):
        Response(id="r1", ok=False)
    assert Response(id="r1", ok=False, error=error).error == error


@pytest.mark.parametrize("confidence", [0.0, 0.5, 1.0])
def test_confidence_in_bounds_is_accepted(confidence: float) -> None:
    assert _answer(confidence=confidence).confidence == confidence


@pytest.mark.parametrize("confidence", [-0.01, 1.01, float("nan")])
def test_confidence_out_of_bounds_is_rejected(confidence: float) -> None:
    with pytest.raises(ValidationError):
        _answer(confidence=confidence)


def test_response_id_must_be_present_even_if_null() -> None:
    with pytest.raises(ValidationError):
        Response.model_validate({"ok": True, "answer": "42"})


def test_response_version_is_one() -> None:
    assert _answer().v == 1
    with pytest.raises(ValidationError):
        _answer(v=2)


def test_response_json_round_trip() -> None:
    original = Response(
        id="r1",
        ok=True,
        label="yes",
        scores={"yes": 0.9, "no": 0.1},
        confidence=0.9,
        source=Source.EDGE,
        model="smollm2-135m-instruct",
        latency_ms=12.5,
        tokens=TokenUsage(prompt=10, completion=1),
    )
    wire = original.model_dump_json(exclude_none=True)
    assert Response.model_validate_json(wire) == original
    assert json.loads(wire)["source"] == "edge"


def test_failure_json_round_trip() -> None:
    original = Response.failure("r1", ErrorCode.DEADLINE_EXCEEDED, "too late")
    wire = original.model_dump_json(exclude_none=True)
    assert json.loads(wire)["error"] == {"code": "deadline_exceeded", "message": "too late"}
    assert Response.model_validate_json(wire) == original


def test_request_json_round_trip() -> None:
    original = Request.model_validate(
        {
            "v": 1,
            "id": "q1",
            "kind": "sensor",
            "task": "classify",
            "text": "heat?",
            "sensor": [{"name": "t", "value": 16, "unit": "°C"}],
            "labels": ["yes", "no"],
            "deadline_ms": 500,
            "sent_at": 1.0,
            "reply_to": "apps/x",
        }
    )
    assert Request.model_validate_json(original.model_dump_json()) == original


def test_supersedes_is_left_out_unless_set() -> None:
    assert "supersedes" not in json.loads(_answer().to_wire())
    correction = _answer(source=Source.CLOUD, escalated=True, supersedes=True)
    wire = json.loads(correction.to_wire())
    assert wire["supersedes"] is True
    assert wire["source"] == "cloud"
    assert Response.model_validate(wire) == correction


def test_status_json_round_trip() -> None:
    original = Status(device_id="kitchen-pi", state="online", model="m", ts=1.5)
    wire = original.model_dump_json(exclude_none=True)
    assert json.loads(wire) == {
        "v": 1,
        "device_id": "kitchen-pi",
        "state": "online",
        "model": "m",
        "ts": 1.5,
    }
    assert Status.model_validate_json(wire) == original


# -- agent <-> relay: Escalation and CloudReply ----------------------------------


def test_wire_strings_of_the_new_enums() -> None:
    # These strings are on the wire and in the relay log: renaming one breaks peers.
    assert ErrorCode.CLOUD_EXPIRED.value == "cloud_expired"
    assert {p.value for p in Privacy} == {"normal", "local"}
    assert {r.value for r in EscalationReason} == {
        "cloud_always",
        "complex",
        "low_confidence",
        "edge_error",
        "shadow",
    }
    assert {o.value for o in Outcome} == {"ok", "llm_error", "rejected", "budget", "expired"}


def _escalation(**overrides: Any) -> Escalation:
    fields: dict[str, Any] = {
        "id": "q1",
        "device_id": "kitchen-pi",
        "kind": Kind.SENSOR,
        "task": Task.CLASSIFY,
        "text": "heat? call [PHONE]",
        "sensor": [SensorReading(name="t", value=16.5, unit="°C")],
        "labels": ["yes", "no"],
        "max_tokens": 1,
        "reason": EscalationReason.LOW_CONFIDENCE,
        "reason_text": "edge confidence 0.41 < 0.6",
        "edge": EdgeAnswer(label="yes", confidence=0.41, model="smollm2", latency_ms=12.0),
        "redactions": {"phone": 1},
        "deadline_ms": 1500,
        "created_at": 1767225600.5,
    } | overrides
    return Escalation(**fields)


def _cloud_reply(**overrides: Any) -> CloudReply:
    fields: dict[str, Any] = {
        "id": "q1",
        "device_id": "kitchen-pi",
        "ok": True,
        "outcome": Outcome.OK,
        "answer": "Lower the thermostat.",
        "confidence": 0.93,
        "model": "gpt-4o-mini",
        "tokens": TokenUsage(prompt=200, completion=5),
        "latency_ms": 800.0,
    } | overrides
    return CloudReply(**fields)


def test_escalation_wire_round_trip() -> None:
    original = _escalation()
    wire = original.to_wire()
    assert isinstance(wire, bytes)
    assert Escalation.model_validate_json(wire) == original
    data = json.loads(wire)
    assert data["v"] == 1
    assert data["reason"] == "low_confidence"
    assert data["edge"] == {
        "label": "yes",
        "confidence": 0.41,
        "model": "smollm2",
        "latency_ms": 12.0,
    }
    assert data["sensor"][0]["unit"] == "°C"


def test_escalation_before_generation_leaves_edge_out() -> None:
    original = _escalation(
        reason=EscalationReason.CLOUD_ALWAYS, edge=None, deadline_ms=None, redactions={}
    )
    data = json.loads(original.to_wire())
    assert "edge" not in data
    assert "deadline_ms" not in data
    assert data["redactions"] == {}
    assert Escalation.model_validate_json(original.to_wire()) == original


def test_escalation_needs_its_required_fields() -> None:
    data = json.loads(_escalation().to_wire())
    for field in ("id", "device_id", "kind", "task", "text", "max_tokens", "reason", "created_at"):
        partial = {k: v for k, v in data.items() if k != field}
        with pytest.raises(ValidationError, match=field):
            Escalation.model_validate(partial)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", ""),
        ("id", "x" * 129),
        ("device_id", ""),
        ("device_id", "d" * 65),
        ("max_tokens", 0),
        ("deadline_ms", 0),
        ("reason", "bored"),
        ("kind", "smell"),
    ],
)
def test_escalation_bounds(field: str, value: Any) -> None:
    data = json.loads(_escalation().to_wire()) | {field: value}
    with pytest.raises(ValidationError, match=field):
        Escalation.model_validate(data)


@pytest.mark.parametrize(
    ("confidence", "ok"), [(0.0, True), (1.0, True), (-0.1, False), (1.1, False)]
)
def test_edge_answer_confidence_bounds(confidence: float, ok: bool) -> None:
    data = json.loads(_escalation().to_wire())
    data["edge"]["confidence"] = confidence
    if ok:
        assert Escalation.model_validate(data).edge == EdgeAnswer(
            label="yes", confidence=confidence, model="smollm2", latency_ms=12.0
        )
    else:
        with pytest.raises(ValidationError, match="confidence"):
            Escalation.model_validate(data)


def test_escalation_ignores_unknown_fields() -> None:
    data = json.loads(_escalation().to_wire())
    data["from_a_newer_relay"] = {"x": 1}
    data["edge"]["entropy"] = 0.3
    parsed = Escalation.model_validate_json(json.dumps(data))
    assert parsed == _escalation()
    assert "from_a_newer_relay" not in parsed.model_dump()


def test_cloud_reply_wire_round_trip() -> None:
    original = _cloud_reply()
    wire = original.to_wire()
    assert CloudReply.model_validate_json(wire) == original
    data = json.loads(wire)
    assert data["outcome"] == "ok"
    assert "error" not in data
    assert data["tokens"] == {"prompt": 200, "completion": 5}


def test_cloud_reply_failure_round_trip() -> None:
    original = CloudReply(
        id="q1",
        device_id="kitchen-pi",
        ok=False,
        outcome=Outcome.EXPIRED,
        error=ErrorInfo(code=ErrorCode.CLOUD_EXPIRED, message="deadline passed"),
    )
    data = json.loads(original.to_wire())
    assert data == {
        "v": 1,
        "id": "q1",
        "device_id": "kitchen-pi",
        "ok": False,
        "outcome": "expired",
        "error": {"code": "cloud_expired", "message": "deadline passed"},
    }
    assert CloudReply.model_validate_json(original.to_wire()) == original


def test_cloud_reply_ignores_unknown_fields() -> None:
    data = json.loads(_cloud_reply().to_wire()) | {"cost_usd": 0.0004}
    assert CloudReply.model_validate_json(json.dumps(data)) == _cloud_reply()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", ""),
        ("id", "x" * 129),
        ("confidence", 1.5),
        ("confidence", -0.5),
        ("latency_ms", -1.0),
        ("outcome", "lost"),
        ("ok", "perhaps"),
    ],
)
def test_cloud_reply_bounds(field: str, value: Any) -> None:
    data = json.loads(_cloud_reply().to_wire()) | {field: value}
    with pytest.raises(ValidationError, match=field):
        CloudReply.model_validate(data)


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (_escalation(), "text"),
        (_cloud_reply(), "answer"),
        (EdgeAnswer(confidence=0.5, model="m"), "answer"),
    ],
    ids=["escalation", "cloud-reply", "edge-answer"],
)
def test_relay_messages_are_frozen(
    message: Escalation | CloudReply | EdgeAnswer, field: str
) -> None:
    assert field in type(message).model_fields
    with pytest.raises(ValidationError, match="frozen"):
        setattr(message, field, "other")


@pytest.mark.parametrize(
    "message",
    [
        _escalation(),
        _escalation(edge=None, deadline_ms=None),
        _cloud_reply(),
        _cloud_reply(
            ok=False,
            outcome=Outcome.LLM_ERROR,
            answer=None,
            error=ErrorInfo(code=ErrorCode.INTERNAL, message="HTTP 503"),
        ),
    ],
    ids=["escalation", "escalation-no-edge", "cloud-ok", "cloud-error"],
)
def test_relay_messages_match_their_schema(message: Escalation | CloudReply) -> None:
    jsonschema.Draft202012Validator(json_schemas()[type(message).__name__]).validate(
        json.loads(message.to_wire())
    )


# -- schemas of what is published ------------------------------------------------


def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json_schemas()[name])


@pytest.mark.parametrize(
    "message",
    [
        _answer(confidence=0.5, tokens=TokenUsage(prompt=1, completion=2)),
        Response.failure("r1", ErrorCode.BUSY, "full", retry_after_ms=10),
        Status(device_id="d", state="offline", ts=1.0),
    ],
    ids=["answer", "failure", "status"],
)
def test_published_json_matches_its_schema(message: Response | Status) -> None:
    _validator(type(message).__name__).validate(json.loads(message.to_wire()))


def test_failure_without_id_as_published_matches_its_schema() -> None:
    message = Response.failure(None, ErrorCode.INVALID_JSON, "bad")
    wire = json.loads(message.to_wire())
    assert wire["id"] is None
    assert "answer" not in wire
    _validator("Response").validate(wire)


def test_json_schemas_cover_every_wire_model() -> None:
    generated = json_schemas()
    assert set(generated) == set(WIRE_MODELS)
    for schema in generated.values():
        jsonschema.Draft202012Validator.check_schema(schema)


# -- stays light -------------------------------------------------------------

HEAVY = ("paho", "onnxruntime", "onnxruntime_genai", "numpy", "torch")


@pytest.mark.parametrize("module", ["edge_slm.contract", "edge_slm.topics", "edge_slm.schemas"])
def test_import_does_not_load_heavy_modules(module: str) -> None:
    # A fresh interpreter: this one may already have loaded them for other tests.
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == []
