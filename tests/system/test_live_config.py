"""Shadow sampling and live config through the whole system."""

from __future__ import annotations

import json
import time

import pytest

from edge_slm.contract import DeviceConfig, Task
from tests.system.conftest import System

pytestmark = pytest.mark.integration

LABELS = ["lights_on", "lights_off", "play_music"]
NEVER_ESCALATE = json.dumps({"classify": 0.0, "answer": 0.0})


def test_shadow_samples_reach_the_relay_log_but_apps_get_one_reply(system: System) -> None:
    system.start_relay()
    system.start_agent(
        EDGE_AGENT_POLICY__THRESHOLDS=NEVER_ESCALATE, EDGE_AGENT_POLICY__SHADOW_RATE="1.0"
    )
    system.ask("shadow-1", task="classify", labels=LABELS)
    reply = system.app.next_reply(timeout=30).payload
    assert reply["source"] == "edge"
    escalation = system.spy.next_reply(timeout=30).payload
    assert escalation["reason"] == "shadow"
    assert escalation["edge"]["label"] == reply["label"]
    deadline = time.monotonic() + 60
    rows: list[dict[str, object]] = []
    while time.monotonic() < deadline and not rows:
        rows = [
            r
            for r in system.relay_rows()
            if r["request_id"] == "shadow-1" and r["outcome"] is not None
        ]
        time.sleep(0.2)
    [row] = rows
    assert row["outcome"] == "ok"
    assert row["reason"] == "shadow"
    assert row["agreement"] in (True, False)
    time.sleep(1.5)  # the cloud answer has come back by now, and must not reach the app
    assert system.app.replies.empty()


def test_a_retained_config_changes_thresholds_without_a_restart(system: System) -> None:
    system.start_relay()
    agent = system.start_agent(EDGE_AGENT_POLICY__THRESHOLDS=NEVER_ESCALATE)
    system.ask("before", task="classify", labels=LABELS)
    assert system.app.next_reply(timeout=30).payload["source"] == "edge"
    config = DeviceConfig(
        device_id=system.topics.device_id,
        thresholds={Task.CLASSIFY: 1.0},
        issued_at=time.time(),
        issued_by="test",
    )
    system.app.publish(system.topics.config, config.to_wire())  # as the relay would, retained
    deadline = time.monotonic() + 10
    while not [e for e in agent.log_events() if e.get("event") == "config_applied"]:
        assert time.monotonic() < deadline, "config not applied"
        time.sleep(0.05)
    [applied] = [e for e in agent.log_events() if e.get("event") == "config_applied"]
    assert applied["changes"] == {"threshold.classify": [0.0, 1.0]}
    system.ask("after", task="classify", labels=LABELS)
    after = system.app.next_reply(timeout=60).payload
    assert after["source"] == "cloud"
    assert "< 1.00 (classify)" in after["reason"]
    assert agent.proc.poll() is None


def test_a_config_for_another_device_is_refused(system: System) -> None:
    agent = system.start_agent(EDGE_AGENT_POLICY__THRESHOLDS=NEVER_ESCALATE)
    forged = DeviceConfig(
        device_id="someone-else", thresholds={Task.CLASSIFY: 1.0}, issued_at=time.time()
    )
    system.app.publish(system.topics.config, forged.to_wire())
    system.app.publish(system.topics.config, b'{"v": 1, "thresholds": {"classify": 7}}')
    deadline = time.monotonic() + 10
    while len([e for e in agent.log_events() if e.get("event") == "config_rejected"]) < 2:
        assert time.monotonic() < deadline, "bad configs must be logged as rejected"
        time.sleep(0.05)
    assert not [e for e in agent.log_events() if e.get("event") == "config_applied"]
    system.ask("still-edge", task="classify", labels=LABELS)
    assert system.app.next_reply(timeout=30).payload["source"] == "edge"
