"""docs/asyncapi.yaml and docs/schemas/ must describe what the code really does.

The payload schemas are compared with what the pydantic models generate, the
channel addresses with what :class:`DeviceTopics` builds, the committed JSON
Schema files with a fresh export, and the documented error codes with
:class:`ErrorCode`. Any drift fails here rather than in an app team's client.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

import edge_slm
from edge_slm import schemas
from edge_slm.contract import WIRE_MODELS, ErrorCode, Source, json_schemas
from edge_slm.topics import DeviceTopics, escalation_subscription, relay_status, skill_head

ROOT = Path(__file__).resolve().parents[2]
ASYNCAPI = ROOT / "docs" / "asyncapi.yaml"
SCHEMA_DIR = ROOT / "docs" / "schemas"

CORRELATION = "$message.header#/correlationData"


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    loaded = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _inline(node: Any, components: dict[str, Any]) -> Any:
    """Replace every ``#/components/schemas/X`` ref by X itself (recursively)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            target = _inline(components[ref.rsplit("/", 1)[-1]], components)
            siblings = {k: _inline(v, components) for k, v in node.items() if k != "$ref"}
            return {"__ref__": target, **siblings}
        return {key: _inline(value, components) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(item, components) for item in node]
    return node


def _inline_defs(schema: dict[str, Any]) -> Any:
    """The same for a JSON Schema with ``#/$defs/X`` refs."""
    text = json.dumps(schema).replace('"#/$defs/', '"#/components/schemas/')
    rewritten = json.loads(text)
    defs = rewritten.pop("$defs", {})
    return _inline(rewritten, defs)


def _resolve(spec: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"only local refs are used: {ref}"
    node: Any = spec
    for token in ref[2:].split("/"):
        key = token.replace("~1", "/").replace("~0", "~")  # JSON Pointer escapes
        assert isinstance(node, dict), ref
        assert key in node, f"dangling $ref {ref}"
        node = node[key]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in _refs(item)]
    return []


# -- the document ------------------------------------------------------------


def test_is_asyncapi_3_0(spec: dict[str, Any]) -> None:
    assert re.fullmatch(r"3\.0\.\d+", str(spec["asyncapi"]))
    assert spec["info"]["version"] == edge_slm.__version__
    assert {"channels", "operations", "components", "servers"} <= spec.keys()


def test_every_ref_resolves(spec: dict[str, Any]) -> None:
    refs = _refs(spec)
    assert refs
    for ref in refs:
        _resolve(spec, ref)


def test_servers_cover_local_mqtt_and_cloud_mqtts(spec: dict[str, Any]) -> None:
    protocols = {server["protocol"] for server in spec["servers"].values()}
    assert protocols == {"mqtt", "mqtts"}
    assert all(server["protocolVersion"] == "5.0" for server in spec["servers"].values())


# -- payload schemas ---------------------------------------------------------


def test_component_schemas_are_exactly_the_generated_ones(spec: dict[str, Any]) -> None:
    assert spec["components"]["schemas"] == schemas.asyncapi_schemas()


@pytest.mark.parametrize("name", sorted(WIRE_MODELS))
def test_component_schemas_mean_the_same_as_the_models(spec: dict[str, Any], name: str) -> None:
    """Independent of asyncapi_schemas(): with every ref inlined, both sides are equal."""
    components = spec["components"]["schemas"]
    assert _inline(components[name], components) == _inline_defs(json_schemas()[name])


@pytest.mark.parametrize("name", sorted(WIRE_MODELS))
def test_each_wire_model_is_a_message_payload(spec: dict[str, Any], name: str) -> None:
    payloads = [
        _resolve(spec, message["payload"]["$ref"])
        for message in spec["components"]["messages"].values()
        if message["payload"] == {"$ref": f"#/components/schemas/{name}"}
    ]
    assert payloads, f"no message carries {name}"
    assert payloads == [schemas.asyncapi_schemas()[name]] * len(payloads)


@pytest.mark.parametrize(
    ("message", "example"),
    [
        (name, example)
        for name, message in yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))["components"][
            "messages"
        ].items()
        for example in message.get("examples", [])
    ],
    ids=lambda value: value if isinstance(value, str) else value.get("name", "?"),
)
def test_examples_are_valid_payloads(
    spec: dict[str, Any], message: str, example: dict[str, Any]
) -> None:
    """Examples validate against both the model and the committed JSON Schema."""
    ref = spec["components"]["messages"][message]["payload"]["$ref"]
    model_name = ref.rsplit("/", 1)[-1]
    WIRE_MODELS[model_name].model_validate(example["payload"])
    schema = json.loads((SCHEMA_DIR / schemas.file_name(model_name)).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(schema).validate(example["payload"])


# -- channels and operations -------------------------------------------------


def _device_topics(prefix: str, device_id: str) -> dict[str, str]:
    """Every topic property of DeviceTopics (``base`` is a prefix, not a topic)."""
    topics = DeviceTopics(prefix, device_id)
    found = {
        name: getattr(topics, name)
        for name in dir(DeviceTopics)
        if isinstance(getattr(DeviceTopics, name), property)
        and getattr(topics, name).startswith(topics.base + "/")
    }
    assert topics.all() == found, "DeviceTopics.all() must list every topic property"
    return found


#: Fleet-wide topics (not under one device), by channel name.
FLEET_TOPICS = {
    "relayStatus": relay_status("{prefix}", "{relayId}"),
    "skillHead": skill_head("{prefix}", "{skill}", "{encoder}"),
}


def test_channels_are_exactly_the_device_and_fleet_topics(spec: dict[str, Any]) -> None:
    documented = {name: channel["address"] for name, channel in spec["channels"].items()}
    assert documented == _device_topics("{prefix}", "{deviceId}") | FLEET_TOPICS


def test_channel_parameters_match_their_address(spec: dict[str, Any]) -> None:
    for name, channel in spec["channels"].items():
        placeholders = set(re.findall(r"\{(\w+)\}", channel["address"]))
        assert placeholders == set(channel.get("parameters", {})), name


def _operations_by_channel(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {op["channel"]["$ref"].rsplit("/", 1)[-1]: op for op in spec["operations"].values()}


def test_operations_say_who_sends_what(spec: dict[str, Any]) -> None:
    actions = {name: op["action"] for name, op in _operations_by_channel(spec).items()}
    # The document describes the agent: it receives requests and cloud replies,
    # sends the rest (the relay does the opposite on escalation and cloud).
    assert actions == {
        "request": "receive",
        "response": "send",
        "status": "send",
        "escalation": "send",
        "cloud": "receive",
        "telemetry": "send",
        "config": "receive",
        "model": "receive",
        "relayStatus": "receive",
        "skillHead": "receive",
    }


def test_only_status_config_and_model_are_retained(spec: dict[str, Any]) -> None:
    for name, op in _operations_by_channel(spec).items():
        mqtt = op["bindings"]["mqtt"]
        assert mqtt["qos"] == 1, name
        assert mqtt.get("retain", False) is (name in ("status", "config", "model")), name
    assert "retain" in spec["channels"]["status"]["description"].lower()


def test_request_reply_uses_mqtt5_response_topic(spec: dict[str, Any]) -> None:
    reply = spec["operations"]["receiveRequest"]["reply"]
    assert reply["address"]["location"] == "$message.header#/responseTopic"
    assert reply["channel"] == {"$ref": "#/channels/response"}
    messages = spec["components"]["messages"]
    for name in ("request", "response"):
        assert messages[name]["correlationId"]["location"] == CORRELATION, name
        assert "correlationData" in messages[name]["headers"]["properties"], name
    assert "Response Topic" in spec["channels"]["response"]["description"]


def test_only_escalations_expire(spec: dict[str, Any]) -> None:
    for name, op in _operations_by_channel(spec).items():
        expiry = op["bindings"]["mqtt"].get("messageExpiryInterval")
        assert (expiry is not None) is (name == "escalation"), name
    expiry = _operations_by_channel(spec)["escalation"]["bindings"]["mqtt"]["messageExpiryInterval"]
    assert expiry["type"] == "integer"
    assert expiry["minimum"] == 1  # 0 would mean "expire at once" to nobody's benefit
    headers = spec["components"]["messages"]["escalation"]["headers"]
    assert "messageExpiryInterval" in headers["properties"]
    assert "deadline" in spec["channels"]["escalation"]["description"]


def test_escalation_carries_device_id_and_correlation(spec: dict[str, Any]) -> None:
    messages = spec["components"]["messages"]
    for name in ("escalation", "cloudReply"):
        assert messages[name]["correlationId"]["location"] == CORRELATION, name
        assert "correlationData" in messages[name]["headers"]["required"], name
    user = messages["escalation"]["headers"]["properties"]["userProperties"]
    assert user["required"] == ["device_id"]
    assert user["properties"]["device_id"]["type"] == "string"


def test_escalation_is_answered_on_the_cloud_channel(spec: dict[str, Any]) -> None:
    reply = spec["operations"]["sendEscalation"]["reply"]
    assert reply["channel"] == {"$ref": "#/channels/cloud"}
    assert reply["messages"] == [{"$ref": "#/channels/cloud/messages/cloudReply"}]


def test_relay_shared_subscription_is_documented(spec: dict[str, Any]) -> None:
    """The relay's view: what escalation_subscription() builds, with and without a group."""
    description = spec["channels"]["escalation"]["description"]
    shared = escalation_subscription("{prefix}", "{group}")
    assert shared.startswith("$share/{group}/")
    assert f"`{shared}`" in description
    assert f"`{escalation_subscription('{prefix}', None)}`" in description
    assert f"`{shared}`" in spec["info"]["description"]


def test_reply_sources_and_supersedes_are_documented(spec: dict[str, Any]) -> None:
    response = spec["components"]["messages"]["response"]
    for text in (response["description"], spec["info"]["description"]):
        for source in Source:
            assert f"`{source.value}`" in text, source
        assert "`supersedes: true`" in text
        assert "`corrections" in text
    corrections = [
        example["payload"]
        for example in response["examples"]
        if example["payload"].get("supersedes") and example["payload"]["ok"]
    ]
    assert corrections, "no example of a correction"
    assert all(payload["source"] == Source.CLOUD for payload in corrections)


def test_every_message_has_an_example(spec: dict[str, Any]) -> None:
    for name, message in spec["components"]["messages"].items():
        assert message.get("examples"), name


# -- error codes -------------------------------------------------------------


def test_every_error_code_is_documented(spec: dict[str, Any]) -> None:
    table = spec["components"]["messages"]["response"]["description"]
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", table, flags=re.MULTILINE))
    assert documented == {code.value for code in ErrorCode}


# -- docs/schemas ------------------------------------------------------------


def test_committed_schema_files_are_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edge_slm.schemas", "--check", str(SCHEMA_DIR)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_written_files_are_stable_and_identified(tmp_path: Path) -> None:
    paths = schemas.write_schemas(tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"{m}.v1.schema.json" for m in WIRE_MODELS)
    for path in paths:
        text = path.read_text(encoding="utf-8")
        document = json.loads(text)
        assert text.endswith("}\n")
        assert text == json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        name = path.name.split(".", 1)[0]
        assert document["title"] == name
        assert document["$id"] == f"urn:edge-slm:schema:{name}.v1"
        jsonschema.Draft202012Validator.check_schema(document)


@pytest.mark.parametrize("damage", ["edit", "delete", "stale"])
def test_check_detects_drift(tmp_path: Path, damage: str) -> None:
    schemas.write_schemas(tmp_path)
    assert schemas.main(["--check", str(tmp_path)]) == 0
    target = tmp_path / schemas.file_name("Request")
    if damage == "edit":
        target.write_text(target.read_text(encoding="utf-8").replace("8192", "8193"))
    elif damage == "delete":
        target.unlink()
    else:
        (tmp_path / schemas.file_name("Gone")).write_text("{}\n")
    assert schemas.main(["--check", str(tmp_path)]) == 1
    schemas.write_schemas(tmp_path)
    assert schemas.main(["--check", str(tmp_path)]) == 0
