"""Persistent sessions and reconnects against a real mosquitto."""

from __future__ import annotations

import uuid

import pytest

from edge_slm.devbroker import PrivateBroker
from edge_slm.topics import DeviceTopics
from tests.support.agent import AgentProcess, wait_for_status
from tests.support.app import AppClient

pytestmark = pytest.mark.integration

REQUEST = {"v": 1, "text": "turn off the lights", "task": "classify", "labels": ["on", "off"]}


def test_qos1_requests_sent_while_agent_is_away_are_answered_after_restart(
    broker: PrivateBroker, topics: DeviceTopics, start_agent: object, app: AppClient
) -> None:
    first: AgentProcess = start_agent()  # type: ignore[operator]
    assert first.terminate() == 0  # clean disconnect; the broker keeps the session
    wait_for_status(broker.port, topics.status, "offline", timeout=5)
    reply_topic = f"apps/{uuid.uuid4().hex}/reply"
    app.subscribe(reply_topic)
    for k in range(3):
        app.publish(topics.request, {**REQUEST, "id": f"queued-{k}"}, response_topic=reply_topic)
    start_agent()  # type: ignore[operator]
    replies = app.collect(3, timeout=60)
    assert sorted(r.payload["id"] for r in replies) == ["queued-0", "queued-1", "queued-2"]
    assert all(r.payload["ok"] for r in replies)


def test_agent_reconnects_and_rebirths_after_broker_restart(
    topics: DeviceTopics, device_id: str, model_dir: object, tmp_path: object
) -> None:
    with PrivateBroker(persistence=True) as broker:
        agent = AgentProcess(
            broker_url=broker.url,
            device_id=device_id,
            log_path=tmp_path / "agent.log",  # type: ignore[operator]
            EDGE_AGENT_MQTT__RECONNECT_MAX_S="2",
            EDGE_AGENT_CLOUD__ENABLED="false",
            EDGE_AGENT_OUTBOX__PATH=str(tmp_path / "outbox.db"),  # type: ignore[operator]
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
