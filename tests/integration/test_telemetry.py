"""The real agent publishes telemetry and serves Prometheus metrics."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from edge_slm.topics import DeviceTopics
from tests.support.agent import StartAgent
from tests.support.app import AppClient
from tests.support.broker import free_port


def test_telemetry_counts_what_apps_saw(
    start_agent: StartAgent, app: AppClient, topics: DeviceTopics
) -> None:
    port = free_port()
    agent = start_agent(EDGE_AGENT_TELEMETRY__INTERVAL_S="0.5", EDGE_AGENT_METRICS__PORT=str(port))
    reply_topic = f"apps/{uuid.uuid4().hex}"
    app.subscribe(reply_topic)
    app.subscribe(topics.telemetry)
    ask = {"v": 1, "task": "classify", "labels": ["on", "off"], "text": "lights on"}
    for k in range(3):
        app.publish(topics.request, {**ask, "id": f"t{k}"}, response_topic=reply_topic)
    app.publish(
        topics.request, {"v": 1, "text": "Say hi.", "max_tokens": 8}, response_topic=reply_topic
    )
    app.publish(topics.request, b"not json", response_topic=reply_topic)
    seen = 0
    latest: dict[str, Any] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        msg = app.next_reply(timeout=30)
        if msg.topic == reply_topic:
            seen += 1
        else:
            latest = msg.payload
            if seen == 5 and sum(latest["requests"].values()) == 5:
                break
    assert latest["requests"] == {"edge": 4, "error": 1}
    assert latest["escalations"] == 0
    assert latest["device_id"] == agent.device_id
    assert latest["provider"] == "cpu"
    assert latest["latency"]["edge"]["count"] == 4
    assert latest["cost_avoided_usd"] > 0
    assert latest["decode_tok_s"] > 0
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    families = {f.name: f for f in text_string_to_metric_families(body)}
    replies = {
        s.labels["source"]: s.value
        for s in families["edge_agent_replies"].samples
        if s.name.endswith("_total")
    }
    assert replies == {"edge": 4.0, "error": 1.0}
    assert json.dumps(latest)  # published JSON round-trips
