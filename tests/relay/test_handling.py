"""Handler (claim, budget, classify, outcome, reply) with a real store and HTTP server.

The store is reached through the group-commit writer, as in the daemon.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from cloud_relay.breaker import CircuitBreaker
from cloud_relay.config import RelaySettings
from cloud_relay.handling import Handler
from cloud_relay.intake import Envelope, parse_inbound
from cloud_relay.llm import OpenAiChat
from cloud_relay.store import LogQuery, RelayStore, open_store
from cloud_relay.store.writer import StoreWriter
from edge_slm.contract import Outcome
from edge_slm.mqtt import Inbound
from tests.relay.aio import LoopRunner
from tests.relay.faultserver import FaultServer, Step


class Rig:
    live: ClassVar[list[Rig]] = []  # closed after each test

    def __init__(self, server: FaultServer, store: RelayStore, **limits: Any) -> None:
        self.server = server
        self.store = store
        self.runner = LoopRunner()
        self.writer = StoreWriter(store)
        self.writer.start()
        Rig.live.append(self)
        self.sent: list[tuple[str, dict[str, Any], bytes | None]] = []
        self.settings = RelaySettings.model_validate(
            {
                "llm": {"url": server.url, "model": "fault-model", "backoff_base_s": 0.01},
                "limits": limits,
                "db": "sqlite:///unused.db",
            }
        )
        self.llm = OpenAiChat(
            self.settings.llm,
            model="fault-model",
            breaker=CircuitBreaker(5, 30),
            max_concurrency=2,
        )
        self.handler = Handler(
            self.settings,
            store=self.writer,
            llm=self.llm,
            publish=lambda t, p, c: self.sent.append((t, json.loads(p), c)),
            relay_id="test-relay",
        )

    def send(
        self, device: str = "dev1", rid: str = "r1", prop: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "v": 1,
            "id": rid,
            "device_id": device,
            "kind": "text",
            "task": "answer",
            "text": "how warm is it?",
            "max_tokens": 16,
            "reason": "low_confidence",
            "reason_text": "edge unsure",
            "edge": {"answer": "it is warm", "confidence": 0.3, "model": "smol"},
            "created_at": time.time(),
            "deadline_ms": 5000,
        }
        body.update(fields)
        msg = Inbound(
            topic=f"slm/{device}/escalation",
            payload=json.dumps(body).encode(),
            qos=1,
            retain=False,
            correlation_data=rid.encode(),
            user_properties=(("device_id", prop or device),),
        )
        env = parse_inbound(msg, "slm")
        assert env is not None
        self.handle(env)
        topic, reply, corr = self.sent[-1]
        assert topic == f"slm/{device}/cloud"
        assert corr == rid.encode()
        return reply

    def handle(self, env: Envelope) -> None:
        self.runner.run(self.handler.run(env))

    def close(self) -> None:
        self.writer.stop()
        self.runner.run(self.llm.aclose())
        self.runner.close()


@pytest.fixture(autouse=True)
def _close_rigs() -> Iterator[None]:
    yield
    while Rig.live:
        Rig.live.pop().close()


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer().running() as s:
        yield s


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[RelayStore]:
    s = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    yield s
    s.close()


def test_ok_reply_and_row(server: FaultServer, sqlite_store: RelayStore) -> None:
    server.default = Step(content="It is 21 degrees, warm.", extra={"x_confidence": 0.7})
    rig = Rig(server, sqlite_store)
    reply = rig.send()
    assert reply["ok"] is True
    assert reply["outcome"] == "ok"
    assert reply["answer"] == "It is 21 degrees, warm."
    assert reply["tokens"] == {"prompt": 11, "completion": 3}
    assert reply["confidence"] == 0.7
    (row,) = sqlite_store.logs(LogQuery())
    assert row.outcome is Outcome.OK
    assert row.cost_usd == pytest.approx((11 * 0.5 + 3 * 1.5) / 1e6)  # the `*` price
    assert row.attempts == 1
    assert row.llm_start is not None
    assert row.agreement is True  # "it is warm" shares enough words
    # The device text went in as delimited data, never into the system prompt.
    messages = server.requests[0]["messages"]
    assert "how warm" not in messages[0]["content"]
    assert "<<<BEGIN_DATA>>>\ntext:\nhow warm is it?" in messages[1]["content"]


def test_duplicate_resends_stored_reply_without_llm(
    server: FaultServer, sqlite_store: RelayStore
) -> None:
    rig = Rig(server, sqlite_store)
    first = rig.send()
    second = rig.send()
    assert second == first
    assert server.hits == 1


def test_daily_token_budget_blocks_without_http(
    server: FaultServer, sqlite_store: RelayStore
) -> None:
    rig = Rig(server, sqlite_store, daily_tokens=20, rate_per_minute=0)
    assert rig.send(rid="a")["ok"] is True  # 14 tokens
    assert rig.send(rid="b")["ok"] is True  # 28 >= 20 after this one
    reply = rig.send(rid="c")
    assert reply["outcome"] == "budget"
    assert reply["error"]["code"] == "busy"
    assert reply["error"]["retry_after_ms"] > 0
    assert server.hits == 2
    assert rig.send(device="other", rid="c")["ok"] is True  # per device


def test_rate_limit(server: FaultServer, sqlite_store: RelayStore) -> None:
    rig = Rig(server, sqlite_store, rate_per_minute=2)
    assert [rig.send(rid=f"r{i}")["outcome"] for i in range(3)] == ["ok", "ok", "budget"]
    assert server.hits == 2


def test_classify_retries_once_then_unknown(server: FaultServer, sqlite_store: RelayStore) -> None:
    rig = Rig(server, sqlite_store)
    labels = ["alarm", "normal"]
    server.script = [Step(content="I think it is an alarm because"), Step(content=" Alarm. ")]
    reply = rig.send(rid="c1", task="classify", labels=labels, edge=None)
    assert reply["label"] == "alarm"
    assert server.hits == 2
    assert "ONLY one of these labels" in server.requests[1]["messages"][-1]["content"]
    server.script = [Step(content="maybe"), Step(content="dunno")]
    reply = rig.send(rid="c2", task="classify", labels=labels)
    assert (reply["ok"], reply["label"], reply["confidence"]) == (True, "unknown", 0.0)
    row = next(r for r in sqlite_store.logs(LogQuery()) if r.request_id == "c2")
    assert row.tokens_in == 22  # both calls counted
    assert row.attempts == 2


def test_classify_agreement(server: FaultServer, sqlite_store: RelayStore) -> None:
    rig = Rig(server, sqlite_store)
    server.script = [Step(content="normal")]
    edge = {"label": "NORMAL", "answer": "normal", "confidence": 0.4, "model": "smol"}
    rig.send(rid="k", task="classify", labels=["alarm", "normal"], edge=edge)
    (row,) = sqlite_store.logs(LogQuery())
    assert (row.cloud_label, row.agreement) == ("normal", True)


def test_expired_on_arrival(server: FaultServer, sqlite_store: RelayStore) -> None:
    rig = Rig(server, sqlite_store)
    reply = rig.send(created_at=time.time() - 60, deadline_ms=1000)  # no expires_at
    assert reply["outcome"] == "expired"
    assert reply["error"]["code"] == "cloud_expired"
    reply = rig.send(rid="r2", expires_at=time.time() - 5)
    assert reply["outcome"] == "expired"
    assert server.hits == 0


def test_expires_at_wins_over_a_passed_app_deadline(
    server: FaultServer, sqlite_store: RelayStore
) -> None:
    """Past the app's deadline the answer is still wanted as a correction."""
    rig = Rig(server, sqlite_store)
    reply = rig.send(created_at=time.time() - 60, deadline_ms=1000, expires_at=time.time() + 60)
    assert reply["outcome"] == "ok"
    assert server.hits == 1


def test_retries_stop_at_expires_at(server: FaultServer, sqlite_store: RelayStore) -> None:
    server.default = Step(status=503, headers={"Retry-After": "3"})
    rig = Rig(server, sqlite_store)
    started = time.monotonic()
    reply = rig.send(expires_at=time.time() + 1.0)
    assert time.monotonic() - started < 2.5
    assert reply["outcome"] == "llm_error"
    assert reply["error"]["retry_after_ms"] == 3000
    assert server.hits == 1


def test_identity_mismatch_rejected_on_topic_device(
    server: FaultServer, sqlite_store: RelayStore
) -> None:
    rig = Rig(server, sqlite_store)
    reply = rig.send(device="dev1", prop="dev2")  # user property lies
    assert (reply["ok"], reply["outcome"], reply["error"]["code"]) == (
        False,
        "rejected",
        "invalid_request",
    )
    reply = rig.send(device="dev1", rid="r2", device_id="victim")  # payload lies
    assert reply["outcome"] == "rejected"
    assert reply["device_id"] == "dev1"
    assert all(topic == "slm/dev1/cloud" for topic, _, _ in rig.sent)
    assert server.hits == 0
    assert {r.outcome for r in sqlite_store.logs(LogQuery())} == {Outcome.REJECTED}


def test_bad_json_and_version_are_rejected_not_crashing(
    server: FaultServer, sqlite_store: RelayStore
) -> None:
    rig = Rig(server, sqlite_store)
    assert rig.send(v=2)["error"]["code"] == "unsupported_version"
    msg = Inbound(
        topic="slm/dev1/escalation",
        payload=b"{not json",
        qos=1,
        retain=False,
        correlation_data=b"broken-1",
        user_properties=(("device_id", "dev1"),),
    )
    env = parse_inbound(msg, "slm")
    assert env is not None
    rig.handle(env)
    topic, reply, _ = rig.sent[-1]
    assert (topic, reply["id"], reply["error"]["code"]) == (
        "slm/dev1/cloud",
        "broken-1",
        "invalid_json",
    )
    assert rig.send(rid="r9", max_tokens=0)["error"]["code"] == "invalid_request"
    assert len(sqlite_store.logs(LogQuery(outcome=Outcome.REJECTED))) == 3


def test_llm_failure_is_llm_error(server: FaultServer, sqlite_store: RelayStore) -> None:
    server.default = Step(status=500)
    rig = Rig(server, sqlite_store)
    reply = rig.send()
    assert (reply["ok"], reply["outcome"]) == (False, "llm_error")
    (row,) = sqlite_store.logs(LogQuery())
    assert row.attempts == 3
    assert "HTTP 500" in (row.error or "")


def test_cloud_confidence_is_rounded_as_the_edge_rounds(
    server: FaultServer, sqlite_store: RelayStore
) -> None:
    server.default = Step(content="It is warm.", extra={"x_confidence": 0.7123456789012345})
    rig = Rig(server, sqlite_store)
    assert rig.send()["confidence"] == 0.7123  # edge_slm.rounding.CONFIDENCE_DECIMALS
    (row,) = sqlite_store.logs(LogQuery())
    assert row.cloud_confidence == 0.7123


# -- extract with a schema, act (#17) -------------------------------------------

_ROOM_SCHEMA = {
    "type": "object",
    "properties": {"room": {"type": ["string", "null"]}, "celsius": {"type": ["number", "null"]}},
    "required": ["room", "celsius"],
    "additionalProperties": False,
}
_SET_TEMP = {
    "type": "function",
    "function": {
        "name": "set_temperature",
        "description": "Set a room's thermostat.",
        "parameters": _ROOM_SCHEMA,
    },
}


def _tool_message(name: str, arguments: str) -> dict[str, Any]:
    call = {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}
    return {"message": {"role": "assistant", "content": None, "tool_calls": [call]}}


def test_extract_forwards_the_schema_and_validates_the_answer(
    server: FaultServer, sqlite_store: RelayStore
) -> None:
    server.default = Step(content='{"room":"bedroom","celsius":21}')
    rig = Rig(server, sqlite_store)
    edge = {"answer": '{"room":"bed","celsius":2}', "confidence": 0.2, "model": "smol"}
    edge_data = {"room": "bed", "celsius": 2}
    reply = rig.send(
        task="extract",
        text="bedroom to 21",
        schema=_ROOM_SCHEMA,
        edge={**edge, "data": edge_data},
    )
    assert reply["ok"] is True
    assert reply["data"] == {"room": "bedroom", "celsius": 21}
    sent = server.requests[0]["response_format"]
    assert sent == {
        "type": "json_schema",
        "json_schema": {"name": "extract", "schema": _ROOM_SCHEMA, "strict": True},
    }
    # The log keeps the schema and both objects (logs, export and the dashboard show them).
    (row,) = sqlite_store.logs(LogQuery())
    assert (row.json_schema, row.edge_data, row.cloud_data) == (
        _ROOM_SCHEMA,
        edge_data,
        reply["data"],
    )
    assert (row.tools, row.edge_tool_call, row.cloud_tool_call) == (None, None, None)


@pytest.mark.parametrize(
    "content", ["not json at all", '{"room":"bedroom"}', '{"room":5,"celsius":21}', "[1]"]
)
def test_invalid_cloud_answer_is_a_typed_error_and_logged(
    server: FaultServer, sqlite_store: RelayStore, content: str
) -> None:
    """A cloud that ignores the schema: the device gets schema_mismatch, never the object."""
    server.default = Step(content=content)
    rig = Rig(server, sqlite_store)
    reply = rig.send(task="extract", text="bedroom to 21", schema=_ROOM_SCHEMA)
    assert (reply["ok"], reply["outcome"]) == (False, "llm_error")
    assert reply["error"]["code"] == "schema_mismatch"
    assert "data" not in reply
    (row,) = sqlite_store.logs(LogQuery())
    assert (row.error or "").startswith("schema_mismatch")


def test_act_forwards_tools_with_tool_choice_required_and_validates_the_call(
    server: FaultServer, sqlite_store: RelayStore
) -> None:
    server.script = [
        Step(choice_extra=_tool_message("set_temperature", '{"room":"bedroom","celsius":21}')),
        Step(choice_extra=_tool_message("set_temperature", '{"room":"bedroom"}')),
        Step(choice_extra=_tool_message("unlock_door", "{}")),
    ]
    rig = Rig(server, sqlite_store)
    edge_call = {"name": "set_temperature", "arguments": {"room": "bed", "celsius": 2}}
    edge = {
        "answer": json.dumps(edge_call),
        "tool_call": edge_call,
        "confidence": 0.2,
        "model": "m",
    }
    reply = rig.send(rid="a1", task="act", text="bedroom to 21", tools=[_SET_TEMP], edge=edge)
    assert reply["ok"] is True
    assert reply["tool_call"] == {
        "name": "set_temperature",
        "arguments": {"room": "bedroom", "celsius": 21},
    }
    assert server.requests[0]["tools"] == [_SET_TEMP]
    assert server.requests[0]["tool_choice"] == "required"
    for rid in ("a2", "a3"):
        bad = rig.send(rid=rid, task="act", text="bedroom to 21", tools=[_SET_TEMP])
        assert bad["error"]["code"] == "schema_mismatch", bad
    # The log keeps the call as the cloud answer (logs, export and the dashboard show it),
    # and as a call next to the tools and the edge's call.
    ok = [r for r in sqlite_store.logs(LogQuery()) if r.outcome is Outcome.OK]
    assert [json.loads(r.cloud_answer or "") for r in ok] == [reply["tool_call"]]
    assert [(r.tools, r.edge_tool_call, r.cloud_tool_call) for r in ok] == [
        ([_SET_TEMP], edge_call, reply["tool_call"])
    ]
    failed = [r for r in sqlite_store.logs(LogQuery()) if r.outcome is not Outcome.OK]
    assert [(r.tools, r.cloud_tool_call) for r in failed] == [([_SET_TEMP], None)] * 2
