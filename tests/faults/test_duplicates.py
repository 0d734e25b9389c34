"""Fault: duplicated and reordered deliveries, and a correlation id used twice.

QoS 1 is at-least-once (MQTT 5 §4.3.2): a redelivery after a lost PUBACK, the
agent's outbox re-sends, or a restarted device replaying its outbox all put the
same escalation or cloud reply on the wire more than once, in any order. Real
broker, real relay, real LLM server (`edge-agent serve`), real agent.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from edge_slm.contract import CloudReply, Outcome
from tests.relay.device import CloudMsg, FakeDevice, escalation
from tests.relay.faultserver import FaultServer, Step
from tests.support.app import AppClient, Reply
from tests.support.broker import PrivateBroker
from tests.support.procs import Relay
from tests.support.system import System

LABELS = ["lights_on", "lights_off", "play_music"]
NEVER_ESCALATE = json.dumps({"classify": 0.0, "answer": 0.0})


def _drain(inbox: Any, seconds: float) -> list[Any]:
    """Everything that arrives in ``inbox`` (a queue) within ``seconds``."""
    time.sleep(seconds)
    extra = []
    while not inbox.empty():
        extra.append(inbox.get_nowait())
    return extra


def _wait_relay_subscribed(s: System) -> None:
    relay = s.relays[-1]
    relay.wait_event("mqtt_connected")
    time.sleep(0.5)  # the SUBSCRIBE leaves from on_connect; let the SUBACK land


@pytest.mark.timeout(150)
def test_relay_calls_the_llm_once_per_id_for_duplicated_reordered_escalations(
    system: System,
) -> None:
    """(a) Copies of five escalations, shuffled, then replayed after the answers."""
    system.start_relay()
    _wait_relay_subscribed(system)
    device = FakeDevice(system.broker.port, system.topics.device_id)
    try:
        bodies = [
            escalation(device.topics.device_id, f"dup-{k}", text=f"Say the number {k}.")
            for k in range(5)
        ]
        for body in bodies:
            body["max_tokens"] = 6
        by_id = {b["id"]: b for b in bodies}
        rng = random.Random(7)  # a fixed shuffle: the same order every run
        burst = [b for b in bodies for _ in range(4)]
        rng.shuffle(burst)
        before = system.llm.completions
        for body in burst:  # 20 copies, out of order, most while the first is at the LLM
            device.escalate(body)
        first: dict[str, list[CloudMsg]] = defaultdict(list)
        end = time.monotonic() + 120
        while len(first) < len(bodies):
            msg = device.next(max(0.1, end - time.monotonic()))
            first[msg.payload["id"]].append(msg)
        for msg in device.quiet(1.5):
            first[msg.payload["id"]].append(msg)

        replay = [b for b in bodies for _ in range(3)]
        rng.shuffle(replay)
        for body in replay:  # a device restart replaying its outbox, three times over
            device.escalate(body)
        again: dict[str, list[CloudMsg]] = defaultdict(list)
        for msg in device.collect(len(replay), timeout=30):
            again[msg.payload["id"]].append(msg)
        extra = device.quiet(1.0)

        calls = system.llm.completions - before
        rows = [r for r in system.relay_rows() if r["request_id"] in by_id]
        relay = system.relays[0]
        print(
            "duplicates(a): "
            + json.dumps(
                {
                    "copies_sent": len(burst) + len(replay),
                    "llm_calls": calls,
                    "burst_replies": {k: len(v) for k, v in sorted(first.items())},
                    "replay_replies": {k: len(v) for k, v in sorted(again.items())},
                    "in_flight_dropped": relay.count("escalation_duplicate_in_flight"),
                    "stored_reply_resent": relay.count("escalation_duplicate_resent"),
                }
            )
        )
        assert calls == len(bodies), f"{calls} LLM calls for {len(bodies)} ids"
        assert sorted(r["request_id"] for r in rows) == sorted(by_id)
        assert all(r["attempts"] == 1 for r in rows), rows
        assert extra == []
        for rid in by_id:
            copies = [*first[rid], *again[rid]]
            # Copies that landed while the first was at the LLM are dropped (the
            # device re-sends); every later copy gets the stored reply, byte-equal.
            assert 1 <= len(first[rid]) <= 4
            assert len(again[rid]) == 3
            assert all(c.payload == copies[0].payload for c in copies), rid
            assert all(c.correlation_data == rid.encode() for c in copies)
            assert copies[0].payload["ok"] is True
    finally:
        device.close()


def _cloud_reply(device_id: str, rid: str) -> dict[str, Any]:
    reply = CloudReply(
        id=rid,
        device_id=device_id,
        ok=True,
        outcome=Outcome.OK,
        answer="lights_off",
        label="lights_off",
        confidence=0.9,
        model="test-cloud",
        latency_ms=5.0,
    )
    out: dict[str, Any] = json.loads(reply.to_wire())
    return out


def _escalated_ids(s: System, want: set[str], timeout: float = 30.0) -> None:
    seen: set[str] = set()
    end = time.monotonic() + timeout
    while not want <= seen:
        seen.add(s.spy.next_reply(max(0.1, end - time.monotonic())).payload["id"])


@pytest.mark.timeout(120)
def test_agent_answers_once_when_cloud_replies_repeat_and_reorder(
    system: System,
) -> None:
    """(b) No relay: the test plays it, answering each escalation three times, reordered."""
    system.start_agent()
    device_id = system.topics.device_id
    in_time = ["ord-a", "ord-b", "ord-c"]
    for rid in in_time:
        system.ask(rid, task="classify", labels=LABELS, cloud="always", deadline_ms=30_000)
    _escalated_ids(system, set(in_time))
    order = ["ord-c", "ord-a", "ord-b"] * 3  # reversed-ish, each three times
    for rid in order:
        system.app.publish(
            system.topics.cloud, _cloud_reply(device_id, rid), correlation_data=rid.encode()
        )
    answers = system.app.collect(3, timeout=30)
    assert sorted(r.payload["id"] for r in answers) == in_time
    for reply in answers:
        assert reply.payload["source"] == "cloud", reply.payload
        assert reply.payload["answer"] == "lights_off"
        assert reply.correlation_data is None  # the app sent none; none is invented
    assert _drain(system.app.replies, 2.0) == [], "a repeated cloud reply was answered twice"

    late = ["late-d", "late-e"]
    for rid in late:
        system.ask(rid, task="classify", labels=LABELS, cloud="always", deadline_ms=1500)
    _escalated_ids(system, set(late))
    fallbacks = system.app.collect(2, timeout=30)
    assert sorted(r.payload["id"] for r in fallbacks) == late
    assert {r.payload["source"] for r in fallbacks} == {"edge-fallback"}
    for rid in ["late-e", "late-d"] * 3:
        system.app.publish(
            system.topics.cloud, _cloud_reply(device_id, rid), correlation_data=rid.encode()
        )
    corrections = system.app.collect(2, timeout=30)
    assert sorted(r.payload["id"] for r in corrections) == late
    assert all(r.payload["supersedes"] is True for r in corrections)
    assert all(r.payload["source"] == "cloud" for r in corrections)
    extra = _drain(system.app.replies, 2.5)  # covers a sweep and an outbox re-send
    agent = system.agents[0]
    print(
        "duplicates(b): "
        + json.dumps(
            {
                "cloud_replies_sent": len(order) + 6,
                "app_replies": len(answers) + len(fallbacks) + len(corrections) + len(extra),
                "ignored_as_duplicate": sum(
                    e.get("event") == "cloud_reply_duplicate" for e in agent.log_events()
                ),
            }
        )
    )
    assert extra == [], [r.payload for r in extra]


@pytest.mark.timeout(150)
def test_two_apps_reusing_one_correlation_id_each_get_their_own_replies(
    system: System,
) -> None:
    """(c) Same Correlation Data from two apps: replies go by Response Topic, never mixed."""
    system.start_relay()
    _wait_relay_subscribed(system)
    system.start_agent(EDGE_AGENT_POLICY__THRESHOLDS=NEVER_ESCALATE)
    shared = b"corr-1"  # both apps count their requests from 1
    other = AppClient(system.broker.port)
    try:
        apps = {
            "a": (system.app, system.reply_topic, ["lights_on", "lights_off"]),
            "b": (other, f"apps/{uuid.uuid4().hex}/reply", ["cat", "dog", "bird"]),
        }
        other.subscribe(apps["b"][1])
        sent: dict[str, set[str]] = {"a": set(), "b": set()}
        for k in range(3):
            for name, (app, reply_topic, labels) in apps.items():
                rid = f"{name}-{k}"
                body: dict[str, Any] = {
                    "v": 1,
                    "id": rid,
                    "text": "what is this about",
                    "task": "classify",
                    "labels": labels,
                }
                if k == 2:
                    body["cloud"] = "always"  # the escalated path echoes correlation too
                    body["deadline_ms"] = 60_000
                app.publish(
                    system.topics.request, body, response_topic=reply_topic, correlation_data=shared
                )
                sent[name].add(rid)
        got: dict[str, list[Reply]] = {}
        for name, (app, reply_topic, labels) in apps.items():
            got[name] = app.collect(3, timeout=90)
            assert _drain(app.replies, 1.5) == [], f"app {name} got extra replies"
            assert {r.payload["id"] for r in got[name]} == sent[name]
            for reply in got[name]:
                assert reply.topic == reply_topic
                assert reply.correlation_data == shared
                assert reply.payload["ok"] is True, reply.payload
                assert reply.payload["label"] in [*labels, "unknown"], reply.payload
        sources = Counter(r.payload["source"] for rs in got.values() for r in rs)
        print("duplicates(c): " + json.dumps({"replies": dict(sources)}))
        assert sources["cloud"] == 2, sources
    finally:
        other.close()


@pytest.mark.timeout(90)
def test_queued_duplicate_never_takes_over_a_live_claim(
    broker: PrivateBroker,
    tmp_path: Path,
) -> None:
    """Two copies of one escalation wait in a busy relay's queue longer than the claim TTL.

    The LLM stand-in answers every call after 2.5 s; two workers, six distinct
    escalations ahead, so both copies start together ~7.5 s after they arrived,
    past ``claim_ttl_s`` = 5 s. The second must see a live claim and drop out.
    """
    with FaultServer().running() as fault:
        fault.default = Step(content="42", stall_s=2.5)
        relay = Relay(
            broker_url=broker.url,
            llm_url=fault.url,
            model="stall-model",
            db=f"sqlite:///{tmp_path / 'relay.db'}",
            log_path=tmp_path / "relay.log",
            CLOUD_RELAY_LIMITS__MAX_CONCURRENCY="2",
            CLOUD_RELAY_LIMITS__RATE_PER_MINUTE="0",
            CLOUD_RELAY_LLM__MAX_ATTEMPTS="1",
            CLOUD_RELAY_LLM__TOTAL_TIMEOUT_S="4",
            CLOUD_RELAY_LIMITS__CLAIM_TTL_S="5",
        )
        device: FakeDevice | None = None
        try:
            relay.wait_event("mqtt_connected")
            time.sleep(0.5)
            device = FakeDevice(broker.port, f"dev-{uuid.uuid4().hex[:8]}")
            dev_id = device.topics.device_id
            for k in range(6):
                device.escalate(escalation(dev_id, f"filler-{k}", text=f"filler {k}"))
            twin = escalation(dev_id, "twin-1", text="the twin escalation")
            device.escalate(twin)
            device.escalate(twin)  # a QoS 1 redelivery, right behind the first copy
            replies = device.collect(7, timeout=40)
            replies += device.quiet(4.0)
            twin_calls = sum("the twin escalation" in json.dumps(r) for r in fault.requests)
            twin_replies = [m for m in replies if m.payload["id"] == "twin-1"]
            print(
                "duplicates(claim): "
                + json.dumps({"twin_llm_calls": twin_calls, "twin_replies": len(twin_replies)})
            )
            assert twin_calls == 1, f"the LLM was called {twin_calls} times for one escalation"
            assert len(twin_replies) == 1
        finally:
            if device is not None:
                device.close()
            relay.close()
