"""Shadow sampling and live config through the whole system."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from edge_slm.contract import DeviceConfig, Task
from tests.support.system import System

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


def test_a_skill_with_a_young_head_sends_shadow_samples_and_ad_hoc_labels_do_not(
    system: System,
) -> None:
    system.start_agent(
        EDGE_AGENT_POLICY__THRESHOLDS=NEVER_ESCALATE, EDGE_AGENT_POLICY__LEARNING_SHADOW_RATE="1.0"
    )
    system.ask("labels-1", task="classify", labels=LABELS)
    assert system.app.next_reply(timeout=30).payload["source"] == "edge"
    system.ask("skill-1", task="classify", skill="home_intents", text="lights off please")
    assert system.app.next_reply(timeout=30).payload["source"] == "edge"
    escalation = system.spy.next_reply(timeout=30).payload
    assert (escalation["id"], escalation["reason"]) == ("skill-1", "shadow")
    time.sleep(1.0)
    assert system.spy.replies.empty()  # none for the request without a skill


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
    # The one version check of every intake: no `v`, or another one, is refused too.
    unversioned = {"device_id": system.topics.device_id, "issued_at": time.time()}
    system.app.publish(system.topics.config, json.dumps(unversioned).encode())
    system.app.publish(system.topics.config, json.dumps({**unversioned, "v": 2}).encode())
    deadline = time.monotonic() + 10
    while (
        len(rejected := [e for e in agent.log_events() if e.get("event") == "config_rejected"]) < 4
    ):
        assert time.monotonic() < deadline, "bad configs must be logged as rejected"
        time.sleep(0.05)
    assert [e.get("code") for e in rejected] == [
        None,  # another device's: well-formed, not for us
        "invalid_request",
        "invalid_request",
        "unsupported_version",
    ]
    assert not [e for e in agent.log_events() if e.get("event") == "config_applied"]
    system.ask("still-edge", task="classify", labels=LABELS)
    assert system.app.next_reply(timeout=30).payload["source"] == "edge"


def test_calibrate_learns_thresholds_from_a_real_run_and_the_device_applies_them(
    system: System, tmp_path: Path
) -> None:
    system.start_relay()
    agent = system.start_agent(
        EDGE_AGENT_POLICY__THRESHOLDS=NEVER_ESCALATE, EDGE_AGENT_POLICY__SHADOW_RATE="1.0"
    )
    texts = [
        "turn on the lights",
        "lights off please",
        "play some jazz",
        "switch the lamp on",
        "it is too dark",
        "kill the lights",
        "put on music",
        "I want to hear a song",
        "make it brighter",
        "darkness please",
        "stop the lights",
        "some tunes please",
    ]
    for k, text in enumerate(texts):
        system.ask(f"cal-{k}", text=text, task="classify", labels=LABELS)
    assert len(system.app.collect(len(texts), timeout=120)) == len(texts)
    deadline = time.monotonic() + 120
    done: list[dict[str, object]] = []
    while time.monotonic() < deadline and len(done) < len(texts):
        done = [r for r in system.relay_rows() if r["outcome"] and r["reason"] == "shadow"]
        time.sleep(0.5)
    assert len(done) == len(texts), [r["outcome"] for r in done]
    pairs = sum(r["edge_confidence"] is not None and r["agreement"] is not None for r in done)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cloud_relay",
            "calibrate",
            "--db",
            system.db,
            "--target-escalation",
            "0.3",
            "--min-pairs",
            "4",
            "--out",
            str(tmp_path / "cal"),
            "--apply",
            "--broker",
            system.broker.url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "task=classify: threshold" in out.stdout
    assert f"{pairs} pairs, {pairs} shadow" in out.stdout
    assert "applied to 1 device(s)" in out.stdout
    pngs = sorted(p.name for p in (tmp_path / "cal").glob("*.png"))
    assert pngs == ["escalation_curve_task-classify.png", "reliability_task-classify.png"]
    deadline = time.monotonic() + 10
    while not [e for e in agent.log_events() if e.get("event") == "config_applied"]:
        assert time.monotonic() < deadline, "the device did not apply the calibrated config"
        time.sleep(0.05)
    [applied] = [e for e in agent.log_events() if e.get("event") == "config_applied"]
    old, new = applied["changes"]["threshold.classify"]  # type: ignore[index]
    assert old == 0.0
    assert 0.0 < new <= 1.0
    assert applied["issued_by"] == "cloud-relay calibrate"
