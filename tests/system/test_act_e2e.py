"""An ``act`` end to end (#17): real broker, agent, relay, and ``edge-agent serve`` as the cloud.

The edge call is made unsure on purpose (act threshold 1.0), so it escalates; the
relay forwards the tool set's tools with ``tool_choice: required`` to the cloud
(serve, constrained the same way), validates the call, and the app gets it.
"""

from __future__ import annotations

import json

import jsonschema

from agent.actions import TOOL_SETS
from tests.support.system import System

ALWAYS_ESCALATE = json.dumps({"act": 1.0, "extract": 1.0})


def test_act_escalates_through_the_relay_and_returns_a_valid_call(system: System) -> None:
    system.start_relay()
    system.start_agent(EDGE_AGENT_POLICY__THRESHOLDS=ALWAYS_ESCALATE)
    system.ask("act-1", task="act", tool_set="home", text="set the bedroom to 21 degrees")
    reply = system.app.next_reply(timeout=90).payload
    assert reply["ok"] is True, reply.get("error")
    assert reply["source"] == "cloud", json.dumps(reply)
    assert reply["escalated"] is True
    call = reply["tool_call"]
    home = TOOL_SETS.get("home")
    assert home is not None
    params = {t.name: t.function.parameters for t in home.tools}
    jsonschema.validate(call["arguments"], params[call["name"]])
    escalation = system.spy.next_reply().payload
    assert escalation["task"] == "act"
    assert [t["function"]["name"] for t in escalation["tools"]] == list(params)
    assert "risk" not in escalation["tools"][0]  # edge-only fields stay on the device
    assert "field_confidence" not in escalation["edge"]
    [row] = [r for r in system.relay_rows() if r["request_id"] == "act-1"]
    assert row["outcome"] == "ok"
    assert json.loads(row["cloud_answer"]) == call  # the log shows the call
    assert row["cloud_tool_call"] == call  # and keeps it as a call, next to the tools
    assert row["tools"] == escalation["tools"]
    assert row["edge_tool_call"] == escalation["edge"].get("tool_call")


def test_extract_with_a_schema_escalates_and_comes_back_valid(system: System) -> None:
    schema = {
        "type": "object",
        "properties": {"room": {"type": "string"}, "celsius": {"type": "number"}},
        "required": ["room", "celsius"],
        "additionalProperties": False,
    }
    system.start_relay()
    system.start_agent(EDGE_AGENT_POLICY__THRESHOLDS=ALWAYS_ESCALATE)
    system.ask("ex-1", task="extract", schema=schema, text="the bedroom should be 21 degrees")
    reply = system.app.next_reply(timeout=90).payload
    assert reply["ok"] is True, reply.get("error")
    assert reply["source"] == "cloud", json.dumps(reply)
    jsonschema.validate(reply["data"], schema)


def test_act_deadline_gives_the_edge_call_then_the_cloud_correction(system: System) -> None:
    """As for labels: the relay is down, the deadline passes, the app gets the edge call
    (edge-fallback); the relay comes back and the cloud's call follows as a correction."""
    system.start_agent()
    system.ask(
        "late-act",
        task="act",
        tool_set="home",
        text="make the office 19 degrees",
        cloud="always",
        # Room for the first act of a fresh agent (the tool set's prefill and grammar)
        # on a loaded 2-core runner: at 3 s it was sometimes deadline_exceeded instead.
        deadline_ms=12_000,
    )
    fallback = system.app.next_reply(timeout=60).payload
    assert fallback.get("source") == "edge-fallback", fallback
    assert fallback["escalated"] is True
    assert "field_confidence" in fallback
    assert ("tool_call" in fallback) or fallback["confidence"] == 0.0
    system.start_relay()
    correction = system.app.next_reply(timeout=90).payload
    assert correction["id"] == "late-act"
    assert correction["source"] == "cloud"
    assert correction["supersedes"] is True
    home = TOOL_SETS.get("home")
    assert home is not None
    assert correction["tool_call"]["name"] in {t.name for t in home.tools}
