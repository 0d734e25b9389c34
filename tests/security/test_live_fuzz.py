"""Live fuzz: thousands of malformed requests through mosquitto into the real agent.

A seeded generator (deterministic run to run) produces empty payloads, 1 MiB
payloads, invalid UTF-8, deep nesting, wildcards and NUL in ``reply_to``/``id``,
huge label lists, wrong types and a few valid requests. They are published at
QoS 0 and 1, mostly from an MQTT v5 client with a Response Topic and
Correlation Data per message (so every reply can be matched to its request),
some with a hostile Response Topic, some from an MQTT 3.1.1 client. Pass:

* every message gets exactly one reply where routing says it goes (the
  Response Topic, else a plain ``reply_to``, else the device's default topic);
  malformed ones a typed error, valid ones an answer;
* the agent logs one ``request_rejected`` per malformed message and no handler
  failure, stays up, and answers a valid request at the end;
* its RSS grows less than 10% over a warm baseline.

Cloud is disabled: this is about the intake, not escalation.
"""

from __future__ import annotations

import json
import queue
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_slm.contract import ErrorCode
from edge_slm.topics import DeviceTopics
from tests.support.agent import AgentProcess
from tests.support.broker import PrivateBroker

SEED = 20261124
COUNT = 2500
BATCH = 100
LIMIT_BYTES = 16 * 1024  # the agent's default limits.max_payload_bytes
KNOWN_CODES = {code.value for code in ErrorCode}
HOSTILE_RESPONSE_TOPICS = ["fuzz/+/x", "#", "+", "$SYS/broker/x", "$share/g/t", "a" * 600]


# -- a raw client: keeps payload bytes, never parses inside paho's thread --------


@dataclass(frozen=True)
class Got:
    topic: str
    payload: bytes
    correlation_data: bytes | None


class RawClient:
    def __init__(self, port: int, *, v5: bool) -> None:
        self.got: queue.Queue[Got] = queue.Queue()
        self._suback = threading.Event()
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"fuzz-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: self._suback.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        self.got.put(Got(msg.topic, bytes(msg.payload), getattr(props, "CorrelationData", None)))

    def subscribe(self, topic: str) -> None:
        self._suback.clear()
        self.client.subscribe(topic, 1)
        assert self._suback.wait(5), f"no SUBACK for {topic}"

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        response_topic: str | None = None,
        corr: bytes | None = None,
    ) -> None:
        props = None
        if response_topic is not None or corr is not None:
            props = Properties(PacketTypes.PUBLISH)
            if response_topic is not None:
                props.ResponseTopic = response_topic
            if corr is not None:
                props.CorrelationData = corr
        info = self.client.publish(topic, payload, qos=qos, properties=props)
        if qos:
            info.wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- the deterministic corpus ------------------------------------------------------


@dataclass(frozen=True)
class Case:
    n: int
    category: str
    payload: bytes
    valid: bool = False
    expect_code: str | None = None  # None: any known code (or an answer when valid)
    allow_internal: bool = False


def _j(value: Any) -> bytes:
    return json.dumps(value).encode()


def _deep(rng: random.Random, depth: int) -> str:
    kinds = [rng.random() < 0.5 for _ in range(depth)]
    return (
        "".join('{"k":' if k else "[" for k in kinds)
        + "1"
        + "".join("}" if k else "]" for k in reversed(kinds))
    )


HOSTILE = ["+", "#", "\x00", "$SYS/x", "slm/+/request", "slm/#", "a/+/b", "\u202e", "$", "/"]


def _hostile(rng: random.Random) -> str:
    return "".join(rng.choice(HOSTILE) + rng.choice(["", "x", "slm/dev/"]) for _ in range(3))


WRONG_TYPES: list[tuple[str, Any]] = [
    ("v", "1"),
    ("v", None),
    ("v", 1.5),
    ("v", [1]),
    ("id", 5),
    ("id", ""),
    ("id", "i" * 129),
    ("kind", "video"),
    ("task", "shout"),
    ("task", 3),
    ("text", {"a": 1}),
    ("text", "t" * 8193),
    ("labels", "on,off"),
    ("labels", [1, 2]),
    ("labels", ["same", "same"]),
    ("labels", ["", "x"]),
    ("labels", ["l" * 65, "x"]),
    ("max_tokens", 0),
    ("max_tokens", "ten"),
    ("max_tokens", -5),
    ("deadline_ms", 0),
    ("deadline_ms", "soon"),
    ("sent_at", "yesterday"),
    ("cloud", "sometimes"),
    ("privacy", "secret"),
    ("corrections", "maybe"),
    ("sensor", {"value": 1}),
    ("sensor", [{"name": "", "value": 1}]),
    ("reply_to", 7),
    ("reply_to", ""),
    ("reply_to", "r" * 513),
]


def _case(n: int, rng: random.Random) -> Case:  # noqa: PLR0911, PLR0912 - one branch per category
    base = {"v": 1, "id": f"f-{n}", "text": "turn on the lights"}
    roll = rng.random()
    if roll < 0.006:
        return Case(n, "valid", _j({**base, "max_tokens": 4}), valid=True)
    if roll < 0.03:
        return Case(n, "empty", b"", expect_code="invalid_json")
    if roll < 0.038:
        body = rng.choice([rng.randbytes(1024 * 1024), _j({**base, "text": "x" * 1024 * 1024})])
        return Case(n, "1mib", body, expect_code="payload_too_large")
    if roll < 0.06:
        return Case(
            n, "over_limit", b"{" + b" " * LIMIT_BYTES + b"}", expect_code="payload_too_large"
        )
    if roll < 0.20:
        return Case(n, "random_bytes", rng.randbytes(rng.randint(1, 600)))
    if roll < 0.28:
        bad = rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"])
        return Case(n, "invalid_utf8", b'{"v":1,"text":"' + bad + b'"}', expect_code="invalid_utf8")
    if roll < 0.34:
        full = _j({**base, "task": "classify", "labels": ["a", "b"]})
        return Case(
            n, "truncated", full[: rng.randint(1, len(full) - 1)], expect_code="invalid_json"
        )
    if roll < 0.42:
        body = _deep(rng, rng.randint(50, 600))
        where = rng.choice([None, "v", "sensor", "labels", "text"])
        payload = body if where is None else f'{{"v": 1, "text": "hi", "{where}": {body}}}'
        return Case(n, "deep_nesting", payload.encode())
    if roll < 0.44:
        # Deeper than the JSON parser's recursion limit: answered `internal` today
        # (see test_fuzz_intake.test_client_errors_are_not_internal).
        return Case(n, "too_deep", b"[" * rng.randint(2000, 12000))
    if roll < 0.50:
        value = rng.choice([[], [1, 2], 1, -1.5, "str", None, True, [{"v": 1}]])
        return Case(n, "not_object", _j(value), expect_code="invalid_request")
    if roll < 0.66:
        field, bad = rng.choice(WRONG_TYPES)
        return Case(n, "wrong_type", _j({**base, field: bad}))
    if roll < 0.76:
        # Hostile id / reply_to; `task: shout` keeps it from reaching the model.
        return Case(
            n,
            "hostile_strings",
            _j({**base, "id": _hostile(rng)[:128], "reply_to": _hostile(rng), "task": "shout"}),
            expect_code="invalid_request",
        )
    if roll < 0.84:
        count = rng.choice([65, 200, 1500])
        labels = [f"l{k}" for k in range(count)]
        return Case(n, "huge_labels", _j({**base, "task": "classify", "labels": labels}))
    if roll < 0.90:
        version = rng.choice([2, 0, -1, 99, 10**6])
        return Case(n, "version", _j({**base, "v": version}), expect_code="unsupported_version")
    if roll < 0.95:
        tokens = rng.randint(257, 10**9)
        body = _j({**base, "max_tokens": tokens})
        return Case(n, "max_tokens", body, expect_code="max_tokens_exceeded")
    return Case(
        n,
        "expired",
        _j({**base, "deadline_ms": 100, "sent_at": time.time() - rng.randint(5, 10**6)}),
        expect_code="deadline_exceeded",
    )


def corpus(count: int = COUNT, seed: int = SEED) -> list[Case]:
    rng = random.Random(seed)
    return [_case(n, rng) for n in range(count)]


# -- where a reply must go (mirrors agent.routing, MQTT 5 §4.10) ----------------


def _plain(topic: Any) -> bool:
    return (
        isinstance(topic, str)
        and 0 < len(topic) <= 512
        and not set(topic) & {"+", "#", "\x00"}
        and not topic.startswith("$")
    )


def _reply_to(payload: bytes) -> str | None:
    if len(payload) > LIMIT_BYTES:
        return None  # rejected before parsing: reply_to is never read
    try:
        raw = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    value = raw.get("reply_to") if isinstance(raw, dict) else None
    return value if _plain(value) else None


@dataclass(frozen=True)
class Sent:
    case: Case
    payload: bytes
    v5: bool
    qos: int
    response_topic: str | None
    corr: bytes | None
    expect_topic: str


def plan(cases: list[Case], run: str, default: str, seed: int = SEED) -> list[Sent]:
    """Protocol, QoS and reply route per case: 85% v5 with a clean Response Topic,
    5% v5 with a hostile one, 10% v3.1.1 (``reply_to`` in the payload, or none)."""
    rng = random.Random(seed + 1)
    out = []
    for case in cases:
        qos = rng.choice([0, 1])
        mode = rng.random()
        payload = case.payload
        own = _reply_to(payload)
        if mode < 0.10 and (own is None or own.startswith(f"fuzz/{run}/")):
            if case.category in ("valid", "wrong_type", "version") and rng.random() < 0.8:
                raw = json.loads(payload)
                raw.setdefault("reply_to", f"fuzz/{run}/v3/{case.n}")
                payload = _j(raw)
            expect = _reply_to(payload) or default
            out.append(Sent(case, payload, False, qos, None, None, expect))
            continue
        corr = str(case.n).encode()
        if mode < 0.15 and own is None:
            rt = rng.choice(HOSTILE_RESPONSE_TOPICS)
            out.append(Sent(case, payload, True, qos, rt, corr, _reply_to(payload) or default))
            continue
        rt = f"fuzz/{run}/r/{case.n}"
        out.append(Sent(case, payload, True, qos, rt, corr, rt))
    return out


def test_corpus_is_deterministic_and_covers_every_category() -> None:
    first, second = corpus(), corpus()
    assert [c.payload for c in first if c.category != "expired"] == [
        c.payload for c in second if c.category != "expired"
    ]
    categories = Counter(c.category for c in first)
    assert set(categories) >= {
        "valid", "empty", "1mib", "over_limit", "random_bytes", "invalid_utf8", "truncated",
        "deep_nesting", "too_deep", "not_object", "wrong_type", "hostile_strings",
        "huge_labels", "version", "max_tokens", "expired",
    }  # fmt: skip
    assert 5 <= categories["valid"] <= 40  # the model answers these slowly


# -- the live run --------------------------------------------------------------------


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _ask_valid(client: RawClient, topics: DeviceTopics, rt: str, n: int) -> dict[str, Any]:
    request = {"v": 1, "id": f"warm-{n}", "text": "turn on the lights", "max_tokens": 4}
    if n % 2:
        request.update(task="classify", labels=["lights_on", "lights_off"])
    client.publish(topics.request, _j(request), 1, rt, b"warm")
    got = client.got.get(timeout=60)
    return json.loads(got.payload)


def _drain(got: queue.Queue[Got], into: list[Got], until: float) -> None:
    while True:
        left = until - time.monotonic()
        if left <= 0:
            return
        try:
            into.append(got.get(timeout=min(left, 0.2)))
        except queue.Empty:
            return


def _events(agent: AgentProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in agent.log_events() if e.get("event") == name]


def test_live_fuzz(broker: PrivateBroker, topics: DeviceTopics, agent: AgentProcess) -> None:
    run = uuid.uuid4().hex[:8]
    v5 = RawClient(broker.port, v5=True)
    v3 = RawClient(broker.port, v5=False)
    sink = RawClient(broker.port, v5=True)  # sees every reply, wherever it goes
    try:
        sink.subscribe(f"fuzz/{run}/#")
        sink.subscribe(topics.response)
        warm_rt = f"warm/{run}"
        v5.subscribe(warm_rt)

        # Warm up: load paths, allocator arenas and caches with valid requests.
        for n in range(40):
            assert _ask_valid(v5, topics, warm_rt, n)["ok"] is True
        time.sleep(2.0)
        baseline = _rss_kib(agent.proc.pid)

        cases = corpus()
        sent = plan(cases, run, topics.response)
        received: list[Got] = []
        started = time.monotonic()
        for start in range(0, len(sent), BATCH):
            batch = sent[start : start + BATCH]
            for s in batch:
                client = v5 if s.v5 else v3
                client.publish(topics.request, s.payload, s.qos, s.response_topic, s.corr)
            # Pace the run: wait for this batch's replies before sending the next,
            # so broker queues never overflow and QoS 0 is not dropped.
            expected_total = start + len(batch)
            deadline = time.monotonic() + 120
            while len(received) < expected_total and time.monotonic() < deadline:
                _drain(sink.got, received, min(deadline, time.monotonic() + 1))
            assert agent.proc.poll() is None, "the agent died during the fuzz run"
        _drain(sink.got, received, time.monotonic() + 2.0)  # duplicates would show here
        elapsed = time.monotonic() - started

        _check_replies(sent, received, run, topics)
        _check_logs(sent, agent)

        # The agent is up, answers a valid request, and did not grow.
        assert agent.proc.poll() is None
        assert _ask_valid(v5, topics, warm_rt, 999)["ok"] is True
        time.sleep(2.0)
        after = _rss_kib(agent.proc.pid)
        growth = (after - baseline) / baseline
        print(  # shown with -s
            f"live fuzz: {len(sent)} messages in {elapsed:.1f}s; "
            f"{Counter(s.case.category for s in sent)}; "
            f"RSS {baseline} -> {after} KiB ({growth:+.1%})"
        )
        assert growth < 0.10, f"RSS grew {growth:.1%}: {baseline} -> {after} KiB"
    finally:
        for c in (v5, v3, sink):
            c.close()


def _check_replies(sent: list[Sent], received: list[Got], run: str, topics: DeviceTopics) -> None:
    by_corr: dict[bytes, list[Got]] = {}
    anonymous: list[Got] = []
    by_v3_topic: dict[str, list[Got]] = {}
    for got in received:
        if got.correlation_data is not None:
            by_corr.setdefault(got.correlation_data, []).append(got)
        elif got.topic == topics.response:
            anonymous.append(got)
        else:
            by_v3_topic.setdefault(got.topic, []).append(got)
    failures: list[str] = []
    anonymous_expected = 0
    for s in sent:
        if s.corr is not None:
            replies = by_corr.pop(s.corr, [])
        elif s.expect_topic != topics.response:
            replies = by_v3_topic.pop(s.expect_topic, [])
        else:
            anonymous_expected += 1
            continue
        if len(replies) != 1:
            failures.append(f"#{s.case.n} {s.case.category}: {len(replies)} replies")
            continue
        failures.extend(_check_reply(s, replies[0]))
    assert not by_corr, f"replies nobody asked for: {list(by_corr)[:5]}"
    assert not by_v3_topic, f"replies on unexpected topics: {list(by_v3_topic)[:5]}"
    assert len(anonymous) == anonymous_expected, "v3.1.1 replies on the default topic"
    for got in anonymous:
        assert json.loads(got.payload)["ok"] is False
    assert not failures, f"{len(failures)} bad outcomes, first: {failures[:10]}"


def _check_reply(s: Sent, got: Got) -> list[str]:
    where = f"#{s.case.n} {s.case.category}"
    if got.topic != s.expect_topic:
        return [f"{where}: reply on {got.topic!r}, expected {s.expect_topic!r}"]
    reply = json.loads(got.payload.decode("utf-8"))
    if s.case.valid:
        return [] if reply["ok"] is True else [f"{where}: valid request failed: {reply}"]
    if reply["ok"] is not False:
        return [f"{where}: malformed request was answered: {reply}"]
    code = reply["error"]["code"]
    if code not in KNOWN_CODES or (code == "internal" and not s.case.allow_internal):
        return [f"{where}: code {code}: {reply['error']['message'][:200]}"]
    if s.case.expect_code is not None and code != s.case.expect_code:
        return [f"{where}: code {code}, expected {s.case.expect_code}"]
    return []


def _check_logs(sent: list[Sent], agent: AgentProcess) -> None:
    malformed = sum(not s.case.valid for s in sent)
    deadline = time.monotonic() + 10
    while len(_events(agent, "request_rejected")) < malformed and time.monotonic() < deadline:
        time.sleep(0.2)
    rejected = _events(agent, "request_rejected")
    assert len(rejected) == malformed
    assert Counter(e["code"] for e in rejected).keys() <= KNOWN_CODES
    assert not _events(agent, "message_handler_failed")
    assert not _events(agent, "reply_failed")
    default = DeviceTopics("slm", agent.device_id).response
    unroutable = [e for e in rejected if e["reply_topic"] == default]
    assert len(unroutable) == sum(s.expect_topic == default and not s.case.valid for s in sent)


# -- a once-known bug, live ---------------------------------------------------------------


def test_lone_surrogate_id_gets_a_reply(
    broker: PrivateBroker, topics: DeviceTopics, agent: AgentProcess
) -> None:
    client = RawClient(broker.port, v5=True)
    try:
        rt = f"fuzz/{uuid.uuid4().hex[:8]}/surrogate"
        client.subscribe(rt)
        client.publish(topics.request, b'{"v":2,"id":"\\ud800"}', 1, rt, b"s")
        got = client.got.get(timeout=5)
        assert json.loads(got.payload)["error"]["code"] == "invalid_request"
    except queue.Empty:
        pytest.fail("no reply to a request with a lone-surrogate id")
    finally:
        client.close()
        assert agent.proc.poll() is None
