"""When the intake acknowledges a delivery, and when it holds it for the final reply.

The agent PUBACKs a request only once its final reply is out (agent/recent.py), so
the intake must ack what it answers itself, hold what it admits, and never answer
a request id twice with different replies.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from agent.config import LimitSettings
from agent.intake import Intake
from agent.jobs import Job
from agent.recent import RecentRequests
from agent.routing import ReplyRoute
from edge_slm.contract import ErrorCode, Response
from edge_slm.mqtt import Inbound
from edge_slm.topics import DeviceTopics

TOPICS = DeviceTopics("slm", "dev-acks")
REPLY_TOPIC = "apps/a/reply"


@dataclass
class Harness:
    recent: RecentRequests = field(default_factory=RecentRequests)
    jobs: list[Job] = field(default_factory=list)
    raw: list[Response] = field(default_factory=list)  # replies published as they are
    final: list[Response] = field(default_factory=list)  # the one final reply per id
    acked: list[int] = field(default_factory=list)
    accept: bool = True

    def __post_init__(self) -> None:
        self.intake = Intake(
            topics=TOPICS,
            limits=LimitSettings(),
            submit=self._submit,
            queue_depth=lambda: len(self.jobs),
            send_reply=lambda _route, r: self.raw.append(r),
            send_final=self._send_final,
            ack=lambda msg: self.acked.append(msg.mid),
            recent=self.recent,
        )

    def _submit(self, job: Job, _topic: str) -> bool:
        if self.accept:
            self.jobs.append(job)
        return self.accept

    def _send_final(self, route: ReplyRoute, response: Response) -> None:
        # As the daemon does: settle the held deliveries once the reply is out.
        assert response.id is not None
        held = self.recent.finish((route.topic, response.id), response)
        if held is None:
            return
        self.final.append(response)
        self.recent.delivered((route.topic, response.id))
        self.acked.extend(d.mid for d in held)

    def deliver(self, mid: int, body: dict[str, Any] | bytes, *, dup: bool = False) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.intake.on_message(
            Inbound(
                topic=TOPICS.request,
                payload=payload,
                qos=1,
                retain=False,
                response_topic=REPLY_TOPIC,
                mid=mid,
                dup=dup,
            )
        )


def _request(request_id: str, **extra: Any) -> dict[str, Any]:
    return {"v": 1, "id": request_id, "text": "turn on the lights", **extra}


def test_unusable_input_is_answered_and_acked_at_once() -> None:
    h = Harness()
    h.deliver(1, b"{not json")
    h.deliver(2, {"v": 1, "id": "no-text"})
    assert [r.error.code for r in h.raw if r.error] == [
        ErrorCode.INVALID_JSON,
        ErrorCode.INVALID_REQUEST,
    ]
    assert h.acked == [1, 2]


def test_version_problems_get_the_contract_error_on_the_reply_topic() -> None:
    # The same codes and texts as the relay's and the fleet's intakes (one decode).
    h = Harness()
    missing = _request("no-v")
    del missing["v"]
    h.deliver(1, missing)
    h.deliver(2, _request("v2", v=2))
    assert [(r.id, r.error.code, r.error.message) for r in h.raw if r.error] == [
        ("no-v", ErrorCode.INVALID_REQUEST, "v: field required"),
        (
            "v2",
            ErrorCode.UNSUPPORTED_VERSION,
            "contract version 2 is not supported; this side speaks v1",
        ),
    ]
    assert h.jobs == []
    assert h.acked == [1, 2]


def test_an_admitted_request_is_held_until_its_final_reply() -> None:
    h = Harness()
    h.deliver(1, _request("r1"))
    h.deliver(2, _request("r1"))  # a copy while in flight: absorbed, held too
    assert len(h.jobs) == 1
    assert h.acked == []
    h._send_final(ReplyRoute(REPLY_TOPIC), Response(id="r1", ok=True, answer="done"))
    assert h.acked == [1, 2]


def test_a_full_queue_replies_busy_and_acks() -> None:
    h = Harness(accept=False)
    h.deliver(1, _request("r1"))
    assert [r.error.code for r in h.raw if r.error] == [ErrorCode.BUSY]
    assert h.acked == [1]
    h.accept = True
    h.deliver(2, _request("r1"))  # busy is not cached: the retry is admitted
    assert len(h.jobs) == 1


def test_a_late_copy_never_gets_a_second_different_answer() -> None:
    h = Harness()
    h.deliver(1, _request("r1", deadline_ms=60_000, sent_at=time.time()))
    late = _request("r1", deadline_ms=1, sent_at=time.time() - 10)
    h.deliver(2, late, dup=True)  # its deadline passed, but the first copy is in progress
    assert h.raw == []
    assert h.final == []
    assert h.acked == []  # held with the first copy
    h._send_final(ReplyRoute(REPLY_TOPIC), Response(id="r1", ok=True, answer="done"))
    assert [r.answer for r in h.final] == ["done"]
    assert sorted(h.acked) == [1, 2]


def test_a_refusal_answers_its_id_once() -> None:
    h = Harness()
    expired = _request("r2", deadline_ms=1, sent_at=time.time() - 10)
    h.deliver(1, expired)
    assert [r.error.code for r in h.final if r.error] == [ErrorCode.DEADLINE_EXCEEDED]
    assert h.acked == [1]
    # The cloud's answer to the same id (an escalation a crashed run accepted) is dropped.
    assert h.recent.finish((REPLY_TOPIC, "r2"), Response(id="r2", ok=True, answer="x")) is None


def test_redeliveries_of_answered_requests_are_acked_or_replayed() -> None:
    h = Harness()
    h.deliver(1, _request("r3"))
    h._send_final(ReplyRoute(REPLY_TOPIC), Response(id="r3", ok=True, answer="done"))
    h.deliver(2, _request("r3"), dup=True)  # the broker's redelivery: the reply is out
    assert h.raw == []
    h.deliver(3, _request("r3"))  # the app sending it again: it may have lost the reply
    assert [r.answer for r in h.raw] == ["done"]
    assert h.acked == [1, 2, 3]
    assert len(h.jobs) == 1  # one inference


def test_an_unconfirmed_reply_is_replayed_to_a_redelivery(tmp_path: Any) -> None:
    """After a crash between publishing a reply and the broker confirming it."""
    first = RecentRequests()
    first.open(tmp_path / "replied.db")
    first.begin((REPLY_TOPIC, "r4"))
    first.finish((REPLY_TOPIC, "r4"), Response(id="r4", ok=True, answer="same"))
    first.begin((REPLY_TOPIC, "r5"))
    first.finish((REPLY_TOPIC, "r5"), Response(id="r5", ok=True, answer="confirmed"))
    first.delivered((REPLY_TOPIC, "r5"))
    first.close()  # killed before the broker's PUBACK of r4's reply
    h = Harness(recent=RecentRequests())
    assert h.recent.open(tmp_path / "replied.db") == 2
    h.deliver(1, _request("r4"), dup=True)
    assert [r.answer for r in h.raw] == ["same"]  # byte for byte the same reply again
    h.deliver(2, _request("r5"), dup=True)
    assert [r.answer for r in h.raw] == ["same"]  # confirmed: only the ack is owed
    assert h.jobs == []
    assert h.acked == [1, 2]
