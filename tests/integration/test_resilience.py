"""Persistent sessions and reconnects against a real mosquitto."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from edge_slm.topics import DeviceTopics
from tests.support.agent import AgentProcess, StartAgent, wait_for_status
from tests.support.app import AppClient
from tests.support.broker import PrivateBroker

pytestmark = pytest.mark.broker

REQUEST = {"v": 1, "text": "turn off the lights", "task": "classify", "labels": ["on", "off"]}


def test_qos1_requests_sent_while_agent_is_away_are_answered_after_restart(
    broker: PrivateBroker, topics: DeviceTopics, start_agent: StartAgent, app: AppClient
) -> None:
    first: AgentProcess = start_agent()
    assert first.terminate() == 0  # clean disconnect; the broker keeps the session
    wait_for_status(broker.port, topics.status, "offline", timeout=5)
    reply_topic = f"apps/{uuid.uuid4().hex}/reply"
    app.subscribe(reply_topic)
    for k in range(3):
        app.publish(topics.request, {**REQUEST, "id": f"queued-{k}"}, response_topic=reply_topic)
    start_agent()
    replies = app.collect(3, timeout=60)
    assert sorted(r.payload["id"] for r in replies) == ["queued-0", "queued-1", "queued-2"]
    assert all(r.payload["ok"] for r in replies)


def test_agent_reconnects_and_rebirths_after_broker_restart(
    topics: DeviceTopics, device_id: str, model_dir: Path, tmp_path: Path
) -> None:
    with PrivateBroker(persistence=True) as broker:
        agent = AgentProcess(
            broker_url=broker.url,
            device_id=device_id,
            log_path=tmp_path / "agent.log",
            EDGE_AGENT_MQTT__RECONNECT_MAX_S="2",
            EDGE_AGENT_CLOUD__ENABLED="false",
            EDGE_AGENT_OUTBOX__PATH=str(tmp_path / "outbox.db"),
        )
        try:
            wait_for_status(broker.port, topics.status, "online")
            broker.kill()  # no goodbye: the agent sees the socket die
            broker.start()
            # The will fired or not, the agent must re-announce itself.
            wait_for_status(broker.port, topics.status, "online", timeout=30)
            app = AppClient(broker.port)
            try:
                reply_topic = f"apps/{uuid.uuid4().hex}/reply"
                app.subscribe(reply_topic)
                app.publish(topics.request, {**REQUEST, "id": "after"}, response_topic=reply_topic)
                reply = app.next_reply(timeout=30)
                assert reply.payload["id"] == "after"
                assert reply.payload["ok"] is True
            finally:
                app.close()
            connects = [e for e in agent.log_events() if e.get("event") == "mqtt_connected"]
            assert len(connects) >= 2
        finally:
            agent.close()


def test_will_marks_device_offline_when_agent_dies(
    broker: PrivateBroker, topics: DeviceTopics, agent: AgentProcess
) -> None:
    agent.proc.kill()  # SIGKILL: no clean disconnect, so the broker sends the will
    agent.proc.wait()
    status = wait_for_status(broker.port, topics.status, "offline", timeout=60)
    assert status["device_id"] == agent.device_id


def test_requests_a_sigkilled_agent_was_holding_are_answered_after_restart(
    broker: PrivateBroker, topics: DeviceTopics, start_agent: StartAgent, app: AppClient
) -> None:
    """Accepted-but-unanswered QoS 1 requests die with the process, not with the request.

    The agent PUBACKs a request only once its reply is out, so the broker still
    holds (and redelivers) whatever the killed process had queued or was generating.
    """
    first: AgentProcess = start_agent()
    reply_topic = f"apps/{uuid.uuid4().hex}/reply"
    app.subscribe(reply_topic)
    ids = [f"held-{k}" for k in range(6)]
    for request_id in ids:  # ~1 s of generation each: most are still queued at the kill
        body = {"v": 1, "id": request_id, "text": "Describe the sea.", "max_tokens": 48}
        app.publish(topics.request, body, response_topic=reply_topic)
    accepted: set[str] = set()
    deadline = time.monotonic() + 30
    while len(accepted) < len(ids):  # every request reached the agent's queue
        assert time.monotonic() < deadline, f"accepted only {sorted(accepted)}"
        time.sleep(0.05)
        accepted = {
            str(e["request_id"]) for e in first.log_events() if e.get("event") == "request_accepted"
        }
    answered_before = {
        str(e["request_id"]) for e in first.log_events() if e.get("event") == "request_answered"
    }
    first.proc.kill()
    first.proc.wait()
    assert len(answered_before) < len(ids), "the kill came too late to test anything"

    start_agent()
    replies = app.collect(len(ids), timeout=120)
    by_id: dict[str, int] = {}
    for reply in replies:
        by_id[reply.payload["id"]] = by_id.get(reply.payload["id"], 0) + 1
        assert reply.payload["ok"] is True, reply.payload
    assert sorted(by_id) == ids  # none lost
    time.sleep(2)
    assert app.replies.empty(), "a request was answered twice"
