"""Property tests of the request decoder (``agent.intake.Intake``), in process.

The intake runs on the MQTT network thread and is the first thing untrusted
bytes meet. It is fed :class:`edge_slm.mqtt.Inbound` values built by
hypothesis and wired to recording fakes of *our* interfaces (``submit``,
``send_reply``), so each example takes microseconds. Properties:

* ``on_message`` never raises;
* exactly one outcome per message: one admitted job, or exactly one error
  reply with a known :class:`ErrorCode` (and one ``request_rejected`` log line);
* a reply never goes to a topic with a wildcard, U+0000, a ``$`` prefix, or
  one that cannot be encoded (MQTT 5 §4.7.1, §1.5.4, §4.7.2), and the correlation
  data of the request is echoed;
* every reply payload serializes to UTF-8 JSON that parses back;
* an admitted job respects the caps: ``max_tokens`` ≤ the cap, labels unique,
  2..64 of them, 1..64 characters each, and a deadline in the future.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import intake as intake_module
from agent.config import LimitSettings
from agent.intake import Intake
from agent.jobs import Job
from agent.routing import ReplyRoute
from edge_slm.contract import ErrorCode, Response
from edge_slm.mqtt import Inbound
from edge_slm.topics import DeviceTopics

TOPICS = DeviceTopics("slm", "dev-fuzz")
LIMITS = LimitSettings()  # the shipped defaults: 16 KiB payloads, max_tokens cap 256
KNOWN_CODES = {code.value for code in ErrorCode}

# Examples are cheap (one json.loads + one pydantic validation); these counts keep
# the whole module around 10-20 s on a shared 2-core machine.
FAST = settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- recording fakes of our interfaces --------------------------------------


class _RecordingLog:
    """Stands in for the module's structlog logger: records, renders nothing."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def _record(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    info = warning = debug = error = exception = _record


@dataclass
class Recorder:
    accept: bool = True
    jobs: list[tuple[Job, str]] = field(default_factory=list)
    refused: list[Job] = field(default_factory=list)
    replies: list[tuple[ReplyRoute, Response, bytes]] = field(default_factory=list)

    def submit(self, job: Job, topic: str) -> bool:
        if not self.accept:
            self.refused.append(job)
            return False
        self.jobs.append((job, topic))
        return True

    def send_reply(self, route: ReplyRoute, response: Response) -> None:
        # What the daemon does with it: the bytes must exist for every reply.
        self.replies.append((route, response, response.to_wire()))


@pytest.fixture(scope="module", autouse=True)
def quiet_intake_log() -> Iterator[_RecordingLog]:
    fake = _RecordingLog()
    with mock.patch.object(intake_module, "log", fake):
        yield fake


def _intake(rec: Recorder, limits: LimitSettings = LIMITS, *, open_: bool = True) -> Intake:
    intake = Intake(
        topics=TOPICS,
        limits=limits,
        submit=rec.submit,
        queue_depth=lambda: 3,
        send_reply=rec.send_reply,
    )
    if not open_:
        intake.close()
    return intake


def _plain(topic: str) -> bool:
    return (
        bool(topic)
        and not set(topic) & {"+", "#", "\x00"}
        and not topic.startswith("$")
        and len(topic.encode("utf-8")) <= 65535
    )


def _check_reply(
    rec: Recorder, msg: Inbound, rejected: list[dict[str, Any]], *, allow_internal: bool
) -> None:
    assert len(rejected) == 1
    route, response, wire = rec.replies[0]
    assert response.ok is False
    assert response.error is not None
    assert response.error.code.value in KNOWN_CODES
    assert response.error.message
    if not allow_internal:
        assert response.error.code is not ErrorCode.INTERNAL, response.error.message
    assert rejected[0]["code"] == response.error.code.value
    # Property 3: a routable, plain reply topic; correlation data echoed.
    assert _plain(route.topic), route.topic
    assert route.correlation_data == msg.correlation_data
    # Property 4: the payload is UTF-8 JSON that reads back as a Response.
    decoded = json.loads(wire.decode("utf-8"))
    assert decoded["ok"] is False
    assert decoded["error"]["code"] == response.error.code.value
    assert "id" in decoded
    assert Response.model_validate(decoded) == response
    if response.error.code is ErrorCode.BUSY:
        assert rec.refused, "busy only when the queue refused the job"
        assert (response.error.retry_after_ms or 0) > 0


def _check_job(rec: Recorder, msg: Inbound, limits: LimitSettings, before: float) -> None:
    # Property 5: admitted jobs respect the caps.
    job, topic = rec.jobs[0]
    assert topic == msg.topic
    req = job.request
    assert req.v == 1
    assert 1 <= job.max_tokens <= limits.max_tokens_cap
    assert req.max_tokens is None or req.max_tokens <= limits.max_tokens_cap
    assert 1 <= len(req.id) <= 128
    assert len(req.text) <= 8192
    assert req.text.strip() or req.readings
    if req.labels is not None:
        assert 2 <= len(req.labels) <= 64
        assert len(set(req.labels)) == len(req.labels)
        assert all(1 <= len(label) <= 64 for label in req.labels)
    if req.task.value == "classify":
        assert req.labels
    if job.deadline is not None:
        assert job.deadline > before
    assert _plain(job.route.topic), job.route.topic
    assert job.route.correlation_data == msg.correlation_data
    json.dumps(req.model_dump(mode="json"))  # a job is always re-serializable


def check_one(
    msg: Inbound,
    *,
    accept: bool = True,
    limits: LimitSettings = LIMITS,
    open_: bool = True,
    allow_internal: bool = False,
) -> Recorder:
    """Feed one message and assert every property; returns what was recorded."""
    rec = Recorder(accept=accept)
    intake = _intake(rec, limits, open_=open_)
    log = intake_module.log
    assert isinstance(log, _RecordingLog)
    del log.events[:]
    before = time.monotonic()
    intake.on_message(msg)  # property 1: never raises (pytest reports the trace)
    # Property 2: exactly one outcome, and one log line per rejection.
    assert len(rec.jobs) + len(rec.replies) == 1, (rec, msg)
    rejected = [kw for event, kw in log.events if event == "request_rejected"]
    if rec.replies:
        _check_reply(rec, msg, rejected, allow_internal=allow_internal)
    else:
        assert not rejected
        _check_job(rec, msg, limits, before)
    return rec


# -- strategies ---------------------------------------------------------------

FIELDS = [
    "v",
    "id",
    "kind",
    "text",
    "sensor",
    "task",
    "labels",
    "max_tokens",
    "deadline_ms",
    "sent_at",
    "cloud",
    "reply_to",
    "privacy",
    "corrections",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(
            st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)), children, max_size=5
        ),
    ),
    max_leaves=40,
)

HOSTILE_FRAGMENTS = [
    "+",
    "#",
    "/",
    "//",
    "\x00",
    "$SYS",
    "$SYS/broker/clients",
    "$share/g/",
    "slm/+/request",
    "slm/#",
    "slm/dev-other/request",
    "slm/dev-other/cloud",
    "slm/dev-fuzz/escalation",
    "apps/ok/reply",
    "\u202e",  # right-to-left override
    "\ufeff",  # BOM
    "\u0085",  # NEL
    "\ud7ff",
    "\U0001f600",
    " ",
    "\n",
    "../",
]
hostile_text = st.one_of(
    st.lists(st.one_of(st.sampled_from(HOSTILE_FRAGMENTS), st.text(max_size=12)), max_size=8).map(
        "".join
    ),
    st.integers(0, 20_000).map(lambda n: "x" * n),  # long ids / topics / labels
    st.tuples(st.sampled_from(HOSTILE_FRAGMENTS), st.integers(100, 5000)).map(
        lambda t: t[0] * t[1]
    ),
)

valid_field = {
    "v": st.just(1),
    "id": st.text(min_size=1, max_size=128),
    "kind": st.sampled_from(["text", "voice", "sensor"]),
    "text": st.text(min_size=1, max_size=200),
    "sensor": st.fixed_dictionaries({"name": st.text(min_size=1, max_size=20), "value": scalars}),
    "task": st.sampled_from(["answer", "classify", "extract", "summarize"]),
    "labels": st.lists(st.text(min_size=1, max_size=64), min_size=2, max_size=64, unique=True),
    "max_tokens": st.integers(1, 400),
    "deadline_ms": st.integers(1, 10**7),
    "sent_at": st.floats(0, 3e9),
    "cloud": st.sampled_from(["auto", "never", "always"]),
    "reply_to": st.text(min_size=1, max_size=60),
    "privacy": st.sampled_from(["normal", "local"]),
    "corrections": st.booleans(),
}


@st.composite
def requestish(draw: st.DrawFn) -> dict[str, Any]:
    """A dict mixing valid fields with wrong types, hostile strings and junk."""
    out: dict[str, Any] = {}
    for name in FIELDS:
        choice = draw(st.integers(0, 9))
        if choice <= 4:
            out[name] = draw(valid_field[name])
        elif choice == 5:
            out[name] = draw(json_values)
        elif choice == 6:
            out[name] = draw(hostile_text)
        elif choice == 7 and name == "labels":
            out[name] = draw(st.lists(hostile_text, max_size=200))
        # else: absent
    if draw(st.booleans()):
        out["v"] = 1
    if draw(st.booleans()):
        out.update(draw(st.dictionaries(st.text(max_size=10), json_values, max_size=3)))
    return out


@st.composite
def deep_json(draw: st.DrawFn) -> str:
    """JSON nested a few hundred levels, optionally inside a request field."""
    depth = draw(st.integers(1, 400))
    kinds = draw(st.lists(st.booleans(), min_size=depth, max_size=depth))
    leaf = json.dumps(draw(scalars), allow_nan=True)
    opened = "".join('{"k":' if k else "[" for k in kinds)
    closed = "".join("}" if k else "]" for k in reversed(kinds))
    body = opened + leaf + closed
    where = draw(st.sampled_from([None, "v", "sensor", "labels", "text", "id", "reply_to"]))
    if where is None:
        return body
    return '{"v": 1, "text": "hi", "%s": %s}' % (where, body)  # noqa: UP031 - JSON braces


def encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


response_topics = st.one_of(st.none(), hostile_text, st.just("apps/app-1/reply"))
sub_topics = st.sampled_from(["", "/app-1", "/a/b/c"])


def inbound(
    payload: bytes, response_topic: str | None, corr: bytes | None, sub: str = ""
) -> Inbound:
    return Inbound(
        topic=TOPICS.request + sub,
        payload=payload,
        qos=1,
        retain=False,
        response_topic=response_topic,
        correlation_data=corr,
    )


# -- properties -----------------------------------------------------------------


@FAST
@given(
    payload=st.binary(max_size=2048),
    response_topic=response_topics,
    corr=st.none() | st.binary(max_size=64),
)
def test_arbitrary_bytes(payload: bytes, response_topic: str | None, corr: bytes | None) -> None:
    check_one(inbound(payload, response_topic, corr))


@FAST
@given(value=json_values, response_topic=response_topics, sub=sub_topics)
def test_arbitrary_json_values(value: Any, response_topic: str | None, sub: str) -> None:
    check_one(inbound(encode(value), response_topic, b"c", sub))


@FAST
@given(
    raw=requestish(),
    response_topic=response_topics,
    corr=st.none() | st.binary(max_size=16),
    accept=st.booleans(),
    open_=st.booleans(),
)
def test_requests_mixing_valid_and_hostile_fields(
    raw: dict[str, Any],
    response_topic: str | None,
    corr: bytes | None,
    accept: bool,
    open_: bool,
) -> None:
    check_one(inbound(encode(raw), response_topic, corr), accept=accept, open_=open_)


@FAST
@given(
    text=hostile_text,
    where=st.sampled_from(["id", "reply_to", "text", "label", "response_topic"]),
)
def test_hostile_strings_in_ids_topics_and_labels(text: str, where: str) -> None:
    raw: dict[str, Any] = {"v": 1, "id": "h-1", "text": "turn on the lights"}
    response_topic = None
    if where == "label":
        raw.update(task="classify", labels=[text, "other"])
    elif where == "response_topic":
        response_topic = text
    else:
        raw[where] = text
    rec = check_one(inbound(encode(raw), response_topic, None))
    # Wherever the hostile string was, a reply can only go to a plain topic; when
    # neither the Response Topic nor reply_to is plain, it is the device's default.
    routes = [job.route for job, _ in rec.jobs] + [route for route, _, _ in rec.replies]
    [route] = routes
    if where in ("reply_to", "response_topic"):
        own = text.startswith(TOPICS.base + "/") and text != TOPICS.response
        usable = 0 < len(text) <= 512 and _plain(text) and not own
        assert route.topic == (text if usable else TOPICS.response)


@SLOW
@given(body=deep_json(), response_topic=response_topics)
def test_deeply_nested_json(body: str, response_topic: str | None) -> None:
    check_one(inbound(body.encode(), response_topic, b"deep"), allow_internal=False)


@SLOW
@given(
    labels=st.lists(hostile_text, min_size=0, max_size=300),
    max_tokens=st.one_of(st.integers(), st.floats(allow_nan=True), st.text(max_size=5)),
)
def test_label_lists_and_token_caps(labels: list[str], max_tokens: Any) -> None:
    raw = {"v": 1, "text": "hi", "task": "classify", "labels": labels, "max_tokens": max_tokens}
    check_one(inbound(encode(raw), None, None))


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x00",
        b"null",
        b"{}",
        b'{"v":1}',
        b"\xef\xbb\xbf{}",  # UTF-8 BOM
        b'{"v":1,"text":"hi"' + b" " * 20_000 + b"}",
        b"[" * 10_000 + b"]" * 10_000,  # the hand-made 10k-deep nesting
        b'{"a":' * 3_000 + b"1" + b"}" * 3_000,  # 15 KB, under the size limit
        b'{"v":1,"text":"a\\u0000b","id":"x\\u0000y","reply_to":"r/\\u0000"}',
        b'{"v":1,"text":"hi","reply_to":"$SYS/broker/x"}',
        b'{"v":1,"text":"hi","reply_to":"slm/+/request"}',
        b'{"v":1,"text":"hi","reply_to":"#"}',
        b'{"v":1,"text":"hi","max_tokens":1e400}',
        b'{"v":1,"text":"hi","sent_at":NaN,"deadline_ms":10}',
        b'{"v":1,"text":"hi","sent_at":-Infinity,"deadline_ms":10}',
        b'{"v":1,"text":"hi","sent_at":Infinity,"deadline_ms":10}',
        b'{"v":1,"v":2,"text":"hi"}',  # duplicate keys: the last one wins in json
    ],
    ids=lambda p: p[:24].decode("latin-1"),
)
def test_hand_made_edge_cases(payload: bytes) -> None:
    check_one(inbound(payload, "apps/app-1/reply", b"c"))


@pytest.mark.parametrize(
    "nesting", [b"[" * 10_000, b"[" * 10_000 + b"]" * 10_000], ids=["open", "closed"]
)
def test_10k_deep_nesting_under_a_1mib_limit(nesting: bytes) -> None:
    """With a raised payload limit the parser itself must meet the 10k levels."""
    big = LimitSettings(max_payload_bytes=1024 * 1024)
    check_one(inbound(nesting, None, None), limits=big, allow_internal=False)


@pytest.mark.parametrize("own", ["request", "escalation", "cloud", "status"])
def test_replies_never_go_into_the_devices_own_namespace(own: str) -> None:
    """Else a requester could make the agent publish under its identity (or loop)."""
    target = getattr(TOPICS, own)
    for response_topic, reply_to in ((target, None), (None, target)):
        raw: dict[str, Any] = {"v": 1, "id": "loop", "task": "shout"}
        if reply_to:
            raw["reply_to"] = reply_to
        rec = check_one(inbound(encode(raw), response_topic, None))
        [(route, response, _)] = rec.replies
        assert route.topic == TOPICS.response
        assert response.error is not None
        assert response.error.code is ErrorCode.INVALID_REQUEST


# -- once product bugs, found by this file; kept as regressions ------------------

SURROGATE_CASES = [
    b'{"v":2,"id":"\\ud800"}',  # rejected request whose id is a lone surrogate
    b'{"v":1,"id":"s-1","task":"shout","reply_to":"apps/\\udfff"}',
    b'{"v":1,"id":"\\udbff","text":"hi","max_tokens":100000}',
]


@pytest.mark.parametrize("payload", SURROGATE_CASES, ids=["id", "reply_to", "id-rejected"])
def test_lone_surrogates_get_a_reply(payload: bytes) -> None:
    """JSON can escape lone surrogates that no UTF-8 reply can carry: typed error."""
    rec = check_one(inbound(payload, None, None))
    [(_, response, _)] = rec.replies
    assert response.error is not None
    assert response.error.code is ErrorCode.INVALID_REQUEST
    assert "surrogate" in response.error.message


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 5_000,
        b'{"v": ' + b"1" * 5_000 + b"}",
        b'{"v":1,"text":"hi","deadline_ms":' + b"9" * 400 + b"}",
    ],
    ids=["nesting", "int-digits", "deadline-overflow"],
)
def test_client_errors_are_not_internal(payload: bytes) -> None:
    check_one(inbound(payload, None, None), allow_internal=False)


def test_nan_and_infinite_sent_at_never_extend_the_deadline() -> None:
    for sent_at in ("NaN", "Infinity", "1e308"):
        body = b'{"v":1,"text":"hi","deadline_ms":50,"sent_at":%s}' % sent_at.encode()
        rec = check_one(inbound(body, None, None))
        for job, _ in rec.jobs:
            assert job.deadline is not None
            assert math.isfinite(job.deadline)
            assert job.deadline <= time.monotonic() + 0.05
