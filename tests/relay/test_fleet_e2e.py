"""Fleet view, export and /metrics end to end: real mosquitto, the relay process, a scripted
OpenAI-compatible server. Devices publish Telemetry and Status exactly as the agent does."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from prometheus_client.parser import text_string_to_metric_families

from edge_slm.contract import LatencySummary, ModelState, Status, Telemetry, TokenUsage
from tests.relay.device import FakeDevice, escalation
from tests.relay.faultserver import FaultServer
from tests.support.broker import PrivateBroker, free_port
from tests.support.procs import Relay, relay_cli

REDACTED = "Email [EMAIL] that the washing machine at [IP] finished, call [PHONE]"


def telemetry(device: str, *, started_at: float, edge: int, cost: float, **kw: Any) -> Telemetry:
    return Telemetry(
        device_id=device,
        ts=kw.pop("ts", time.time()),
        started_at=started_at,
        model="smollm2-135m-instruct",
        provider="cpu",
        requests={"edge": edge, "cloud": 2, "edge-fallback": 1, "error": 0},
        escalations=3,
        escalation_rate=3 / (edge + 3),
        escalation_reasons={"low_confidence": 3},
        latency={"edge": LatencySummary(p50_ms=90, p95_ms=200, count=edge)},
        decode_tok_s=40.0,
        outbox_depth=0,
        outbox_dropped={},
        cloud_tokens=TokenUsage(prompt=100, completion=20),
        cost_avoided_usd=cost,
        **kw,
    )


class Publisher:
    """An agent's fleet side: retained status and QoS 1 telemetry, plain paho."""

    def __init__(self, port: int) -> None:
        self.c = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"pub-{uuid.uuid4().hex[:6]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def send(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def fault_llm() -> Iterator[FaultServer]:
    server = FaultServer()
    with server.running():
        yield server


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'relay.db'}"


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
def relay(
    broker: PrivateBroker, fault_llm: FaultServer, db: str, tmp_path: Path, metrics_port: int
) -> Iterator[Relay]:
    proc = Relay(
        broker_url=broker.url,
        llm_url=fault_llm.url,
        model="fault-model",
        ready=True,
        db=db,
        log_path=tmp_path / "relay.log",
        CLOUD_RELAY_METRICS__PORT=str(metrics_port),
    )
    try:
        yield proc
    finally:
        assert proc.stop() == 0


def _json(*args: str) -> Any:
    out = relay_cli(*args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _wait(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _gauge(port: int, name: str) -> float:
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name == name:
                return float(s.value)
    raise AssertionError(f"{name} not exported")


def test_devices_and_stats_from_telemetry_and_status(
    relay: Relay, broker: PrivateBroker, db: str, metrics_port: int
) -> None:
    pub = Publisher(broker.port)
    try:
        started = time.time() - 600
        installed = ModelState(version="9f2c4e1a0b3d", loaded=True, pinned=False, loads=1)
        status = Status(device_id="kitchen", state="online", model="smollm2-135m-instruct",
                        provider="cpu", version="0.1.0", conditions=["outbox_was_corrupt"],
                        model_state=installed, ts=time.time())  # fmt: skip
        pub.send("slm/kitchen/status", status.to_wire(), retain=True)
        pub.send("slm/kitchen/telemetry", telemetry("kitchen", started_at=started, edge=10,
                                                    cost=0.01).to_wire())  # fmt: skip
        pub.send("slm/garage/telemetry", telemetry("garage", started_at=started, edge=4,
                                                   cost=0.002).to_wire())  # fmt: skip
        # The agent restarts: counters start again; the relay carries the old run's totals.
        pub.send("slm/kitchen/telemetry", telemetry("kitchen", started_at=time.time(), edge=1,
                                                    cost=0.001).to_wire())  # fmt: skip

        def both() -> dict[str, Any]:
            devices = {d["device_id"]: d for d in _json("devices", "--db", db, "--json")}
            assert set(devices) == {"kitchen", "garage"}
            assert devices["kitchen"]["runs"] == 2
            return devices

        devices = _wait(both)
        kitchen = devices["kitchen"]
        assert kitchen["status"] == "online"
        assert kitchen["conditions"] is None or kitchen["conditions"] == []  # telemetry's, later
        assert kitchen["model"] == "smollm2-135m-instruct"
        assert kitchen["model_version"] == "9f2c4e1a0b3d"  # the over-the-air install's
        assert kitchen["provider"] == "cpu"
        assert kitchen["requests"] == {"edge": 11, "cloud": 4, "edge-fallback": 2, "error": 0}
        assert kitchen["escalations"] == 6
        assert kitchen["escalation_rate"] == pytest.approx(6 / 17)
        assert kitchen["cost_avoided_usd"] == pytest.approx(0.011)
        assert devices["garage"]["status"] == "unknown"  # no retained status seen

        table = relay_cli("devices", "--db", db)
        assert table.returncode == 0, table.stderr
        assert "cost avoided $" in table.stdout
        assert "0.011000" in table.stdout
        assert "smollm2-135m-instruct@9f2c4e1a0b3d" in table.stdout

        stats = {s["device_id"]: s for s in _json("stats", "--db", db, "--json")}
        assert stats["kitchen"]["cost_avoided_usd"] == pytest.approx(0.011)
        assert stats["garage"]["escalations"] == 0
        assert stats["*fleet*"]["cost_avoided_usd"] == pytest.approx(0.013)
        text = relay_cli("stats", "--db", db).stdout
        assert "cost avoided $" in text
        assert "0.013000" in text

        assert _gauge(metrics_port, "cloud_relay_devices_online") == 1
        # Clean shutdown of the agent: offline.
        offline = Status(device_id="kitchen", state="offline", ts=time.time())
        pub.send("slm/kitchen/status", offline.to_wire(), retain=True)
        _wait(lambda: _assert_state(db, "kitchen", "offline"))
    finally:
        pub.close()


def _assert_state(db: str, device: str, state: str) -> None:
    (d,) = _json("devices", "--db", db, "--json", "--device", device)
    assert d["status"] == state


def test_identity_mismatch_and_garbage_are_rejected(
    relay: Relay, broker: PrivateBroker, db: str
) -> None:
    pub = Publisher(broker.port)
    try:
        # Device "mallory" speaks for "victim" (same topic rights would be its own only).
        forged = telemetry("victim", started_at=time.time(), edge=99, cost=9.0)
        pub.send("slm/mallory/telemetry", forged.to_wire())
        forged_status = Status(device_id="victim", state="offline", ts=time.time())
        pub.send("slm/mallory/status", forged_status.to_wire(), retain=True)
        pub.send("slm/mallory/telemetry", b"not json")
        pub.send("slm/mallory/telemetry", b'{"v": 2, "device_id": "mallory"}')
        events = _wait(lambda: _rejections(relay, 4))
        assert sum("mismatch" in e["error"] for e in events) == 2
        assert all(e["device_id"] == "mallory" for e in events)
        # A genuine one, with a field from a newer minor version, is accepted.
        good = json.loads(telemetry("mallory", started_at=time.time(), edge=1, cost=0).to_wire())
        good["some_future_field"] = 1
        pub.send("slm/mallory/telemetry", json.dumps(good).encode())
        devices = _wait(lambda: _devices(db, 1))
        assert [d["device_id"] for d in devices] == ["mallory"]
        assert devices[0]["requests"]["edge"] == 1
    finally:
        pub.close()


def _rejections(relay: Relay, count: int) -> list[dict[str, Any]]:
    found = relay.events("fleet_message_rejected")
    assert len(found) >= count
    return found


def _devices(db: str, count: int) -> list[dict[str, Any]]:
    devices: list[dict[str, Any]] = _json("devices", "--db", db, "--json")
    assert len(devices) == count
    return devices


def test_export_holds_the_redacted_case_and_metrics_count_it(
    relay: Relay, broker: PrivateBroker, fault_llm: FaultServer, db: str, metrics_port: int
) -> None:
    device = FakeDevice(broker.port, "washer")
    try:
        sensor = [{"name": "washer/state", "value": "done", "unit": "enum"}]
        a = escalation("washer", "e1", text=REDACTED, sensor=sensor)
        b = escalation(
            "washer",
            "e2",
            task="classify",
            text="is it [EMAIL]'s load?",
            labels=["yes", "no"],
            edge={"label": "no", "answer": "no", "confidence": 0.2, "model": "smol"},
        )
        fault_llm.default.content = "yes"
        device.escalate(a)
        device.escalate(b)
        replies = {m.payload["id"]: m.payload for m in device.collect(2, timeout=30)}
        assert replies["e1"]["ok"]
        assert replies["e2"]["label"] == "yes"
    finally:
        device.close()

    out = relay_cli("export", "--db", db, "--format", "jsonl", "--outcome", "ok")
    assert out.returncode == 0, out.stderr
    rows = {r["request_id"]: r for r in map(json.loads, out.stdout.splitlines())}
    assert set(rows) == {"e1", "e2"}
    assert rows["e1"]["text"] == REDACTED  # byte for byte what the device sent
    assert rows["e1"]["sensor"] == sensor
    assert rows["e1"]["edge"] == {
        "answer": "100 degrees",
        "label": None,
        "tool_call": None,  # act only
        "data": None,  # extract only
        "confidence": 0.31,
        "model": "smollm2-135m-instruct",
    }
    assert rows["e1"]["cloud"]["answer"] == "yes"
    assert rows["e1"]["cloud"]["model"] == "fault-model"
    e2 = rows["e2"]
    assert (e2["task"], e2["labels"], e2["kind"]) == ("classify", ["yes", "no"], "text")
    assert (e2["cloud"]["label"], e2["edge"]["label"], e2["agreement"]) == ("yes", "no", False)
    none = relay_cli("export", "--db", db, "--device", "other", "--since", "1h")
    assert (none.returncode, none.stdout) == (0, "")

    body = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }
    assert samples[("cloud_relay_escalations_total", (("outcome", "ok"),))] == 2
    assert samples[("cloud_relay_llm_calls_total", (("result", "ok"),))] == 2
    assert samples[("cloud_relay_tokens_total", (("direction", "in"),))] == 22
    assert samples[("cloud_relay_tokens_total", (("direction", "out"),))] == 6
    assert samples[("cloud_relay_cost_usd_total", ())] > 0
    assert samples[("cloud_relay_escalation_latency_seconds_count", ())] == 2
    assert samples[("cloud_relay_in_flight", ())] == 0
    assert samples[("cloud_relay_breaker_open", ())] == 0
    assert samples[("cloud_relay_devices_online", ())] == 0


def test_metrics_are_off_by_default(
    broker: PrivateBroker, fault_llm: FaultServer, tmp_path: Path
) -> None:
    port = free_port()
    proc = Relay(
        broker_url=broker.url,
        llm_url=fault_llm.url,
        model="fault-model",
        ready=True,
        db=f"sqlite:///{tmp_path / 'r.db'}",
        log_path=tmp_path / "relay.log",
    )
    try:
        assert not proc.events("metrics_serving")
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
    finally:
        assert proc.stop() == 0


def test_a_relay_started_later_learns_the_retained_status(
    broker: PrivateBroker, fault_llm: FaultServer, tmp_path: Path
) -> None:
    pub = Publisher(broker.port)
    pub.send("slm/porch/status", Status(device_id="porch", state="online", ts=1.0).to_wire(),
             retain=True)  # fmt: skip
    pub.close()
    db = f"sqlite:///{tmp_path / 'late.db'}"
    proc = Relay(
        broker_url=broker.url,
        llm_url=fault_llm.url,
        model="fault-model",
        ready=True,
        db=db,
        log_path=tmp_path / "late.log",
    )
    try:
        (d,) = _wait(lambda: _devices(db, 1))
        assert (d["device_id"], d["state"]) == ("porch", "online")
        assert d["last_seen"] == 1.0  # the retained copy is no proof of life
        assert d["status"] == "stale"
    finally:
        assert proc.stop() == 0
