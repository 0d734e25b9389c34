"""The escalator with a real outbox and timer thread; MQTT replaced by recorders."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from agent.cloud.escalator import Escalator
from agent.cloud.outbox import Outbox
from agent.cloud.scheduler import Scheduler
from agent.config import CloudSettings, OutboxSettings
from agent.jobs import Job
from agent.policy.redact import Redactor
from agent.routing import ReplyRoute
from edge_slm.contract import (
    CloudReply,
    ErrorCode,
    Escalation,
    EscalationReason,
    Outcome,
    Request,
    Response,
    Source,
)
from edge_slm.mqtt import Inbound
from edge_slm.topics import DeviceTopics

TOPICS = DeviceTopics("slm", "dev1")


class Wire:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, bytes, int]] = []
        self.replies: list[tuple[ReplyRoute, Response]] = []

    def publish(self, topic: str, payload: bytes, corr: bytes, expiry: int) -> None:
        self.published.append((topic, payload, corr, expiry))

    def reply(self, route: ReplyRoute, response: Response) -> None:
        self.replies.append((route, response))

    def wait_replies(self, n: int, timeout: float = 5.0) -> list[Response]:
        deadline = time.monotonic() + timeout
        while len(self.replies) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return [r for _, r in self.replies]


@pytest.fixture
def wire() -> Wire:
    return Wire()


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "o.db", max_rows=100, max_bytes=10**6)
    yield box
    box.close()


@pytest.fixture
def make(wire: Wire, outbox: Outbox) -> Iterator[object]:
    schedulers: list[Scheduler] = []

    def build(timeout_s: float = 5.0, ttl_s: float = 3600.0) -> Escalator:
        scheduler = Scheduler()
        scheduler.start()
        schedulers.append(scheduler)
        return Escalator(
            topics=TOPICS,
            outbox=outbox,
            scheduler=scheduler,
            redactor=Redactor(["Anna"]),
            cloud=CloudSettings(timeout_s=timeout_s, margin_ms=10),
            outbox_settings=OutboxSettings(ttl_s=ttl_s),
            publish=wire.publish,
            send_reply=wire.reply,
        )

    yield build
    for s in schedulers:
        s.stop()


def _job(request_id: str = "r1", deadline_s: float | None = None, **fields: object) -> Job:
    request = Request.model_validate(
        {
            "v": 1,
            "id": request_id,
            "text": "Call Anna at +49 30 1234567 or anna@example.com",
            **fields,
        }
    )
    now = time.monotonic()
    return Job(
        request=request,
        route=ReplyRoute("app/reply", b"corr"),
        received_at=now,
        deadline=now + deadline_s if deadline_s else None,
        max_tokens=32,
    )


def _edge(request_id: str = "r1") -> Response:
    return Response(
        id=request_id, ok=True, answer="edge says", confidence=0.3, source=Source.EDGE, model="s"
    )


def _cloud(request_id: str = "r1", ok: bool = True) -> Inbound:
    reply = CloudReply(
        id=request_id,
        device_id="dev1",
        ok=ok,
        outcome=Outcome.OK if ok else Outcome.LLM_ERROR,
        answer="cloud says" if ok else None,
        model="big",
        error=None if ok else {"code": "internal", "message": "503"},  # type: ignore[arg-type]
    )
    return Inbound(topic=TOPICS.cloud, payload=reply.to_wire(), qos=1, retain=False)


def test_escalation_is_stored_redacted_and_published(make, wire: Wire, outbox: Outbox) -> None:
    esc = make()
    assert esc.escalate(_job(), EscalationReason.LOW_CONFIDENCE, "confidence low", _edge())
    assert outbox.get("r1") is not None
    [(topic, payload, corr, expiry)] = wire.published
    assert topic == TOPICS.escalation
    assert corr == b"r1"
    assert 3500 < expiry <= 3600
    sent = Escalation.model_validate_json(payload)
    assert "Anna" not in sent.text
    assert "+49" not in sent.text
    assert "anna@example.com" not in sent.text
    assert sent.redactions == {"name": 1, "phone": 1, "email": 1}
    assert sent.edge is not None
    assert sent.edge.confidence == 0.3


def test_cloud_in_time_is_the_one_reply(make, wire: Wire, outbox: Outbox) -> None:
    esc = make()
    esc.escalate(_job(), EscalationReason.LOW_CONFIDENCE, "low", _edge())
    esc.on_cloud(_cloud())
    [reply] = wire.wait_replies(1)
    assert reply.source is Source.CLOUD
    assert reply.answer == "cloud says"
    assert reply.supersedes is None
    assert wire.replies[0][0] == ReplyRoute("app/reply", b"corr")
    assert outbox.get("r1") is None
    esc.on_cloud(_cloud())  # a duplicate changes nothing
    time.sleep(0.1)
    assert len(wire.replies) == 1


def test_a_first_reply_is_remembered_before_it_is_sent(outbox: Outbox) -> None:
    """Killed right after the app got its reply, the next run must know it was answered."""
    remembered: list[bool] = []

    def reply(_route: ReplyRoute, response: Response) -> None:
        row = outbox.get(response.id or "")
        remembered.append(row is not None and row.replied)

    scheduler = Scheduler()
    scheduler.start()
    try:
        esc = Escalator(
            topics=TOPICS,
            outbox=outbox,
            scheduler=scheduler,
            redactor=Redactor([]),
            cloud=CloudSettings(timeout_s=5, margin_ms=10),
            outbox_settings=OutboxSettings(),
            publish=lambda *_a: None,
            send_reply=reply,
        )
        esc.escalate(_job(), EscalationReason.LOW_CONFIDENCE, "low", _edge())
        esc.on_cloud(_cloud())  # in time: the first reply, sent synchronously
    finally:
        scheduler.stop()
    assert remembered == [True]


def test_late_cloud_gives_fallback_then_correction(make, wire: Wire, outbox: Outbox) -> None:
    esc = make()
    esc.escalate(_job(deadline_s=0.2), EscalationReason.LOW_CONFIDENCE, "low", _edge())
    [fallback] = wire.wait_replies(1)
    assert fallback.source is Source.EDGE_FALLBACK
    assert fallback.answer == "edge says"
    assert "did not answer in time" in (fallback.reason or "")
    esc.on_cloud(_cloud())
    replies = wire.wait_replies(2)
    assert replies[1].source is Source.CLOUD
    assert replies[1].supersedes is True
    assert outbox.get("r1") is None


def test_no_correction_when_the_app_opted_out(make, wire: Wire) -> None:
    esc = make()
    job = _job(deadline_s=0.2, corrections=False)
    esc.escalate(job, EscalationReason.LOW_CONFIDENCE, "low", _edge())
    wire.wait_replies(1)
    esc.on_cloud(_cloud())
    time.sleep(0.1)
    assert [r.source for _, r in wire.replies] == [Source.EDGE_FALLBACK]


def test_early_escalation_waits_for_the_edge_answer(make, wire: Wire) -> None:
    esc = make(timeout_s=0.1)
    esc.escalate(_job(), EscalationReason.CLOUD_ALWAYS, "always", None)
    time.sleep(0.3)  # the cloud wait is over, but there is nothing to fall back on yet
    assert wire.replies == []
    esc.edge_ready("r1", _edge())
    [reply] = wire.wait_replies(1)
    assert reply.source is Source.EDGE_FALLBACK


def test_a_queued_edge_answer_at_the_deadline_is_a_typed_error_not_silence(
    make, wire: Wire
) -> None:
    esc = make()
    esc.escalate(_job(deadline_s=0.1), EscalationReason.CLOUD_ALWAYS, "always", None)
    [reply] = wire.wait_replies(1)  # at the deadline, the edge job still queued
    assert reply.error is not None
    assert reply.error.code is ErrorCode.DEADLINE_EXCEEDED
    esc.edge_ready("r1", _edge())  # too late: recorded, not sent
    time.sleep(0.1)
    assert len(wire.replies) == 1
    esc.on_cloud(_cloud())  # the cloud answer still comes, as a correction
    replies = wire.wait_replies(2)
    assert replies[1].source is Source.CLOUD
    assert replies[1].supersedes is True


def test_after_a_deadline_error_nothing_follows_without_corrections(
    make, wire: Wire, outbox: Outbox
) -> None:
    esc = make()
    job = _job(deadline_s=0.1, corrections=False)
    esc.escalate(job, EscalationReason.CLOUD_ALWAYS, "always", None)
    [reply] = wire.wait_replies(1)
    assert reply.error is not None
    assert reply.error.code is ErrorCode.DEADLINE_EXCEEDED
    esc.on_cloud(_cloud())  # late, and the app did not ask for corrections
    assert len(wire.replies) == 1  # on_cloud replies synchronously: nothing more comes
    assert outbox.get("r1") is None


def test_after_a_deadline_error_an_expired_escalation_says_the_error_stands(
    make, wire: Wire
) -> None:
    esc = make(ttl_s=0.2)
    esc.escalate(_job(deadline_s=0.05), EscalationReason.CLOUD_ALWAYS, "always", None)
    assert wire.wait_replies(1)[0].error is not None
    time.sleep(0.25)
    assert esc.sweep() == 1
    notice = wire.wait_replies(2)[1]
    assert notice.supersedes is True
    assert notice.error is not None
    assert notice.error.code is ErrorCode.CLOUD_EXPIRED
    # The app's first reply was an error, not an edge answer: the notice says so.
    assert notice.error.message.endswith("the earlier reply stands")


def test_a_failed_cloud_after_the_fallback_says_no_correction_comes(make, wire: Wire) -> None:
    esc = make()
    esc.escalate(_job(deadline_s=0.15), EscalationReason.LOW_CONFIDENCE, "low", _edge())
    assert wire.wait_replies(1)[0].source is Source.EDGE_FALLBACK
    esc.on_cloud(_cloud(ok=False))
    notice = wire.wait_replies(2)[1]
    assert notice.ok is False
    assert notice.supersedes is True
    assert notice.error is not None
    assert notice.error.code is ErrorCode.CLOUD_FAILED


def test_cloud_failure_falls_back_at_once(make, wire: Wire) -> None:
    esc = make(timeout_s=30)
    esc.escalate(_job(), EscalationReason.LOW_CONFIDENCE, "low", _edge())
    esc.on_cloud(_cloud(ok=False))
    [reply] = wire.wait_replies(1)
    assert reply.source is Source.EDGE_FALLBACK
    assert "cloud failed (llm_error)" in (reply.reason or "")


def test_silent_cloud_makes_later_escalations_fall_back_at_once(make, wire: Wire) -> None:
    esc = make(timeout_s=0.1)
    esc.escalate(_job("a"), EscalationReason.LOW_CONFIDENCE, "low", _edge("a"))
    wire.wait_replies(1)
    esc.escalate(_job("b"), EscalationReason.LOW_CONFIDENCE, "low", _edge("b"))
    replies = wire.wait_replies(2)
    # Answered at once for that reason, not after another timed-out wait.
    assert "has not answered since" in (replies[1].reason or "")
    esc.on_cloud(_cloud("a"))  # the cloud is back: waiting resumes
    esc.escalate(_job("c"), EscalationReason.LOW_CONFIDENCE, "low", _edge("c"))
    esc.on_cloud(_cloud("c"))
    replies = wire.wait_replies(4)
    assert [r.id for r in replies[2:]] == ["a", "c"]
    assert replies[3].source is Source.CLOUD


def test_expired_escalation_tells_an_app_awaiting_a_correction(
    make, wire: Wire, outbox: Outbox
) -> None:
    esc = make(timeout_s=0.05, ttl_s=0.2)
    esc.escalate(_job(), EscalationReason.LOW_CONFIDENCE, "low", _edge())
    wire.wait_replies(1)
    time.sleep(0.25)
    assert esc.sweep() == 1
    replies = wire.wait_replies(2)
    assert replies[1].ok is False
    assert replies[1].supersedes is True
    assert replies[1].error is not None
    assert replies[1].error.code is ErrorCode.CLOUD_EXPIRED
    assert outbox.counter("dropped_expired") == 1


def test_after_restart_pending_rows_are_republished_and_answered(
    make, wire: Wire, outbox: Outbox
) -> None:
    # The first escalator stands for a process that died; its wait never ends.
    make(timeout_s=600).escalate(_job(), EscalationReason.LOW_CONFIDENCE, "low", _edge())
    fresh = make()  # a new process: nothing is waiting in memory
    assert fresh.republish() == 1
    assert len(wire.published) == 2
    assert outbox.get("r1") is not None
    assert outbox.get("r1").publishes == 2  # type: ignore[union-attr]
    fresh.on_cloud(_cloud())
    [reply] = wire.wait_replies(1)
    # The dead process never replied, so the cloud's answer is the app's first one.
    assert reply.supersedes is None
    assert reply.ok is True
    assert reply.source is Source.CLOUD
    assert outbox.get("r1") is None


def test_after_restart_a_request_that_got_its_fallback_gets_a_correction(
    make, wire: Wire, outbox: Outbox
) -> None:
    job = _job(corrections=True)
    make(timeout_s=0.05).escalate(job, EscalationReason.LOW_CONFIDENCE, "low", _edge())
    [fallback] = wire.wait_replies(1)
    assert fallback.source is Source.EDGE_FALLBACK
    assert outbox.get("r1").replied is True  # type: ignore[union-attr]
    make().on_cloud(_cloud())  # a new process gets the late cloud answer
    _, correction = wire.wait_replies(2)
    assert correction.supersedes is True
    assert correction.source is Source.CLOUD


def test_reply_for_another_device_is_ignored(make, wire: Wire, outbox: Outbox) -> None:
    esc = make()
    esc.escalate(_job(), EscalationReason.LOW_CONFIDENCE, "low", _edge())
    forged = json.loads(_cloud().payload)
    forged["device_id"] = "dev2"
    esc.on_cloud(
        Inbound(topic=TOPICS.cloud, payload=json.dumps(forged).encode(), qos=1, retain=False)
    )
    time.sleep(0.05)
    assert wire.replies == []
    assert outbox.get("r1") is not None


def test_sweep_resends_quiet_escalations(wire: Wire, outbox: Outbox) -> None:
    scheduler = Scheduler()
    scheduler.start()
    try:
        esc = Escalator(
            topics=TOPICS,
            outbox=outbox,
            scheduler=scheduler,
            redactor=Redactor(),
            cloud=CloudSettings(timeout_s=60),
            outbox_settings=OutboxSettings(republish_s=0.1),
            publish=wire.publish,
            send_reply=wire.reply,
        )
        esc.escalate(_job(), EscalationReason.LOW_CONFIDENCE, "low", _edge())
        esc.sweep()  # too soon: published just now
        assert len(wire.published) == 1
        time.sleep(0.15)
        esc.sweep()
        assert len(wire.published) == 2
        assert wire.published[0][:3] == wire.published[1][:3]  # the same escalation again
        esc.on_cloud(_cloud())
        time.sleep(0.15)
        esc.sweep()  # answered: nothing left to re-send
        assert len(wire.published) == 2
    finally:
        scheduler.stop()


def test_a_busy_relay_is_retried_not_taken_as_final(make, wire: Wire, outbox: Outbox) -> None:
    esc = make(timeout_s=30)
    esc.escalate(_job(), EscalationReason.LOW_CONFIDENCE, "low", _edge())
    busy = CloudReply(
        id="r1",
        device_id="dev1",
        ok=False,
        outcome=Outcome.LLM_ERROR,
        error={"code": "busy", "message": "queue full", "retry_after_ms": 100},  # type: ignore[arg-type]
    )
    esc.on_cloud(Inbound(topic=TOPICS.cloud, payload=busy.to_wire(), qos=1, retain=False))
    assert outbox.get("r1") is not None  # kept for the retry
    time.sleep(0.3)
    assert len(wire.published) == 2  # sent again after the hint
    assert wire.replies == []  # the app is still waiting, for the real answer
    esc.on_cloud(_cloud())
    [reply] = wire.wait_replies(1)
    assert reply.source is Source.CLOUD


@pytest.mark.parametrize(
    ("change", "code"),
    [({"v": 2}, "unsupported_version"), ({"v": None}, "invalid_request")],
    ids=["v2", "no-v"],
)
def test_cloud_reply_of_another_version_gets_the_contract_error(
    make, wire: Wire, outbox: Outbox, change: dict[str, object], code: str
) -> None:
    esc = make()
    esc.escalate(_job(), EscalationReason.LOW_CONFIDENCE, "low", _edge())
    body = {**json.loads(_cloud().payload), **change}
    payload = json.dumps({k: v for k, v in body.items() if v is not None}).encode()
    with structlog.testing.capture_logs() as logs:
        esc.on_cloud(Inbound(topic=TOPICS.cloud, payload=payload, qos=1, retain=False))
    [event] = [e for e in logs if e["event"].startswith("cloud_reply")]
    assert (event["event"], event["code"]) == ("cloud_reply_rejected", code)
    assert outbox.get("r1") is not None  # still waiting for a reply it can read
    assert wire.replies == []
