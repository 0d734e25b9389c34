"""The agent's request pipeline: intake, routing, escalation, inference, replies.

Threads (the relay's ``daemon`` + ``handling`` split, on threads):

* paho's network thread: :meth:`RequestHandler.on_message` validates a request
  (:mod:`agent.intake`), holds its place in the inference queue (full: ``busy``)
  and hands it to the dispatch thread; a cloud reply, or a relay's ``online``
  (``edge_slm.topics.relay_status``), is handed over as it is. Nothing here
  routes, redacts or writes to disk.
* the dispatch thread: routes before generation, stores and publishes an early
  escalation (an outbox fsync), then queues the job for inference; handles
  cloud replies and re-sends pending escalations (on connect, and when a relay
  comes online, instead of at the next ``outbox.republish_s``). It never waits
  on inference, so an early escalation leaves at once however many jobs are
  queued.
* the inference worker: the edge answer, routing after it, a late escalation,
  the reply.
* the escalator's timer thread: cloud waits running out, outbox sweeps.

The dispatch queue is bounded without a limit of its own: each request in it
holds a place in the inference queue (``limits.queue_size``), a cloud reply
stays unacked until handled (so the broker's in-flight window bounds them),
and re-sends are coalesced into one pending run.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import structlog

from agent.answering import EDGE_REASON, answer, with_latency
from agent.engine.engine import Engine, StopWhen
from agent.intake import Intake
from agent.jobs import Job
from agent.worker import InferenceWorker
from edge_slm.contract import (
    ErrorCode,
    EscalationReason,
    RelayStatus,
    Response,
    Task,
    WireError,
    decode,
)
from edge_slm.logs import get_logger
from edge_slm.topics import matches, relay_status_filter

if TYPE_CHECKING:
    from collections.abc import Sequence

    from agent.cloud.escalator import Escalator
    from agent.config import AgentSettings
    from agent.engine.holder import ModelHolder
    from agent.policy.router import Router
    from agent.recent import RecentRequests
    from agent.routing import ReplyRoute
    from agent.skills import SkillRegistry
    from agent.skills.embedding import Embedder
    from agent.telemetry import TelemetryRecorder
    from edge_slm.head import Head
    from edge_slm.mqtt import Inbound

log = get_logger("agent.handler")

#: Answers a job on the edge (worker thread): the stop condition carries its deadline.
EdgeAnswerer = Callable[[Job, StopWhen], Response]


class Link(Protocol):
    """The MQTT calls the pipeline makes (``edge_slm.mqtt.MqttConnection``)."""

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        correlation_data: bytes | None = None,
        on_delivered: Callable[[], None] | None = None,
    ) -> object: ...

    def ack(self, message: Inbound) -> bool: ...


class ModelAnswerer:
    """The edge answer from the current model, loaded first if it was unloaded."""

    def __init__(
        self,
        models: ModelHolder[Engine],
        *,
        embedder: Embedder | None,
        telemetry: TelemetryRecorder,
        heads: Callable[[str], tuple[Head, int] | None] = lambda _name: None,
        label_heads: Callable[[Sequence[str]], tuple[Head, int] | None] = lambda _labels: None,
    ) -> None:
        self._models = models
        self._embedder = embedder
        self._telemetry = telemetry
        # Pushed heads, read per request: SkillRegistry.head, LabelHeads.for_labels.
        self._heads = heads
        self._label_heads = label_heads

    def __call__(self, job: Job, stop: StopWhen) -> Response:
        engine = self._models.get()
        labels = job.request.labels
        head = None
        if job.skill is not None:
            head = self._heads(job.skill.name)
        elif labels:
            head = self._label_heads(labels)
        try:
            response = answer(
                engine,
                job.request,
                max_tokens=job.max_tokens,
                stop=stop,
                skill=job.skill,
                embedder=self._embedder,
                head=head,
            )
        finally:
            self._models.touch()
        if response.ok and job.request.task is not Task.CLASSIFY:
            self._telemetry.decoded(engine.last_decode_tok_s)
        return response


def _relay_state(payload: bytes) -> str | None:
    """``state`` of a relay's status, or None (logged) when it is not one."""
    try:
        return decode(RelayStatus, payload).state
    except WireError as exc:
        log.warning("relay_status_invalid", error=str(exc))
        return None


class _Dispatcher:
    """One thread running handed-over work in order; a failing item is logged, never fatal."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="dispatch", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def put(self, work: Callable[[], None]) -> None:
        self._queue.put(work)

    def stop(self, join_timeout_s: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(join_timeout_s)

    def _run(self) -> None:
        while (work := self._queue.get()) is not None:
            try:
                work()
            except Exception:
                log.exception("dispatch_failed")


class RequestHandler:
    """Every request from delivery to its one final reply (and a correction after it)."""

    def __init__(
        self,
        settings: AgentSettings,
        *,
        link: Link,
        escalator: Escalator,
        router: Router,
        telemetry: TelemetryRecorder,
        recent: RecentRequests,
        skills: SkillRegistry,
        answerer: EdgeAnswerer,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._topics = settings.topics
        self._relay_status = relay_status_filter(settings.topic_prefix)
        self._link = link
        self._escalator = escalator
        self._router = router
        self._telemetry = telemetry
        self._recent = recent
        self._answerer = answerer
        self._skills = skills
        self._dispatcher = _Dispatcher()
        self._resend_pending = threading.Event()  # coalesces re-send requests
        self.worker = InferenceWorker(
            self._answer,
            self._finish,
            queue_size=settings.limits.queue_size,
            on_idle=on_idle,
        )
        self.intake = Intake(
            topics=self._topics,
            limits=settings.limits,
            submit=self._submit,
            queue_depth=lambda: self.worker.depth,
            send_reply=self._publish_reply,
            send_final=self._send_final_later,
            ack=link.ack,
            recent=recent,
            skills=skills.get,
        )

    @property
    def dispatch_alive(self) -> bool:
        return self._dispatcher.alive

    def start(self) -> None:
        self._dispatcher.start()
        self.worker.start()

    def stop(self) -> None:
        self.worker.stop()
        self._dispatcher.stop()

    def drain(self, timeout_s: float) -> None:
        """Stop intake, finish queued work for up to ``timeout_s``, refuse what is left."""
        self.intake.close()
        log.info("draining", in_flight=self.worker.depth, timeout_s=timeout_s)
        for job in self.worker.drain(timeout_s):
            self._shutting_down(job)

    # -- network thread ------------------------------------------------------

    def on_message(self, msg: Inbound) -> None:
        """A request, a cloud reply or a relay's status: checked here, handled off this thread."""
        if msg.topic == self._topics.cloud:
            self._dispatcher.put(lambda: self._on_cloud(msg))
        elif matches(self._relay_status, msg.topic):
            self._on_relay_status(msg)
        else:
            self.intake.on_message(msg)  # acks each request once it is answered

    def _on_relay_status(self, msg: Inbound) -> None:
        """A relay came online: what waits in the outbox goes now, not at the next re-send.

        A retained copy only replays the past (the re-send on connect covers it).
        """
        if not msg.retain and _relay_state(msg.payload) == "online":
            log.info("relay_online", topic=msg.topic)
            self.resend_pending()
        self._link.ack(msg)

    def resend_pending(self) -> None:
        """Publish every pending escalation again, soon (on connect; the relay is back)."""
        if self._resend_pending.is_set():
            return  # one run is already queued: it sends them all
        self._resend_pending.set()
        self._dispatcher.put(self._resend)

    def _submit(self, job: Job, topic: str) -> bool:
        """Hold the job's place in the inference queue; False (``busy``) when it is full."""
        if not self.worker.reserve():
            return False
        self._dispatcher.put(lambda: self._dispatch(job, topic))
        return True

    def _send_final_later(self, route: ReplyRoute, response: Response) -> None:
        """A refusal that answers a request: its reply is recorded (SQLite) off this thread."""
        self._dispatcher.put(lambda: self.send_reply(route, response))

    # -- dispatch thread -----------------------------------------------------

    def _dispatch(self, job: Job, topic: str) -> None:
        """Route before generation, escalate early if so decided, then queue for inference."""
        if self.worker.cancelled.is_set():  # the drain ran out of time: too late to start
            self.worker.release()
            self._shutting_down(job)
            return
        try:
            decision = self._router.before(job.request, topic)
            if decision.escalate and decision.reason is not None:
                if self._escalator.escalate(job, decision.reason, decision.text, None):
                    self._telemetry.escalated(decision.reason)
                else:  # the outbox refused it: the edge answer will do
                    decision = dataclasses.replace(decision, escalate=False)
        except Exception as exc:
            # A bug must cost one request (a typed error reply), never the dispatch thread.
            with structlog.contextvars.bound_contextvars(request_id=job.request.id):
                log.exception("routing_failed")
            self.worker.release()
            self._reply_job(job, Response.failure(job.request.id, ErrorCode.INTERNAL, str(exc)))
            return
        self.worker.put(dataclasses.replace(job, decision=decision))

    def _on_cloud(self, msg: Inbound) -> None:
        try:
            self._escalator.on_cloud(msg)
        finally:
            # Handled (or refused, and logged): a redelivery would not change that, and
            # unacked messages would use up the broker's in-flight window.
            self._link.ack(msg)

    def _resend(self) -> None:
        self._resend_pending.clear()  # a request from now on queues another run
        self._escalator.republish()

    # -- worker thread -------------------------------------------------------

    def _answer(self, job: Job) -> Response:
        return self._answerer(job, StopWhen(deadline=job.deadline, cancel=self.worker.cancelled))

    def _finish(self, job: Job, edge: Response) -> None:
        """The edge answer is ready (worker thread): reply, or escalate."""
        edge = with_latency(edge, job.received_at)
        before = job.decision
        if before is not None and before.escalate:
            self._escalator.edge_ready(job.request.id, edge)
            return
        if before is not None:
            after = self._router.after(job.request, edge, before)
            reason = after.text
            if after.escalate and after.reason is not None:
                if self._escalator.escalate(job, after.reason, after.text, edge):
                    self._telemetry.escalated(after.reason)
                    return
                reason = f"{after.text}; not escalated: the outbox refused it"
            elif (
                after.allowed
                and edge.ok
                and self._router.sample_shadow(
                    None if job.skill is None else self._skills.head_version(job.skill.name)
                )
                and self._escalator.shadow(job, edge)
            ):
                self._telemetry.escalated(EscalationReason.SHADOW)
            if edge.ok:
                # A rule's basis ("by the skill's bands: ...") stays in front of the router's.
                basis = None if edge.reason == EDGE_REASON else edge.reason
                edge = edge.model_copy(update={"reason": f"{basis}; {reason}" if basis else reason})
        self._reply_job(job, edge)

    # -- replies (any thread) --------------------------------------------------

    def _shutting_down(self, job: Job) -> None:
        self._reply_job(
            job,
            Response.failure(
                job.request.id,
                ErrorCode.SHUTTING_DOWN,
                "the agent stopped before this request was answered",
                retry_after_ms=self._settings.limits.busy_retry_ms,
            ),
        )

    def _reply_job(self, job: Job, response: Response) -> None:
        if job.decision is not None and job.decision.escalate:
            self._escalator.forget(job.request.id)  # this reply is the app's one answer
        response = with_latency(response, job.received_at)
        with structlog.contextvars.bound_contextvars(request_id=job.request.id):
            log.info(
                "request_answered",
                ok=response.ok,
                source=response.source.value if response.source else None,
                confidence=response.confidence,
                latency_ms=response.latency_ms,
                error=response.error.code.value if response.error else None,
            )
        self.send_reply(job.route, response)

    def send_reply(self, route: ReplyRoute, response: Response) -> None:
        """Publish the reply of an admitted request; a final one settles its deliveries.

        The request's PUBACKs wait for the broker's PUBACK of the reply, so a crash
        before the reply is safe leaves the request unacked, and the broker
        redelivers it to the next run.
        """
        if response.id is None or response.supersedes:
            self._publish_reply(route, response)
            return
        key = (route.topic, response.id)
        payload = response.to_wire()  # one serialization: the kept copy is the sent bytes
        deliveries = self._recent.finish(key, response, payload)
        if deliveries is None:
            log.info("duplicate_reply_dropped", request_id=response.id, reply_topic=route.topic)
            return

        def settle(deliveries: Sequence[Inbound] = deliveries) -> None:
            self._recent.delivered(key)
            for delivery in deliveries:
                self._link.ack(delivery)

        self._publish_reply(route, response, payload, on_delivered=settle)

    def _publish_reply(
        self,
        route: ReplyRoute,
        response: Response,
        payload: bytes | None = None,
        on_delivered: Callable[[], None] | None = None,
    ) -> None:
        self._telemetry.reply(response)
        self._link.publish(
            route.topic,
            response.to_wire() if payload is None else payload,
            qos=1,
            correlation_data=route.correlation_data,
            on_delivered=on_delivered,
        )
