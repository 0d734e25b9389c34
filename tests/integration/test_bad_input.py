"""Every bad input gets a typed error reply and a log line; the daemon lives on."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from edge_slm.topics import DeviceTopics
from tests.support.agent import AgentProcess, StartAgent
from tests.support.app import AppClient

VALID = {"v": 1, "text": "turn off the lights", "task": "classify", "labels": ["on", "off"]}

CASES: list[tuple[str, bytes | dict[str, Any], str, str | None]] = [
    ("invalid_json", b'{"v": 1, "text": ', "invalid_json", None),
    ("invalid_utf8", b'{"v": 1, "text": "\xff\xfe"}', "invalid_utf8", None),
    ("not_an_object", b"[1, 2, 3]", "invalid_request", None),
    (
        "schema_violation",
        {**VALID, "id": "bad-kind", "kind": "video"},
        "invalid_request",
        "bad-kind",
    ),
    (
        "classify_without_labels",
        {"v": 1, "id": "no-labels", "text": "hi", "task": "classify"},
        "invalid_request",
        "no-labels",
    ),
    ("missing_version", {"id": "no-v", "text": "hi"}, "invalid_request", "no-v"),
    ("unknown_version", {**VALID, "id": "v2", "v": 2}, "unsupported_version", "v2"),
    ("too_large", {**VALID, "id": "big", "text": "x" * 20_000}, "payload_too_large", None),
    (
        "max_tokens_over_cap",
        {"v": 1, "id": "greedy", "text": "hi", "max_tokens": 100_000},
        "max_tokens_exceeded",
        "greedy",
    ),
    (
        "expired_deadline",
        {**VALID, "id": "late", "deadline_ms": 500, "sent_at": time.time() - 60},
        "deadline_exceeded",
        "late",
    ),
]


def _events(agent: AgentProcess, name: str) -> list[dict[str, object]]:
    return [e for e in agent.log_events() if e.get("event") == name]


@pytest.mark.parametrize(
    ("payload", "code", "request_id"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_input_gets_typed_error(
    app: AppClient,
    topics: DeviceTopics,
    agent: AgentProcess,
    payload: bytes | dict[str, Any],
    code: str,
    request_id: str | None,
) -> None:
    reply_topic = f"apps/{uuid.uuid4().hex}/reply"
    app.subscribe(reply_topic)
    app.publish(topics.request, payload, response_topic=reply_topic, correlation_data=b"c-1")
    reply = app.next_reply()
    assert reply.topic == reply_topic
    assert reply.correlation_data == b"c-1"
    assert reply.payload["ok"] is False
    assert reply.payload["error"]["code"] == code
    assert reply.payload["error"]["message"]
    assert reply.payload.get("id") == request_id
    deadline = time.monotonic() + 5
    while not _events(agent, "request_rejected") and time.monotonic() < deadline:
        time.sleep(0.02)
    rejected = _events(agent, "request_rejected")
    assert [e["code"] for e in rejected] == [code]
    # The daemon lives on and still answers.
    app.publish(topics.request, {**VALID, "id": "after"}, response_topic=reply_topic)
    after = app.next_reply()
    assert after.payload["id"] == "after"
    assert after.payload["ok"] is True
    assert agent.proc.poll() is None


def test_error_reply_goes_to_reply_to_of_an_invalid_request(
    app: AppClient, topics: DeviceTopics, agent: AgentProcess
) -> None:
    """A v3.1.1-style request that fails validation still reaches its app."""
    reply_topic = f"apps/{uuid.uuid4().hex}/reply"
    app.subscribe(reply_topic)
    app.publish(topics.request, {"v": 1, "id": "r", "task": "shout", "reply_to": reply_topic})
    reply = app.next_reply()
    assert reply.topic == reply_topic
    assert reply.payload["error"]["code"] == "invalid_request"
    assert "task" in reply.payload["error"]["message"]


def test_deadline_during_generation(
    app: AppClient, topics: DeviceTopics, agent: AgentProcess
) -> None:
    reply_topic = f"apps/{uuid.uuid4().hex}/reply"
    app.subscribe(reply_topic)
    request = {
        "v": 1,
        "id": "slow",
        "text": "Write a long story about a lighthouse keeper.",
        "max_tokens": 250,
        "deadline_ms": 150,
    }
    app.publish(topics.request, request, response_topic=reply_topic)
    reply = app.next_reply()
    assert reply.payload["id"] == "slow"
    assert reply.payload["ok"] is False
    assert reply.payload["error"]["code"] == "deadline_exceeded"
    # A late answer must never follow the error.
    app.publish(topics.request, {**VALID, "id": "next"}, response_topic=reply_topic)
    assert app.next_reply().payload["id"] == "next"


def test_full_queue_replies_busy_and_loses_nothing(
    app: AppClient, topics: DeviceTopics, start_agent: StartAgent
) -> None:
    agent: AgentProcess = start_agent(EDGE_AGENT_LIMITS__QUEUE_SIZE="1")
    reply_topic = f"apps/{uuid.uuid4().hex}/reply"
    app.subscribe(reply_topic)
    ids = [f"burst-{k}" for k in range(8)]
    for request_id in ids:
        app.publish(
            topics.request,
            {"v": 1, "id": request_id, "text": "Describe the sea.", "max_tokens": 48},
            response_topic=reply_topic,
            qos=0,
        )
    replies = {r.payload["id"]: r.payload for r in app.collect(len(ids), timeout=120)}
    assert sorted(replies) == ids  # every request got exactly one reply
    busy = [p for p in replies.values() if not p["ok"]]
    assert busy, "a queue of 1 must overflow under a burst of 8"
    for payload in busy:
        assert payload["error"]["code"] == "busy"
        assert payload["error"]["retry_after_ms"] > 0
    assert any(p["ok"] for p in replies.values())
    assert app.replies.empty()
    assert len(_events(agent, "request_rejected")) == len(busy)
