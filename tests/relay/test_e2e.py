"""End to end: real mosquitto, the relay process, real generation via ``agent.serve``."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from tests.relay.device import FakeDevice, escalation
from tests.relay.faultserver import FaultServer, Step
from tests.support.broker import PrivateBroker, free_port
from tests.support.procs import LlmServer, Relay, relay_cli

MODEL = "smollm2-135m-instruct"


class StartRelay(Protocol):
    """The ``relays`` fixture: one more relay on log store ``db``, returned subscribed."""

    def __call__(self, db: str, **env: str) -> Relay: ...


@pytest.fixture(scope="module")
def serve(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlmServer]:
    """``edge-agent serve`` with a deeper queue than ``llm``'s, for the concurrent relays."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    proc = LlmServer(MODEL, free_port(), log, "--queue-size", "16")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'relay.db'}"


@pytest.fixture
def relays(broker: PrivateBroker, serve: LlmServer, tmp_path: Path) -> Iterator[StartRelay]:
    started: list[Relay] = []

    def start(db: str, **env: str) -> Relay:
        proc = Relay(
            broker_url=broker.url,
            llm_url=serve.base_url,
            model=MODEL,
            ready=True,
            db=db,
            log_path=tmp_path / f"relay-{len(started)}.log",
            **env,
        )
        started.append(proc)
        return proc

    yield start
    codes = [p.stop() for p in started]
    assert codes == [0] * len(started), "relays must exit cleanly on SIGTERM"


@pytest.fixture
def device(broker: PrivateBroker) -> Iterator[FakeDevice]:
    d = FakeDevice(broker.port, f"dev-{uuid.uuid4().hex[:8]}")
    yield d
    d.close()


def _logs(db: str, *args: str) -> list[dict[str, object]]:
    out = relay_cli("logs", "--db", db, "--json", *args)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_answer_round_trip_duplicate_and_logs(
    relays: StartRelay, device: FakeDevice, serve: LlmServer, db: str
) -> None:
    relay = relays(db)
    body = escalation(device.topics.device_id)
    before = serve.completions
    device.escalate(body)
    msg = device.next()
    reply = msg.payload
    assert msg.topic == device.topics.cloud
    assert msg.correlation_data == body["id"].encode()
    assert (reply["id"], reply["device_id"], reply["ok"], reply["outcome"]) == (
        body["id"],
        device.topics.device_id,
        True,
        "ok",
    )
    assert reply["model"] == MODEL
    assert reply["answer"]
    assert reply["tokens"]["prompt"] > 0
    assert reply["tokens"]["completion"] > 0
    assert 0.0 <= reply["confidence"] <= 1.0  # x_confidence from the server
    assert serve.completions == before + 1

    # A replay (device restart) gets the stored reply and does not reach the LLM.
    device.escalate(body)
    again = device.next()
    assert again.payload == reply
    assert again.correlation_data == body["id"].encode()
    assert serve.completions == before + 1
    assert relay.events("escalation_duplicate_resent")

    (row,) = _logs(db, "--device", device.topics.device_id)
    assert row["outcome"] == "ok"
    assert row["attempts"] == 1
    assert row["llm_model"] == MODEL
    assert row["cost_usd"] > 0
    assert row["tokens_in"] == reply["tokens"]["prompt"]
    assert row["redactions"] == {"email": 1}
    assert row["edge_answer"] == "100 degrees"
    assert row["agreement"] in (True, False)
    assert row["reply"] == reply

    table = relay_cli("logs", "--db", db, "--since", "10m")
    assert table.returncode == 0, table.stderr
    assert "received (UTC)" in table.stdout
    assert device.topics.device_id in table.stdout


def test_identity_mismatch_is_rejected_on_the_topic_device(
    relays: StartRelay, device: FakeDevice, broker: PrivateBroker, serve: LlmServer, db: str
) -> None:
    relays(db)
    victim = FakeDevice(broker.port, f"victim-{uuid.uuid4().hex[:6]}")
    try:
        before = serve.completions
        body = escalation(victim.topics.device_id)  # payload claims to be the victim
        device.escalate(body, device_prop=victim.topics.device_id)
        msg = device.next()
        assert msg.topic == device.topics.cloud  # never the payload's device
        assert (msg.payload["ok"], msg.payload["outcome"], msg.payload["error"]["code"]) == (
            False,
            "rejected",
            "invalid_request",
        )
        assert victim.quiet(0.5) == []
        device.escalate({"id": "bad-1"}, raw=b"\xff not json")
        assert device.next().payload["error"]["code"] in ("invalid_utf8", "invalid_json")
        assert serve.completions == before
    finally:
        victim.close()
    rows = _logs(db, "--outcome", "rejected")
    assert len(rows) == 2
    assert {r["device_id"] for r in rows} == {device.topics.device_id}


def test_classify_answers_a_label_or_unknown(
    relays: StartRelay, device: FakeDevice, db: str
) -> None:
    relays(db)
    labels = ["fire_alarm", "door_open", "normal"]
    texts = ["Smoke detected in the kitchen, alarm sounding", "The front door was left open"]
    for text in texts:
        device.escalate(
            escalation(
                device.topics.device_id,
                task="classify",
                labels=labels,
                text=text,
                max_tokens=8,
                edge={"label": "normal", "confidence": 0.2, "model": MODEL},
            )
        )
    for msg in device.collect(len(texts)):
        assert msg.payload["ok"] is True
        assert msg.payload["label"] in [*labels, "unknown"]
        if msg.payload["label"] == "unknown":
            assert msg.payload["confidence"] == 0.0
    rows = _logs(db)
    assert all(r["agreement"] in (True, False) for r in rows)


def test_two_relays_split_the_load_and_answer_each_once(
    relays: StartRelay,
    device: FakeDevice,
    serve: LlmServer,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    try:
        db: str = request.getfixturevalue("pg_url")  # a shared PostgreSQL, as in a fleet
    except pytest.skip.Exception:
        db = f"sqlite:///{tmp_path / 'shared.db'}"
    env = {"CLOUD_RELAY_LIMITS__MAX_CONCURRENCY": "2"}
    a = relays(db, **env)
    b = relays(db, **env)
    before = serve.completions
    bodies = [
        escalation(device.topics.device_id, text=f"Say the number {i}.", max_tokens=6)
        for i in range(20)
    ]
    for body in bodies:
        device.escalate(body)
    replies = device.collect(20, timeout=180)
    assert device.quiet(1.0) == []  # nothing answered twice
    ids = Counter(m.payload["id"] for m in replies)
    assert set(ids) == {b["id"] for b in bodies}
    assert all(n == 1 for n in ids.values())
    assert all(m.payload["ok"] for m in replies), [
        m.payload for m in replies if not m.payload["ok"]
    ]
    assert serve.completions == before + 20
    per_relay = [len(p.events("escalation_answered")) for p in (a, b)]
    assert sum(per_relay) == 20
    assert min(per_relay) > 0, per_relay

    stats = relay_cli("stats", "--db", db, "--json")
    assert stats.returncode == 0, stats.stderr
    by_device = {s["device_id"]: s for s in json.loads(stats.stdout)}
    mine = by_device[device.topics.device_id]
    assert mine["escalations"] == 20
    assert mine["relay_errors"] == 0
    assert mine["relay_error_rate"] == 0.0
    assert 0 < mine["p50_ms"] <= mine["p95_ms"]
    assert mine["tokens_out"] > 0
    assert mine["cost_usd"] > 0
    assert by_device["*fleet*"]["escalations"] >= 20
    text = relay_cli("stats", "--db", db)
    assert "p95 ms" in text.stdout
    assert device.topics.device_id in text.stdout
    relays_seen = {r["relay_id"] for r in _logs(db, "--device", device.topics.device_id)}
    assert len(relays_seen) == 2


def test_back_to_back_duplicate_while_in_flight_is_answered_once(
    relays: StartRelay, device: FakeDevice, serve: LlmServer, db: str
) -> None:
    relay = relays(db)
    body = escalation(device.topics.device_id, max_tokens=48)
    before = serve.completions
    device.escalate(body)
    device.escalate(body)  # redelivery while the first is still at the LLM
    first = device.next()
    assert first.payload["ok"] is True
    assert device.quiet(1.0) == []  # the in-flight one replied; the duplicate did nothing
    assert serve.completions == before + 1
    assert relay.events("escalation_duplicate_in_flight")


def test_sigterm_drains_then_answers_shutting_down(
    broker: PrivateBroker, device: FakeDevice, tmp_path: Path, db: str
) -> None:
    with FaultServer().running() as llm:
        llm.default = Step(stall_s=5.0)
        relay = Relay(
            broker_url=broker.url,
            llm_url=llm.url,
            model="slow-model",
            ready=True,
            db=db,
            log_path=tmp_path / "relay.log",
            CLOUD_RELAY_LIMITS__DRAIN_TIMEOUT_S="0.5",
        )
        body = escalation(device.topics.device_id)
        device.escalate(body)
        deadline = time.monotonic() + 5
        while llm.hits == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # the escalation is now stalled at the LLM
        assert llm.hits == 1
        assert relay.stop() == 0
        reply = device.next(5).payload
        assert (reply["ok"], reply["error"]["code"]) == (False, "shutting_down")
        relay.wait_event("drain_incomplete")
    assert _logs(db) == []  # the claim was released: a replay will be served


def test_resubscribes_after_a_broker_restart(
    relays: StartRelay, broker: PrivateBroker, db: str
) -> None:
    relay = relays(db)
    broker.restart()  # same port, no persistence: every subscription is gone
    deadline = time.monotonic() + 30
    while len(relay.events("mqtt_connected")) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)
    dev = FakeDevice(broker.port, f"dev-{uuid.uuid4().hex[:8]}")
    try:
        dev.escalate(escalation(dev.topics.device_id, max_tokens=8))
        assert dev.next(60).payload["ok"] is True
    finally:
        dev.close()
