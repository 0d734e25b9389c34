"""A failing LLM provider, end to end: app -> agent -> relay -> scripted OpenAI-style server.

The LLM is the relay tests' fault server (``tests/relay/faultserver.py``), a real
HTTP server on loopback answering each call as scripted: 429 with Retry-After, 500,
a stall past the read timeout or past the deadline, a body cut off mid-way.

Pass, per fault: the relay retries, opens its breaker and gives up as configured
(``CLOUD_RELAY_LLM__MAX_ATTEMPTS``, ``..._READ_TIMEOUT_S``, ``CLOUD_RELAY_BREAKER__*``);
its log row, read with ``cloud-relay logs --json``, has the right outcome and attempt
count; and the app's first reply arrives before its ``deadline_ms``, measured on the
app's clock from the publish (``sent_at`` is stamped, so the agent counts from there
too): ``source: cloud`` when the retries fit in time, else ``edge-fallback``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_slm.topics import DeviceTopics
from tests.faults._bridge import TimedApp, relay_rows
from tests.relay.faultserver import FaultServer, Step
from tests.support.agent import AgentProcess, wait_for_status
from tests.support.broker import PrivateBroker
from tests.support.procs import Relay

pytestmark = pytest.mark.model

BASE_ENV = {
    "CLOUD_RELAY_LLM__BACKOFF_BASE_S": "0.2",
    "CLOUD_RELAY_LLM__BACKOFF_MAX_S": "1",
    "CLOUD_RELAY_LIMITS__RATE_PER_MINUTE": "0",
}


class Rig:
    """Broker, fault server, relay and agent; the app is a :class:`TimedApp`."""

    def __init__(self, mqtt_broker: PrivateBroker, device: DeviceTopics, tmp: Path) -> None:
        self.broker = mqtt_broker
        self.topics = device
        self.tmp = tmp
        self.db = f"sqlite:///{tmp / 'relay.db'}"
        self.fault = FaultServer()
        self.app = TimedApp(mqtt_broker.port)
        self.relay: Relay | None = None
        self.agent: AgentProcess | None = None

    def start(self, **relay_env: str) -> None:
        self.relay = Relay(
            broker_url=self.broker.url,
            llm_url=self.fault.url,
            model="fault-model",
            db=self.db,
            log_path=self.tmp / "relay.log",
            **{**BASE_ENV, **relay_env},
        )
        self.relay.wait_event("relay_started")
        self.agent = AgentProcess(
            broker_url=self.broker.url,
            device_id=self.topics.device_id,
            log_path=self.tmp / "agent.log",
            EDGE_AGENT_OUTBOX__PATH=str(self.tmp / "outbox.db"),
        )
        wait_for_status(self.broker.port, self.topics.status, "online")

    def ask(self, request_id: str, deadline_ms: int, **fields: Any) -> None:
        self.app.ask(
            self.topics.request,
            {
                "v": 1,
                "id": request_id,
                "text": "Name a colour.",
                "task": "answer",
                "max_tokens": 8,
                "cloud": "always",
                "deadline_ms": deadline_ms,
                **fields,
            },
        )

    def first_reply(self, request_id: str, deadline_ms: int) -> dict[str, Any]:
        """The app's first reply, asserted to arrive before the request's deadline."""
        self.app.wait_for(
            lambda: self.app.first(request_id) is not None, deadline_ms / 1000 + 30, request_id
        )
        latency = self.app.latency_s(request_id)
        assert latency is not None
        print(f"{request_id}: first reply after {latency * 1000:.0f} ms (deadline {deadline_ms})")
        assert latency * 1000 < deadline_ms, f"{request_id}: {latency * 1000:.0f} ms"
        first = self.app.first(request_id)
        assert first is not None
        return first.payload

    def row(self, request_id: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            rows = [r for r in relay_rows(self.db) if r["request_id"] == request_id]
            if rows and rows[0]["outcome"] not in (None, "in_flight"):
                [row] = rows
                return row
            assert time.monotonic() < deadline, f"no final relay row for {request_id}: {rows}"
            time.sleep(0.3)

    def close(self) -> None:
        for daemon in (self.agent, self.relay):
            if daemon is not None:
                daemon.close()
        self.app.close()


@pytest.fixture
def rig(
    broker: PrivateBroker,
    topics: DeviceTopics,
    tmp_path: Path,
) -> Iterator[Rig]:
    r = Rig(broker, topics, tmp_path)
    with r.fault.running():
        yield r
        r.close()


def test_429_with_retry_after_is_honoured_and_answered_by_the_cloud(rig: Rig) -> None:
    rig.fault.script = [Step(status=429, headers={"Retry-After": "1"}), Step(content="Blue.")]
    rig.start(CLOUD_RELAY_LLM__MAX_ATTEMPTS="3")
    rig.ask("r429", 6000)
    reply = rig.first_reply("r429", 6000)
    assert reply["source"] == "cloud"
    assert reply["answer"] == "Blue."
    row = rig.row("r429")
    assert (row["outcome"], row["attempts"]) == ("ok", 2)
    assert rig.fault.hits == 2
    gap = rig.fault.times[1] - rig.fault.times[0]
    assert gap >= 0.95, f"Retry-After: 1 not honoured: retried after {gap:.2f}s"


def test_500s_then_success_within_max_attempts(rig: Rig) -> None:
    rig.fault.script = [Step(status=500), Step(status=500), Step(content="Green.")]
    rig.start(CLOUD_RELAY_LLM__MAX_ATTEMPTS="3", CLOUD_RELAY_BREAKER__FAILURE_THRESHOLD="5")
    rig.ask("r500", 6000)
    reply = rig.first_reply("r500", 6000)
    assert (reply["source"], reply["answer"]) == ("cloud", "Green.")
    row = rig.row("r500")
    assert (row["outcome"], row["attempts"]) == ("ok", 3)
    assert rig.fault.hits == 3


def test_500s_exhaust_retries_open_the_breaker_then_a_probe_closes_it(rig: Rig) -> None:
    rig.fault.default = Step(status=500)
    rig.start(
        CLOUD_RELAY_LLM__MAX_ATTEMPTS="2",
        CLOUD_RELAY_BREAKER__FAILURE_THRESHOLD="2",
        CLOUD_RELAY_BREAKER__OPEN_S="3",
    )
    # Two failed attempts: llm_error, and the breaker opens. The agent falls back at
    # once on the relay's error instead of waiting out the deadline.
    rig.ask("fail-1", 8000)
    reply = rig.first_reply("fail-1", 8000)
    assert reply["source"] == "edge-fallback"
    assert "the cloud failed (llm_error)" in reply["reason"]
    row = rig.row("fail-1")
    assert (row["outcome"], row["attempts"]) == ("llm_error", 2)
    assert rig.fault.hits == 2
    # Open: the next escalation is refused without an HTTP call.
    opened = time.monotonic()
    rig.ask("fail-2", 8000)
    assert rig.first_reply("fail-2", 8000)["source"] == "edge-fallback"
    row = rig.row("fail-2")
    assert (row["outcome"], row["attempts"]) == ("llm_error", 0)
    assert "circuit open" in row["error"]
    assert rig.fault.hits == 2
    # The provider recovers; after open_s one probe goes through and closes the circuit.
    rig.fault.default = Step(content="Red.")
    time.sleep(max(0.0, opened + 3.5 - time.monotonic()))
    rig.ask("probe", 8000)
    reply = rig.first_reply("probe", 8000)
    assert (reply["source"], reply["answer"]) == ("cloud", "Red.")
    row = rig.row("probe")
    assert (row["outcome"], row["attempts"]) == ("ok", 1)
    assert rig.fault.hits == 3
    # Neither failed request gets a late correction: the relay's answer was an error.
    time.sleep(1)
    assert len(rig.app.replies_for("fail-1")) == 1
    assert len(rig.app.replies_for("fail-2")) == 1


def test_stall_past_the_read_timeout_is_retried(rig: Rig) -> None:
    rig.fault.script = [Step(stall_s=3.0, content="late"), Step(content="Yellow.")]
    rig.start(CLOUD_RELAY_LLM__MAX_ATTEMPTS="3", CLOUD_RELAY_LLM__READ_TIMEOUT_S="1")
    rig.ask("stall-1", 6000)
    reply = rig.first_reply("stall-1", 6000)
    assert (reply["source"], reply["answer"]) == ("cloud", "Yellow.")
    row = rig.row("stall-1")
    assert (row["outcome"], row["attempts"]) == ("ok", 2)


def test_stall_past_the_deadline_falls_back_in_time(rig: Rig) -> None:
    rig.fault.default = Step(stall_s=8.0, content="too late")
    rig.start(CLOUD_RELAY_LLM__MAX_ATTEMPTS="3", CLOUD_RELAY_LLM__READ_TIMEOUT_S="30")
    rig.ask("stall-2", 2500, corrections=False)
    reply = rig.first_reply("stall-2", 2500)
    assert reply["source"] == "edge-fallback"
    assert "did not answer in time" in reply["reason"]
    # The relay stops at the escalation's expiry (deadline + clock_skew_s), not after 8 s.
    row = rig.row("stall-2", timeout=20)
    assert row["outcome"] in ("llm_error", "expired"), row
    assert row["attempts"] == 1, row
    assert row["latency_ms"] < 2500 + 1000 + 1000, row
    time.sleep(1)
    assert len(rig.app.replies_for("stall-2")) == 1  # corrections: false


def test_disconnect_mid_body_is_retried(rig: Rig) -> None:
    rig.fault.script = [Step(cut_body=True, content="x" * 2000), Step(content="Purple.")]
    rig.start(CLOUD_RELAY_LLM__MAX_ATTEMPTS="3")
    rig.ask("cut-1", 6000)
    reply = rig.first_reply("cut-1", 6000)
    assert (reply["source"], reply["answer"]) == ("cloud", "Purple.")
    row = rig.row("cut-1")
    assert (row["outcome"], row["attempts"]) == ("ok", 2)
    assert rig.fault.hits == 2


def test_mixed_faults_under_load_every_reply_meets_its_deadline(rig: Rig) -> None:
    """Twelve escalations against a provider that fails in every way, one after another."""
    faults = [
        Step(status=429, headers={"Retry-After": "1"}),
        Step(status=500),
        Step(stall_s=2.0),
        Step(cut_body=True, content="y" * 1000),
    ]
    rig.fault.script = faults * 3
    rig.fault.default = Step(content="Orange.")
    rig.start(
        CLOUD_RELAY_LLM__MAX_ATTEMPTS="3",
        CLOUD_RELAY_LLM__READ_TIMEOUT_S="1",
        CLOUD_RELAY_BREAKER__FAILURE_THRESHOLD="50",
    )
    ids = [f"mix-{k}" for k in range(12)]
    for k, request_id in enumerate(ids):
        rig.ask(request_id, 3000 + 500 * (k % 3))
        time.sleep(0.25)
    sources = [rig.first_reply(i, 3000 + 500 * (k % 3))["source"] for k, i in enumerate(ids)]
    rows = [rig.row(i) for i in ids]
    print("sources:", sources)
    print("relay rows:", [(r["outcome"], r["attempts"]) for r in rows])
    assert set(sources) <= {"cloud", "edge-fallback"}
    for row in rows:
        assert row["outcome"] in ("ok", "llm_error", "expired"), row
        assert 1 <= row["attempts"] <= 3, row
    # Every HTTP call is accounted for in some row's attempts.
    assert sum(r["attempts"] for r in rows) == rig.fault.hits
