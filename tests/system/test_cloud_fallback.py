"""Cloud fallback end to end: real broker, real models, real HTTP, real processes."""

from __future__ import annotations

import json
import time

import pytest

from tests.support.system import System

LABELS = ["lights_on", "lights_off", "play_music"]
ALWAYS_ESCALATE = json.dumps({"classify": 1.0, "answer": 1.0})
NEVER_ESCALATE = json.dumps({"classify": 0.0, "answer": 0.0})


def test_confident_request_is_answered_on_the_edge(system: System) -> None:
    system.start_relay()
    system.start_agent(EDGE_AGENT_POLICY__THRESHOLDS=NEVER_ESCALATE)
    before = system.llm.completions
    system.ask("edge-1", task="classify", labels=LABELS)
    reply = system.app.next_reply().payload
    assert reply["source"] == "edge"
    assert reply["escalated"] is False
    assert "confidence" in reply["reason"]
    time.sleep(0.5)
    assert system.spy.replies.empty()  # nothing was published on the escalation topic
    assert system.llm.completions == before


def test_cloud_always_is_answered_by_the_cloud(system: System) -> None:
    system.start_relay()
    system.start_agent()
    system.ask("always-1", text="What is the capital of France?", cloud="always", max_tokens=16)
    reply = system.app.next_reply(timeout=60).payload
    assert reply["ok"] is True
    assert reply["source"] == "cloud"
    assert reply["escalated"] is True
    assert "cloud: always" in reply["reason"]
    assert reply["answer"]
    assert reply["tokens"]["completion"] > 0
    escalation = system.spy.next_reply().payload
    assert escalation["id"] == "always-1"
    assert escalation["reason"] == "cloud_always"
    assert "edge" not in escalation  # sent before the edge generated anything


def test_low_confidence_request_escalates(system: System) -> None:
    system.start_relay()
    system.start_agent(EDGE_AGENT_POLICY__THRESHOLDS=ALWAYS_ESCALATE)
    system.ask("low-1", task="classify", labels=LABELS)
    reply = system.app.next_reply(timeout=60).payload
    assert reply["source"] == "cloud"
    assert "< 1.00 (classify)" in reply["reason"]
    assert reply["label"] in [*LABELS, "unknown"]
    escalation = system.spy.next_reply().payload
    assert escalation["reason"] == "low_confidence"
    assert 0 <= escalation["edge"]["confidence"] < 1
    [row] = [r for r in system.relay_rows() if r["request_id"] == "low-1"]
    assert row["outcome"] == "ok"
    assert row["edge_confidence"] == pytest.approx(escalation["edge"]["confidence"])


def test_never_and_local_only_requests_stay_on_the_device(system: System) -> None:
    system.start_relay()
    system.start_agent(
        EDGE_AGENT_POLICY__THRESHOLDS=ALWAYS_ESCALATE,
        EDGE_AGENT_POLICY__LOCAL_ONLY_SENSORS='["camera/*"]',
        EDGE_AGENT_POLICY__LOCAL_ONLY_KINDS='["voice"]',
    )
    before = system.llm.completions
    system.ask("never-1", cloud="never", task="classify", labels=LABELS)
    system.ask(
        "cam-1",
        kind="sensor",
        text="front door camera event",
        sensor={"name": "camera/front", "value": "person detected"},
        task="classify",
        labels=["normal", "alert"],
    )
    system.ask("voice-1", kind="voice", cloud="always", task="classify", labels=LABELS)
    system.ask("private-1", privacy="local", task="classify", labels=LABELS)
    replies = {r.payload["id"]: r.payload for r in system.app.collect(4)}
    for request_id in ("never-1", "cam-1", "voice-1", "private-1"):
        assert replies[request_id]["source"] == "edge", replies[request_id]
        assert "stays on the edge" in replies[request_id]["reason"]
    time.sleep(1.0)
    assert system.spy.replies.empty()
    assert system.llm.completions == before


def test_pii_never_reaches_the_relay_log(system: System) -> None:
    system.start_relay()
    system.start_agent(EDGE_AGENT_POLICY__REDACT_NAMES='["Anna Schmidt", "Anna"]')
    secrets = [
        "anna.schmidt@example.com",
        "+49 30 1234567",
        "DE89 3704 0044 0532 0130 00",
        "4111 1111 1111 1111",
        "192.168.1.44",
        "a4:5e:60:c2:11:9f",
        "Anna",
        "Schmidt",
    ]
    text = (
        "Tell Anna Schmidt (anna.schmidt@example.com, +49 30 1234567) that the transfer "
        "from DE89 3704 0044 0532 0130 00 with card 4111 1111 1111 1111 failed; the hub "
        "at 192.168.1.44 (a4:5e:60:c2:11:9f) is offline."
    )
    system.ask("pii-1", text=text, cloud="always", task="summarize", max_tokens=24)
    reply = system.app.next_reply(timeout=60).payload
    assert reply["source"] == "cloud"
    escalation = system.spy.next_reply().payload
    assert escalation["redactions"] == {
        "name": 1,
        "email": 1,
        "phone": 1,
        "iban": 1,
        "card": 1,
        "ip": 1,
        "mac": 1,
    }
    assert not [s for s in secrets if s in json.dumps(escalation)]
    [row] = [r for r in system.relay_rows() if r["request_id"] == "pii-1"]
    assert row["redactions"] == escalation["redactions"]
    assert not [s for s in secrets if s in json.dumps(row)]


def test_relay_down_gives_fallback_now_and_the_correction_later(system: System) -> None:
    system.start_agent()
    system.ask("late-1", text="Name a colour.", cloud="always", deadline_ms=1500, max_tokens=8)
    fallback = system.app.next_reply(timeout=30).payload
    assert fallback["source"] == "edge-fallback"
    assert fallback["escalated"] is True
    assert fallback["latency_ms"] < 1500
    system.start_relay()  # the link comes back; the outbox re-sends
    correction = system.app.next_reply(timeout=60).payload
    assert correction["id"] == "late-1"
    assert correction["source"] == "cloud"
    assert correction["supersedes"] is True


def test_no_correction_when_the_app_opted_out(system: System) -> None:
    system.start_agent()
    system.ask("late-2", cloud="always", deadline_ms=1500, max_tokens=8, corrections=False)
    assert system.app.next_reply(timeout=30).payload["source"] == "edge-fallback"
    relay = system.start_relay()
    time.sleep(3)  # the outbox would have re-sent by now
    assert system.app.replies.empty()
    assert relay.proc.poll() is None


def test_relay_killed_and_restarted_the_outbox_delivers(system: System) -> None:
    relay = system.start_relay()
    system.start_agent()
    system.ask("warm-1", cloud="always", max_tokens=8)
    assert system.app.next_reply(timeout=60).payload["source"] == "cloud"
    relay.kill()  # SIGKILL: no goodbye
    system.ask("during-1", cloud="always", deadline_ms=1500, max_tokens=8)
    assert system.app.next_reply(timeout=30).payload["source"] == "edge-fallback"
    system.start_relay()
    correction = system.app.next_reply(timeout=60).payload
    assert correction["id"] == "during-1"
    assert correction["supersedes"] is True


def test_agent_sigkilled_with_pending_escalations_delivers_them_once(system: System) -> None:
    first = system.start_agent()
    ids = [f"kill-{k}" for k in range(3)]
    for request_id in ids:
        system.ask(request_id, text="Say hello.", cloud="always", deadline_ms=1500, max_tokens=8)
    fallbacks = system.app.collect(3, timeout=60)
    assert {r.payload["source"] for r in fallbacks} == {"edge-fallback"}
    first.proc.kill()  # SIGKILL with three escalations in the outbox
    first.proc.wait()
    before = system.llm.completions
    system.start_relay()
    system.start_agent()  # same outbox file: re-publishes on connect
    # A fallback whose PUBACK the killed agent never saw comes back to the new one, which
    # sends the same reply again, byte for byte (QoS 1 is at-least-once); nothing else.
    sent = {r.payload["id"]: r.payload for r in fallbacks}
    corrections: dict[str, dict[str, object]] = {}
    while len(corrections) < 3:
        payload = system.app.next_reply(timeout=90).payload
        if payload.get("supersedes") is True:
            corrections[payload["id"]] = payload
        else:
            assert payload == sent[payload["id"]], payload
    assert sorted(corrections) == ids
    time.sleep(3)  # re-sends keep coming until the rows are gone; none may bill again
    assert system.llm.completions - before == 3
    rows = [r for r in system.relay_rows() if r["request_id"] in ids]
    assert len(rows) == 3
    assert all(r["attempts"] == 1 for r in rows)
    while not system.app.replies.empty():  # only identical fallback replays may follow
        payload = system.app.replies.get().payload
        assert payload == sent[payload["id"]], payload
