"""The request pipeline's threads: real intake, router, escalator, outbox and worker;
MQTT replaced by a recorder and the model by a stand-in answerer."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.cloud.escalator import Escalator
from agent.cloud.outbox import Outbox
from agent.cloud.scheduler import Scheduler
from agent.config import AgentSettings
from agent.engine.engine import StopWhen
from agent.handler import RequestHandler
from agent.jobs import Job
from agent.policy.redact import Redactor
from agent.policy.router import Router
from agent.recent import RecentRequests
from agent.routing import ReplyRoute
from agent.skills import SkillRegistry
from agent.telemetry import TelemetryRecorder
from edge_slm.contract import CloudReply, Outcome, Response, Source
from edge_slm.mqtt import Inbound

NETWORK = "network"  # stands for paho's network thread


class WatchedOutbox(Outbox):
    """Records the thread of every write transaction (each one an fsync)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, max_rows=100, max_bytes=10**6)
        self.writers: list[str] = []

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        self.writers.append(threading.current_thread().name)
        with super()._tx() as db:
            yield db


class WatchedRecent(RecentRequests):
    """Records the thread of every write to the file of replied requests."""

    def __init__(self) -> None:
        super().__init__()
        self.writers: list[str] = []

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        self.writers.append(threading.current_thread().name)
        super()._write(sql, params)


class Link:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        correlation_data: bytes | None = None,
        on_delivered: Callable[[], None] | None = None,
    ) -> object:
        with self._lock:
            self.published.append((topic, payload))
        if on_delivered is not None:
            on_delivered()
        return None

    def ack(self, message: Inbound) -> bool:
        return True

    def on(self, topic: str) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(p) for t, p in self.published if t == topic]

    def wait(self, topic: str, n: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        until = time.monotonic() + timeout_s
        while len(self.on(topic)) < n and time.monotonic() < until:
            time.sleep(0.01)
        found = self.on(topic)
        assert len(found) >= n, f"{len(found)} of {n} messages on {topic}"
        return found


class HeldAnswerer:
    """Answers on the edge once ``release`` is set: inference that takes its time."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()

    def __call__(self, job: Job, stop: StopWhen) -> Response:
        self.started.set()
        self.release.wait(10)
        return Response(
            id=job.request.id, ok=True, answer="edge", confidence=0.99, source=Source.EDGE
        )


@pytest.fixture
def settings(tmp_path: Path) -> AgentSettings:
    return AgentSettings(device_id="dev-pipe", outbox={"path": tmp_path / "outbox.db"})


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[WatchedOutbox]:
    box = WatchedOutbox(tmp_path / "outbox.db")
    yield box
    box.close()


@pytest.fixture
def recent(tmp_path: Path) -> Iterator[WatchedRecent]:
    replied = WatchedRecent()
    replied.open(tmp_path / "replied.db")
    yield replied
    replied.close()


@pytest.fixture
def pipeline(
    settings: AgentSettings, outbox: WatchedOutbox, recent: WatchedRecent
) -> Iterator[tuple[RequestHandler, Link, HeldAnswerer]]:
    link = Link()
    scheduler = Scheduler()
    scheduler.start()
    holder: list[RequestHandler] = []

    def publish(topic: str, payload: bytes, corr: bytes, _expiry_s: int) -> None:
        link.publish(topic, payload, correlation_data=corr)

    def send_reply(route: ReplyRoute, response: Response) -> None:
        holder[0].send_reply(route, response)  # built after the escalator, as in the daemon

    escalator = Escalator(
        topics=settings.topics,
        outbox=outbox,
        scheduler=scheduler,
        redactor=Redactor([]),
        cloud=settings.cloud,
        outbox_settings=settings.outbox,
        publish=publish,
        send_reply=send_reply,
    )
    answerer = HeldAnswerer()
    handler = RequestHandler(
        settings,
        link=link,
        escalator=escalator,
        router=Router(settings.policy, settings.cloud, budget_left=lambda: True),
        telemetry=TelemetryRecorder(
            device_id=settings.device_id, model="stand-in", settings=settings.telemetry
        ),
        recent=recent,
        skills=SkillRegistry(),
        answerer=answerer,
    )
    holder.append(handler)
    handler.start()
    yield handler, link, answerer
    answerer.release.set()
    handler.stop()
    scheduler.stop()


def _on_network(fn: Callable[[], None]) -> None:
    thread = threading.Thread(target=fn, name=NETWORK)
    thread.start()
    thread.join()


def _request(settings: AgentSettings, request_id: str, **fields: Any) -> Inbound:
    payload = {"v": 1, "id": request_id, "text": "turn on the lights", **fields}
    return Inbound(
        topic=settings.topics.request,
        payload=json.dumps(payload).encode(),
        qos=1,
        retain=False,
        response_topic="app/reply",
    )


def _cloud(settings: AgentSettings, request_id: str) -> Inbound:
    reply = CloudReply(
        id=request_id,
        device_id=settings.device_id,
        ok=True,
        outcome=Outcome.OK,
        answer="cloud",
        model="big",
    )
    return Inbound(topic=settings.topics.cloud, payload=reply.to_wire(), qos=1, retain=False)


def test_no_outbox_write_happens_on_the_network_thread(
    pipeline: tuple[RequestHandler, Link, HeldAnswerer],
    settings: AgentSettings,
    outbox: WatchedOutbox,
) -> None:
    handler, link, answerer = pipeline
    topics = settings.topics
    answerer.release.set()
    # An early escalation (stored, published), its cloud answer (the row goes), a
    # second one left pending and re-sent as on a reconnect.
    _on_network(lambda: handler.on_message(_request(settings, "r1", cloud="always")))
    link.wait(topics.escalation, 1)
    _on_network(lambda: handler.on_message(_cloud(settings, "r1")))
    [reply] = link.wait("app/reply", 1)
    assert reply["source"] == "cloud"
    _on_network(lambda: handler.on_message(_request(settings, "r2", cloud="always")))
    link.wait(topics.escalation, 2)
    _on_network(handler.resend_pending)
    escalations = link.wait(topics.escalation, 3)
    assert [e["id"] for e in escalations] == ["r1", "r2", "r2"]
    assert outbox.writers, "the outbox was never written"
    assert NETWORK not in outbox.writers


def test_an_early_escalation_does_not_wait_behind_inference(
    pipeline: tuple[RequestHandler, Link, HeldAnswerer], settings: AgentSettings
) -> None:
    handler, link, answerer = pipeline
    _on_network(lambda: handler.on_message(_request(settings, "busy", cloud="never")))
    assert answerer.started.wait(10)  # the worker is now held by a long generation
    _on_network(lambda: handler.on_message(_request(settings, "urgent", cloud="always")))
    [escalation] = link.wait(settings.topics.escalation, 1)
    assert escalation["id"] == "urgent"
    assert not answerer.release.is_set()  # sent while the generation still ran


def test_a_refusal_that_answers_a_request_is_recorded_off_the_network_thread(
    pipeline: tuple[RequestHandler, Link, HeldAnswerer],
    settings: AgentSettings,
    recent: WatchedRecent,
) -> None:
    handler, link, _ = pipeline
    too_long = settings.limits.max_tokens_cap + 1
    _on_network(lambda: handler.on_message(_request(settings, "long", max_tokens=too_long)))
    [reply] = link.wait("app/reply", 1)
    assert reply["error"]["code"] == "max_tokens_exceeded"
    assert recent.writers, "the reply was never recorded"
    assert NETWORK not in recent.writers
