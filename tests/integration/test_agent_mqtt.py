"""The real agent daemon, a real mosquitto, the real SmolLM2 build."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid

import pytest

from edge_slm.topics import DeviceTopics
from tests.support.agent import AgentProcess, StartAgent, wait_for_status
from tests.support.app import AppClient
from tests.support.broker import PrivateBroker

INTENTS = ["lights_on", "lights_off", "set_temperature", "play_music"]


def _voice(text: str = "turn on the kitchen lights", **extra: object) -> dict[str, object]:
    return {"v": 1, "kind": "voice", "text": text, "task": "classify", "labels": INTENTS, **extra}


def _assert_edge_answer(payload: dict[str, object]) -> None:
    assert payload["ok"] is True, payload
    assert payload["source"] == "edge"
    assert payload["escalated"] is False
    assert payload["model"] == "smollm2-135m-instruct"
    confidence = payload["confidence"]
    assert isinstance(confidence, float)
    assert 0.0 <= confidence <= 1.0
    tokens = payload["tokens"]
    assert isinstance(tokens, dict)
    assert tokens["prompt"] > 0
    assert payload["latency_ms"] > 0


@pytest.mark.skipif(shutil.which("mosquitto_rr") is None, reason="mosquitto-clients missing")
def test_mosquitto_rr_v5_round_trip(
    broker: PrivateBroker, topics: DeviceTopics, agent: AgentProcess
) -> None:
    request = _voice(id="rr-1")
    out = subprocess.run(
        [
            "mosquitto_rr",
            "-V",
            "mqttv5",
            "-p",
            str(broker.port),
            "-q",
            "1",
            "-t",
            topics.request,
            "-e",
            f"apps/{uuid.uuid4().hex}/reply",
            "-m",
            json.dumps(request),
            "-W",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )
    reply = json.loads(out.stdout)
    _assert_edge_answer(reply)
    assert reply["id"] == "rr-1"
    assert reply["label"] in INTENTS
    assert reply["answer"] == reply["label"]
    assert set(reply["scores"]) == set(INTENTS)
    assert sum(reply["scores"].values()) == pytest.approx(1.0, abs=1e-3)
    # the confidence is a calibrated P(correct) (zero-shot head), not the top share
    assert reply["label"] == max(reply["scores"], key=reply["scores"].__getitem__)


def test_v5_correlation_data_is_echoed(
    app: AppClient, topics: DeviceTopics, agent: AgentProcess
) -> None:
    reply_topic = f"apps/{uuid.uuid4().hex}/reply"
    app.subscribe(reply_topic)
    app.publish(
        topics.request,
        {"v": 1, "text": "What is the capital of France?", "max_tokens": 24},
        response_topic=reply_topic,
        correlation_data=b"\x00corr-42\xff",
    )
    reply = app.next_reply()
    assert reply.topic == reply_topic
    assert reply.correlation_data == b"\x00corr-42\xff"
    _assert_edge_answer(reply.payload)
    assert reply.payload["answer"]
    assert reply.payload["finish_reason"] in ("stop", "length")
    assert reply.payload["tokens"]["completion"] <= 24


def test_v311_client_uses_reply_to(
    broker: PrivateBroker, topics: DeviceTopics, agent: AgentProcess
) -> None:
    app = AppClient(broker.port, v5=False)
    try:
        reply_topic = f"apps/{uuid.uuid4().hex}/reply"
        app.subscribe(reply_topic)
        sensor = {"name": "living_room/temp", "value": 31.5, "unit": "°C", "ts": time.time()}
        app.publish(
            topics.request,
            {
                "v": 1,
                "id": "sensor-1",
                "kind": "sensor",
                "sensor": sensor,
                "task": "classify",
                "labels": ["normal", "too_hot", "too_cold"],
                "reply_to": reply_topic,
            },
        )
        reply = app.next_reply()
        assert reply.topic == reply_topic
        assert reply.payload["id"] == "sensor-1"
        _assert_edge_answer(reply.payload)
        assert reply.payload["label"] in ("normal", "too_hot", "too_cold")
    finally:
        app.close()


def test_default_response_topic(app: AppClient, topics: DeviceTopics, agent: AgentProcess) -> None:
    app.subscribe(topics.response)
    request = {"v": 1, "text": "The door opened twice.", "task": "summarize", "max_tokens": 16}
    app.publish(topics.request, request)
    reply = app.next_reply()
    assert reply.topic == topics.response
    _assert_edge_answer(reply.payload)
    assert isinstance(reply.payload["id"], str)
    assert len(reply.payload["id"]) == 32  # generated uuid4 hex


def test_birth_message_is_retained(
    broker: PrivateBroker, topics: DeviceTopics, agent: AgentProcess
) -> None:
    status = wait_for_status(broker.port, topics.status, "online", timeout=5)
    [check] = [e for e in agent.log_events() if e.get("event") == "self_test"]
    assert check["tok_s"] > 0  # the model generated at start-up, and was measured
    assert check["provider"] == "cpu"
    assert "conditions" not in status  # no silent fallback, nothing degraded
    assert status["model"] == "smollm2-135m-instruct"
    assert status["provider"] == "cpu"
    assert status["device_id"] == agent.device_id
    assert status["version"]


def test_concurrent_clients_each_get_their_own_replies(
    broker: PrivateBroker, topics: DeviceTopics, agent: AgentProcess
) -> None:
    clients = [AppClient(broker.port) for _ in range(4)]
    try:
        expected: dict[int, set[str]] = {}
        for n, client in enumerate(clients):
            reply_topic = f"apps/{uuid.uuid4().hex}/reply"
            client.subscribe(reply_topic)
            expected[n] = set()
            for k in range(5):
                request_id = f"c{n}-r{k}"
                expected[n].add(request_id)
                client.publish(
                    topics.request,
                    _voice(id=request_id),
                    response_topic=reply_topic,
                    correlation_data=request_id.encode(),
                )
        for n, client in enumerate(clients):
            replies = client.collect(5, timeout=120)
            assert {r.payload["id"] for r in replies} == expected[n]
            for reply in replies:
                _assert_edge_answer(reply.payload)
                assert reply.correlation_data == reply.payload["id"].encode()
            assert client.replies.empty()
    finally:
        for client in clients:
            client.close()


def test_sigterm_drains_in_flight_work(
    broker: PrivateBroker, topics: DeviceTopics, agent: AgentProcess, app: AppClient
) -> None:
    reply_topic = f"apps/{uuid.uuid4().hex}/reply"
    app.subscribe(reply_topic)
    ids = [f"drain-{k}" for k in range(4)]
    for request_id in ids:
        app.publish(
            topics.request,
            {"v": 1, "id": request_id, "text": "Tell me about the weather.", "max_tokens": 32},
            response_topic=reply_topic,
        )
    # Wait until the agent has accepted all four, then stop it mid-queue.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        accepted = [e for e in agent.log_events() if e.get("event") == "request_accepted"]
        if len(accepted) == len(ids):
            break
        time.sleep(0.02)
    assert agent.terminate() == 0
    replies = app.collect(len(ids), timeout=30)
    assert sorted(r.payload["id"] for r in replies) == ids
    for reply in replies:
        _assert_edge_answer(reply.payload)
    assert wait_for_status(broker.port, topics.status, "offline", timeout=5)["state"] == "offline"
    events = [e.get("event") for e in agent.log_events()]
    assert "draining" in events
    assert events[-1] == "agent_stopped"


def test_drain_timeout_answers_leftovers_with_shutting_down(
    broker: PrivateBroker, topics: DeviceTopics, start_agent: StartAgent, app: AppClient
) -> None:
    agent: AgentProcess = start_agent(EDGE_AGENT_LIMITS__DRAIN_TIMEOUT_S="0")
    reply_topic = f"apps/{uuid.uuid4().hex}/reply"
    app.subscribe(reply_topic)
    for k in range(6):
        app.publish(
            topics.request,
            {
                "v": 1,
                "id": f"left-{k}",
                "text": "Write a long story about a robot.",
                "max_tokens": 200,
            },
            response_topic=reply_topic,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if sum(e.get("event") == "request_accepted" for e in agent.log_events()) == 6:
            break
        time.sleep(0.02)
    assert agent.terminate() == 0
    replies = app.collect(6, timeout=60)
    assert sorted(r.payload["id"] for r in replies) == [f"left-{k}" for k in range(6)]
    codes = [r.payload["error"]["code"] for r in replies if not r.payload["ok"]]
    assert "shutting_down" in codes
    assert set(codes) == {"shutting_down"}
