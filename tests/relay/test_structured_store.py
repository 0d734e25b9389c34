"""Store migration 6 (#17, actions, not labels): an act escalation's tools and both sides'
calls, an extract escalation's schema and both sides' objects, kept as JSON and shown by
``export``, ``logs --json`` and the dashboard's rows; on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from cloud_relay.cli import main
from cloud_relay.dashboard.queries import row_dict
from cloud_relay.render import export_record
from cloud_relay.store import Final, LogQuery, LogRow, NewEscalation, RelayStore, open_store
from cloud_relay.store import sql as sqlmod
from edge_slm.contract import Outcome
from tests.relay.migrations import schema_at

ROOM = {
    "type": "object",
    "properties": {"room": {"type": "string"}, "celsius": {"type": "number"}},
    "required": ["room", "celsius"],
    "additionalProperties": False,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "set_temperature",
            "description": "Set a room's thermostat; «Küche» is the kitchen.",
            "parameters": ROOM,
        },
    },
    {"type": "function", "function": {"name": "lights_off", "parameters": {"type": "object"}}},
]
EDGE_CALL = {"name": "set_temperature", "arguments": {"room": "bedroom", "celsius": 20}}
CLOUD_CALL = {"name": "set_temperature", "arguments": {"room": "bedroom", "celsius": 21.5}}


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _log(store: RelayStore, rid: str, case: dict[str, Any], final: dict[str, Any]) -> None:
    """Claim and finalize one escalation of device d1 (``case``: NewEscalation fields)."""
    store.claim(
        NewEscalation(
            device_id="d1", request_id=rid, relay_id="r", received_at=time.time(), **case
        ),
        stale_before=0,
    )
    done = {"outcome": Outcome.OK, "answered_at": time.time(), "reply": "{}", "latency_ms": 5.0}
    store.finalize("d1", rid, Final(**(done | final)))


def _act(store: RelayStore, rid: str = "act-1") -> None:
    case = {
        "task": "act",
        "kind": "text",
        "reason": "low_confidence",
        "text": "set the bedroom to 21.5 degrees",
        "tools": TOOLS,
        "edge_answer": _compact(EDGE_CALL),
        "edge_tool_call": EDGE_CALL,
        "edge_confidence": 0.4,
        "edge_model": "smol",
    }
    final = {"llm_model": "big", "cloud_answer": _compact(CLOUD_CALL), "agreement": False}
    _log(store, rid, case, final | {"cloud_tool_call": CLOUD_CALL})


def _extract(store: RelayStore, rid: str = "ex-1", *, edge_data: dict[str, Any]) -> None:
    cloud = {"room": "bedroom", "celsius": 21}
    case = {
        "task": "extract",
        "text": "the bedroom should be 21 degrees",
        "json_schema": ROOM,
        "edge_answer": _compact(edge_data),
        "edge_data": edge_data,
        "edge_confidence": 0.3,
        "edge_model": "smol",
    }
    _log(
        store, rid, case, {"llm_model": "big", "cloud_answer": _compact(cloud), "cloud_data": cloud}
    )


def _one(store: RelayStore, rid: str) -> LogRow:
    (row,) = [r for r in store.logs(LogQuery()) if r.request_id == rid]
    return row


def test_a_version_5_store_is_migrated_and_its_rows_read_without_structure(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with schema_at(monkeypatch, 5):
        old = open_store(store_url)
        # A relay of the previous version logs an act row: the call only as answer text.
        old._db.execute(  # type: ignore[attr-defined]
            "INSERT INTO relay_log (device_id, request_id, relay_id, claimed_at, received_at, "
            "task, outcome, cloud_answer, skill) VALUES ('old', 'r0', 'r', 1.0, 1.0, 'act', 'ok', "
            "?, 'home')",
            (_compact(CLOUD_CALL),),
        )
        old.close()
    new = open_store(store_url)
    try:
        versions = new._db.query("SELECT version FROM relay_schema_version ORDER BY version")  # type: ignore[attr-defined]
        assert [v for (v,) in versions] == list(range(1, sqlmod.SCHEMA_VERSION + 1))
        (row,) = new.logs(LogQuery())
        assert (row.request_id, row.task, row.skill) == ("r0", "act", "home")
        assert json.loads(row.cloud_answer or "") == CLOUD_CALL
        structured = (row.tools, row.json_schema, row.edge_tool_call, row.edge_data)
        assert structured == (None, None, None, None)
        assert (row.cloud_tool_call, row.cloud_data) == (None, None)
        record = export_record(row)
        assert (record["tools"], record["schema"], record["cloud"]["tool_call"]) == (
            None,
            None,
            None,
        )
        # The new relay writes the new columns next to the old row.
        _act(new)
        assert _one(new, "act-1").cloud_tool_call == CLOUD_CALL
    finally:
        new.close()


def test_act_tools_and_both_calls_round_trip(store: RelayStore) -> None:
    _act(store)
    row = _one(store, "act-1")
    assert row.tools == TOOLS  # exactly as received: order, nesting, non-ASCII text
    assert row.edge_tool_call == EDGE_CALL
    assert row.cloud_tool_call == CLOUD_CALL
    assert (row.json_schema, row.edge_data, row.cloud_data) == (None, None, None)
    assert row.cloud_answer == _compact(CLOUD_CALL)  # the answer text is unchanged


def test_extract_schema_and_both_objects_round_trip(store: RelayStore) -> None:
    _extract(store, edge_data={})  # an empty object stays an object, not null
    row = _one(store, "ex-1")
    assert row.json_schema == ROOM
    assert row.edge_data == {}
    assert row.cloud_data == {"room": "bedroom", "celsius": 21}
    assert (row.tools, row.edge_tool_call, row.cloud_tool_call) == (None, None, None)


def test_a_failed_act_keeps_the_case_and_the_edge_call(store: RelayStore) -> None:
    error = "schema_mismatch: the cloud called an unknown tool 'unlock_door'"
    case = {"task": "act", "tools": TOOLS, "edge_tool_call": EDGE_CALL}
    _log(store, "bad", case, {"outcome": Outcome.LLM_ERROR, "error": error})
    row = _one(store, "bad")
    assert (row.tools, row.edge_tool_call, row.cloud_tool_call) == (TOOLS, EDGE_CALL, None)


def test_export_of_an_act_row(store: RelayStore) -> None:
    record = export_record(_act_row(store))
    assert record["task"] == "act"
    assert record["tools"] == TOOLS
    assert record["schema"] is None
    assert record["cloud"]["tool_call"] == CLOUD_CALL
    assert record["edge"]["tool_call"] == EDGE_CALL
    assert (record["cloud"]["data"], record["edge"]["data"]) == (None, None)
    # The keys the tune reads are unchanged.
    assert record["cloud"]["answer"] == _compact(CLOUD_CALL)
    assert (record["edge"]["model"], record["cloud"]["model"]) == ("smol", "big")
    assert record["text"] == "set the bedroom to 21.5 degrees"


def _act_row(store: RelayStore) -> LogRow:
    _act(store)
    return _one(store, "act-1")


def test_export_of_an_extract_row(store: RelayStore) -> None:
    _extract(store, edge_data={"room": "bedroom", "celsius": 20})
    record = export_record(_one(store, "ex-1"))
    assert record["schema"] == ROOM
    assert record["tools"] is None
    assert record["cloud"]["data"] == {"room": "bedroom", "celsius": 21}
    assert record["edge"]["data"] == {"room": "bedroom", "celsius": 20}
    assert (record["cloud"]["tool_call"], record["edge"]["tool_call"]) == (None, None)


def test_every_export_record_has_the_same_keys(store: RelayStore) -> None:
    _act(store)
    _extract(store, edge_data={"room": "x", "celsius": 1})
    store.claim(
        NewEscalation(
            device_id="d1", request_id="cls", relay_id="r", received_at=1.0, task="classify"
        ),
        stale_before=0,
    )
    records = [export_record(r) for r in store.logs(LogQuery())]
    assert len(records) == 3
    assert len({tuple(r) for r in records}) == 1
    assert len({tuple(r["cloud"]) for r in records}) == 1
    assert len({tuple(r["edge"]) for r in records}) == 1
    classify = next(r for r in records if r["task"] == "classify")
    assert (classify["tools"], classify["schema"], classify["cloud"]["tool_call"]) == (
        None,
        None,
        None,
    )


def test_dashboard_rows_carry_the_calls_and_objects(store: RelayStore) -> None:
    _act(store)
    _extract(store, edge_data={"room": "bedroom", "celsius": 20})
    act = row_dict(_one(store, "act-1"))
    assert (act["edge_tool_call"], act["cloud_tool_call"]) == (EDGE_CALL, CLOUD_CALL)
    assert (act["edge_data"], act["cloud_data"]) == (None, None)
    extract = row_dict(_one(store, "ex-1"))
    assert extract["cloud_data"] == {"room": "bedroom", "celsius": 21}
    assert extract["edge_data"] == {"room": "bedroom", "celsius": 20}
    # The request's tools and schema stay out of the table's rows.
    assert "tools" not in act
    assert "schema" not in extract
    assert "json_schema" not in extract


def test_logs_json_has_the_structured_fields(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    s = open_store(store_url)
    try:
        _act(s)
    finally:
        s.close()
    assert main(["logs", "--db", store_url, "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    logged = json.loads(line)
    assert logged["tools"] == TOOLS
    assert logged["edge_tool_call"] == EDGE_CALL
    assert logged["cloud_tool_call"] == CLOUD_CALL
    assert (logged["json_schema"], logged["cloud_data"]) == (None, None)
    assert main(["logs", "--db", store_url]) == 0
    assert "set_temperature" in capsys.readouterr().out  # the text view: the call's text
