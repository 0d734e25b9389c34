"""Fault: the broker is SIGKILLed and restarted while QoS 1 requests are in flight.

Real mosquitto, real agent, real model; five apps that behave as MQTT v5 apps
should (persistent sessions, Response Topic + Correlation Data, QoS 1).

What can be promised, and what this checks:

* With broker persistence OFF a SIGKILL loses everything the broker held: the
  sessions and subscriptions, requests it had PUBACKed but not delivered, and
  replies it had accepted from the agent but not passed on. Requests the apps
  queued during the outage are lost too when an app reconnects before the agent
  has re-subscribed (measured: from 4 to all 125 of them, depending on which
  reconnect wins). Only the app can recover those, so it re-sends, once, every
  request still unanswered after the broker is back and the replies went quiet.
* With persistence ON (and mosquitto able to write its file: see the fixture),
  sessions, subscriptions and queued messages survive; ``autosave_interval`` is
  1 s, so the last second can still be lost, and the same one re-send covers it.
* Pass: every request has exactly one final reply as seen by the app: an answer
  by its deadline, or an explicit ``busy`` / ``deadline_exceeded`` /
  ``shutting_down``; 0 silent losses. Duplicates are detected by id on the app
  side and counted. A copy of a request the agent already answered gets the same
  reply from its cache, not a second inference
  (``test_repeated_request_id_runs_the_model_once``).
* The agent PUBACKs a request only once the broker has its reply, so with
  persistence ON the requests it held unanswered at the kill come back to it.
"""

from __future__ import annotations

import json
import os
import pwd
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_slm.topics import DeviceTopics
from tests.support.agent import AgentProcess, wait_for_status
from tests.support.broker import PrivateBroker, free_port

pytestmark = pytest.mark.broker

CLIENTS = 5
# Requests per app: 5 x 20 = 100 in the default run; the long form (scripts/test.sh
# --full) sends 5 x 100 = 500, as the issue asked (about 6 minutes for the file on two
# shared cores).
PER_CLIENT_SHORT = 20
PER_CLIENT_FULL = 100
# Generous: on two shared cores the agent answered 250 classify requests at 8/s idle
# but at 2/s under load (122 s); the deadline must cover the whole run plus a re-send.
DEADLINE_MS = 300_000
SLACK_S = 5.0  # an answer made just before the deadline still has to travel
LABELS = ["lights_on", "lights_off", "play_music"]
FINAL_ERRORS = {"busy", "deadline_exceeded", "shutting_down"}


class SessionApp:
    """An MQTT v5 app with a persistent session that survives its own reconnects.

    ``clean_start=False`` plus a Session Expiry Interval: the broker keeps the
    subscription and queues QoS 1 replies while the app is away (MQTT 5 §3.1.2.4),
    and paho re-sends its own unacknowledged QoS 1 publishes after a reconnect
    (§4.4). It subscribes again on every connect: a broker that lost its state
    (no persistence) no longer knows the subscription.
    """

    def __init__(self, port: int, name: str) -> None:
        self.name = name
        self.reply_topic = f"apps/{name}/reply"
        self.replies: dict[str, list[tuple[float, dict[str, Any]]]] = defaultdict(list)
        self.mismatched: list[tuple[bytes | None, str | None]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.connects = 0
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=name,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self._client.reconnect_delay_set(0.2, 1)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_a: self._subscribed.set()
        self._client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        self._client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self._client.loop_start()
        assert self._subscribed.wait(10), f"{name}: no SUBACK"

    def _on_connect(self, client: paho.Client, *_a: Any) -> None:
        self.connects += 1
        client.subscribe(self.reply_topic, 1)

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        payload = json.loads(msg.payload)
        correlation = getattr(msg.properties, "CorrelationData", None)
        with self._lock:
            if correlation is None or correlation.decode() != payload.get("id"):
                self.mismatched.append((correlation, payload.get("id")))
            self.replies[payload.get("id") or ""].append((time.time(), payload))

    def publish(self, topic: str, body: dict[str, Any]) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = body["id"].encode()
        # While the broker is down paho queues QoS 1 publishes (rc NO_CONN) and
        # sends them after the reconnect; that is part of what is under test.
        self._client.publish(topic, json.dumps(body).encode(), qos=1, properties=props)

    def answered(self) -> set[str]:
        with self._lock:
            return {rid for rid, got in self.replies.items() if got}

    def snapshot(self) -> dict[str, list[tuple[float, dict[str, Any]]]]:
        with self._lock:
            return {rid: list(got) for rid, got in self.replies.items()}

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _start_agent(broker: PrivateBroker, topics: DeviceTopics, tmp: Path) -> AgentProcess:
    agent = AgentProcess(
        broker_url=broker.url,
        device_id=topics.device_id,
        log_path=tmp / "agent.log",
        EDGE_AGENT_CLOUD__ENABLED="false",
        # Room for every request of the long form: no `busy` here.
        EDGE_AGENT_LIMITS__QUEUE_SIZE=str(CLIENTS * PER_CLIENT_FULL + 50),
        EDGE_AGENT_MQTT__RECONNECT_MIN_S="0.2",
        EDGE_AGENT_MQTT__RECONNECT_MAX_S="1",
        EDGE_AGENT_OUTBOX__PATH=str(tmp / "outbox.db"),
    )
    wait_for_status(broker.port, topics.status, "online")
    return agent


@pytest.fixture
def killable_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PrivateBroker]:
    workdir = tmp_path / "broker"
    workdir.mkdir()
    # Started as root, mosquitto drops to the `mosquitto` user, which can write neither
    # its log nor its persistence file in pytest's root-owned tmp dir: persistence would
    # silently be off. `user` names the account to drop to (as tests/security does).
    broker = PrivateBroker(
        persistence=request.param,
        port=free_port(),
        workdir=workdir,
        extra_config=f"user {pwd.getpwuid(os.geteuid()).pw_name}\n",
    )
    broker.start()
    yield broker
    broker.stop()


def _request(rid: str, sent_at: float) -> dict[str, Any]:
    return {
        "v": 1,
        "id": rid,
        "kind": "voice",
        "text": "turn on the kitchen lights",
        "task": "classify",
        "labels": LABELS,
        "deadline_ms": DEADLINE_MS,
        "sent_at": sent_at,
    }


@dataclass
class Tally:
    lost: list[str]
    duplicates: dict[str, int]  # id -> copies received (>1): detected and dropped by id
    late: list[str]  # an answer arriving after sent_at + deadline (+ transit slack)
    not_final: list[tuple[str, Any]]  # error replies that are not a final answer
    errors: Counter[str]
    mismatched: list[tuple[bytes | None, str | None]]


def _tally(apps: list[SessionApp], everything: set[str], sent_at: dict[str, float]) -> Tally:
    replies: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    mismatched = []
    for app in apps:
        replies.update(app.snapshot())
        mismatched += app.mismatched
    tally = Tally(
        lost=sorted(everything - {rid for rid, got in replies.items() if got}),
        duplicates={rid: len(got) for rid, got in replies.items() if len(got) > 1},
        late=[],
        not_final=[],
        errors=Counter(),
        mismatched=mismatched,
    )
    for rid, got in replies.items():
        first_at, first = got[0]
        # An explicit error (deadline_exceeded for a re-send that came too late) is a
        # final reply whenever it comes; an answer must come by the deadline.
        if first["ok"] and first_at > sent_at[rid] + DEADLINE_MS / 1000 + SLACK_S:
            tally.late.append(rid)
        if not first["ok"]:
            tally.errors[first["error"]["code"]] += 1
            if first["error"]["code"] not in FINAL_ERRORS:
                tally.not_final.append((rid, first["error"]))
    return tally


def _wait_quiet(apps: list[SessionApp], want: set[str], quiet_s: float, limit_s: float) -> None:
    """Until every id in ``want`` is answered, or no reply came for ``quiet_s``."""
    end = time.monotonic() + limit_s
    last_count, last_change = -1, time.monotonic()
    while time.monotonic() < end:
        got: set[str] = set().union(*(a.answered() for a in apps))
        if want <= got:
            return
        if len(got) != last_count:
            last_count, last_change = len(got), time.monotonic()
        elif time.monotonic() - last_change > quiet_s:
            return
        time.sleep(0.2)


@pytest.mark.timeout(420)
@pytest.mark.parametrize(
    "per_client", [PER_CLIENT_SHORT, pytest.param(PER_CLIENT_FULL, marks=pytest.mark.slow)]
)
@pytest.mark.parametrize(
    "killable_broker", [False, True], ids=["persistence-off", "persistence-on"], indirect=True
)
def test_broker_sigkill_mid_load_every_request_gets_one_final_reply(
    killable_broker: PrivateBroker,
    topics: DeviceTopics,
    tmp_path: Path,
    model_dir: Path,
    per_client: int,
) -> None:
    broker = killable_broker
    agent = _start_agent(broker, topics, tmp_path)
    run = uuid.uuid4().hex[:6]
    apps = [SessionApp(broker.port, f"app-{run}-{k}") for k in range(CLIENTS)]
    try:
        sent_at: dict[str, float] = {}
        owner: dict[str, SessionApp] = {}

        def send(app: SessionApp, rid: str) -> None:
            sent_at.setdefault(rid, time.time())
            owner[rid] = app
            app.publish(topics.request, _request(rid, sent_at[rid]))

        half = per_client // 2
        ids = {app: [f"{app.name}-{i}" for i in range(per_client)] for app in apps}
        for i in range(half):  # interleaved, as five independent apps would
            for app in apps:
                send(app, ids[app][i])
        # Kill once the agent is busy answering: requests queued in the agent,
        # replies on the wire, and more requests about to be published.
        end = time.monotonic() + 60
        while len(set().union(*(a.answered() for a in apps))) < CLIENTS * 3:
            assert time.monotonic() < end, "the agent answered nothing before the kill"
            time.sleep(0.05)
        broker.kill()
        answered_before_kill = len(set().union(*(a.answered() for a in apps)))
        for i in range(half, per_client):  # published while the broker is dead: paho queues
            for app in apps:
                send(app, ids[app][i])
        time.sleep(1.0)
        broker.start()
        everything = set(sent_at)
        _wait_quiet(apps, everything, quiet_s=8, limit_s=240)

        # One re-send, same id, of every request still unanswered.
        unanswered = everything - set().union(*(a.answered() for a in apps))
        for rid in sorted(unanswered):
            send(owner[rid], rid)
        _wait_quiet(apps, everything, quiet_s=8, limit_s=120)
        time.sleep(1.0)  # late duplicates, if any, land now

        tally = _tally(apps, everything, sent_at)
        summary = {
            "persistence": broker.persistence,
            "requests": len(everything),
            "answered_before_kill": answered_before_kill,
            "resent": len(unanswered),
            "replied": len(everything) - len(tally.lost),
            "lost": len(tally.lost),
            "duplicate_ids": len(tally.duplicates),
            "resent_and_duplicated": len(set(tally.duplicates) & unanswered),
            "error_replies": dict(tally.errors),
            "agent_connects": sum(e.get("event") == "mqtt_connected" for e in agent.log_events()),
        }
        print(f"broker-kill summary: {json.dumps(summary)}")
        assert summary["agent_connects"] >= 2, "the agent never reconnected"
        assert tally.mismatched == [], "correlation data != id"
        assert tally.lost == [], f"{len(tally.lost)} silently lost: {tally.lost[:10]}"
        assert tally.late == [], f"first reply after the deadline: {tally.late[:10]}"
        assert tally.not_final == [], tally.not_final[:5]
    finally:
        for app in apps:
            app.close()
        agent.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("killable_broker", [False], ids=["plain"], indirect=True)
def test_repeated_request_id_runs_the_model_once(
    killable_broker: PrivateBroker, topics: DeviceTopics, tmp_path: Path, model_dir: Path
) -> None:
    """A second copy of an answered request, as at-least-once delivery makes it.

    The copy still deserves a reply (its sender may have lost the first), but the
    same one: served from a cache, not from a second inference.
    """
    agent = _start_agent(killable_broker, topics, tmp_path)
    app = SessionApp(killable_broker.port, f"app-{uuid.uuid4().hex[:6]}")
    try:
        body = _request("again-1", time.time())
        app.publish(topics.request, body)
        _wait_quiet([app], {"again-1"}, quiet_s=30, limit_s=30)
        assert app.answered() == {"again-1"}
        app.publish(topics.request, body)  # byte-identical: a DUP redelivery looks the same
        end = time.monotonic() + 30
        while len(app.snapshot()["again-1"]) < 2 and time.monotonic() < end:
            time.sleep(0.1)
        time.sleep(1.0)
        copies = [payload for _at, payload in app.snapshot()["again-1"]]
        answered = [
            e
            for e in agent.log_events()
            if e.get("event") == "request_answered" and e.get("request_id") == "again-1"
        ]
        assert len(answered) == 1, f"the model ran {len(answered)} times for one id"
        assert all(c == copies[0] for c in copies), copies
    finally:
        app.close()
        agent.close()
