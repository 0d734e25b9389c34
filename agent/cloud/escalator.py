"""Escalations on the device: outbox, publish, wait for the cloud, fall back.

For each escalated request the app gets exactly one first reply by its
deadline: ``source: cloud`` when the relay answers in time, else the edge
answer as ``source: edge-fallback``, else (the edge answer still queued at the
deadline) a ``deadline_exceeded`` error. When the request asked for
corrections (the default), one follow-up with ``supersedes: true`` may come
later, whatever the first reply was: the cloud's answer, or a ``cloud_failed``
/ ``cloud_expired`` notice that none will come and the first reply stands.

Threads: ``escalate`` runs on the dispatch thread (before generation) or the
inference worker (after it), ``edge_ready``/``shadow`` on the worker,
``on_cloud``/``republish`` on the dispatch thread (see ``agent/handler.py``),
``_give_up``/``sweep`` on the timer thread; none on the MQTT network thread,
as each may write the outbox. One lock guards the waiting table; publishing
happens outside it.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.answering import with_latency
from agent.cloud.outbox import Outbox, OutboxFull, OutboxRow
from agent.cloud.scheduler import Scheduler
from agent.config import CloudSettings, OutboxSettings
from agent.inbound import decode_or_log
from agent.jobs import Job
from agent.policy.redact import Redactor
from agent.routing import ReplyRoute
from edge_slm.contract import (
    CloudReply,
    EdgeAnswer,
    ErrorCode,
    ErrorInfo,
    Escalation,
    EscalationReason,
    Response,
    SensorReading,
    Source,
)
from edge_slm.logs import get_logger
from edge_slm.mqtt import Inbound
from edge_slm.topics import DeviceTopics

log = get_logger("agent.escalator")

UNWRITABLE = "outbox_unwritable"

Publish = Callable[[str, bytes, bytes, int], None]  # topic, payload, correlation, expiry_s
SendReply = Callable[[ReplyRoute, Response], None]


@dataclass
class _Waiting:
    job: Job
    reason_text: str
    edge: Response | None = None
    replied: bool = False  # the app has its one in-time answer
    gave_up: str | None = None  # why the cloud is no longer awaited


class Escalator:
    def __init__(
        self,
        *,
        topics: DeviceTopics,
        outbox: Outbox,
        scheduler: Scheduler,
        redactor: Redactor,
        cloud: CloudSettings,
        outbox_settings: OutboxSettings,
        publish: Publish,
        send_reply: SendReply,
        on_conditions: Callable[[], None] = lambda: None,
    ) -> None:
        self._topics = topics
        self._outbox = outbox
        self._scheduler = scheduler
        self._redactor = redactor
        self._cloud = cloud
        self._outbox_settings = outbox_settings
        self._publish = publish
        self._send_reply = send_reply
        self._lock = threading.Lock()
        self._waiting: dict[str, _Waiting] = {}
        self._unreachable_since: float | None = None  # a cloud wait timed out, no reply since
        self._on_conditions = on_conditions
        #: Degraded conditions for the status message (see Status.conditions).
        self.conditions: set[str] = set()
        self.unwritable_drops = 0  # escalations lost to a failing disk (telemetry)
        if outbox.moved_aside is not None:
            self.conditions.add("outbox_was_corrupt")

    # -- escalate ----------------------------------------------------------

    def escalate(
        self, job: Job, reason: EscalationReason, reason_text: str, edge: Response | None
    ) -> bool:
        """Store, publish and start waiting. False when the outbox refused it."""
        row = self._store(job, reason, reason_text, edge, shadow=False)
        if row is None:
            return False
        request_id = job.request.id
        waiting = _Waiting(job=job, reason_text=reason_text, edge=edge)
        with self._lock:
            self._waiting[request_id] = waiting  # before publishing: a fast reply finds it
            unreachable = self._unreachable_since
        self._send(row)
        if unreachable is not None:
            # The cloud has been silent: answer from the edge now, correct later.
            self._give_up(request_id, f"the cloud has not answered since {_clock(unreachable)}")
        else:
            wait_until = (
                job.deadline - self._cloud.margin_ms / 1000
                if job.deadline is not None
                else time.monotonic() + self._cloud.timeout_s
            )
            self._scheduler.at(wait_until, lambda: self._give_up(request_id, None))
        return True

    def shadow(self, job: Job, edge: Response) -> bool:
        """Send a confident edge answer's case to the cloud for comparison only.

        Nobody waits: the app already has its edge answer, and the cloud reply is
        logged by the relay (with the agreement) and then dropped here.
        """
        row = self._store(
            job, EscalationReason.SHADOW, "shadow sample for calibration", edge, shadow=True
        )
        if row is None:
            return False
        self._send(row)
        return True

    def _store(
        self,
        job: Job,
        reason: EscalationReason,
        reason_text: str,
        edge: Response | None,
        *,
        shadow: bool,
    ) -> OutboxRow | None:
        """Redact, build the escalation and write it durably; None when refused."""
        request = job.request
        now = time.time()
        redacted = self._redactor.redact(request.text)
        counts = dict(redacted.counts)
        sensors = [self._redact_reading(r, counts) for r in request.readings] or None
        remaining_s = None if job.deadline is None else job.deadline - time.monotonic()
        corrections = request.corrections and not shadow
        if remaining_s is not None and not corrections and not shadow:
            expires_at = now + max(remaining_s, 0.0)  # useless to the app after its deadline
        else:
            expires_at = now + self._outbox_settings.ttl_s
        escalation = Escalation(
            id=request.id,
            device_id=self._topics.device_id,
            kind=request.kind,
            task=request.task,
            text=redacted.text,
            sensor=sensors,
            labels=request.labels,
            skill=request.skill,
            json_schema=request.json_schema,
            tools=[t.openai() for t in request.tools] if request.tools else None,
            max_tokens=job.max_tokens,
            reason=reason,
            reason_text=reason_text,
            edge=_edge_answer(edge),
            redactions={k: v for k, v in counts.items() if v},
            deadline_ms=max(1, int(remaining_s * 1000)) if remaining_s and not shadow else None,
            expires_at=expires_at,
            created_at=now,
        )
        row = OutboxRow(
            request_id=request.id,
            payload=escalation.to_wire(),
            reply_topic=job.route.topic,
            correlation=job.route.correlation_data,
            corrections=corrections,
            created_at=now,
            expires_at=expires_at,
        )
        try:
            self._outbox.add(row)
        except OutboxFull as exc:
            log.warning("escalation_dropped", reason=str(exc), request_id=request.id)
            return None
        except sqlite3.Error as exc:
            # Disk full or failing: keep answering locally, tell the operator.
            log.warning("outbox_unwritable", error=str(exc), request_id=request.id)
            self._set_condition(UNWRITABLE, present=True)
            self.unwritable_drops += 1
            return None
        self._set_condition(UNWRITABLE, present=False)
        log.info(
            "escalated",
            request_id=request.id,
            reason=reason.value,
            detail=reason_text,
            redactions=escalation.redactions,
            edge_confidence=edge.confidence if edge else None,
        )
        return row

    def _redact_reading(self, reading: SensorReading, counts: dict[str, int]) -> SensorReading:
        if not isinstance(reading.value, str):
            return reading
        redacted = self._redactor.redact(reading.value)
        for kind, n in redacted.counts.items():
            counts[kind] = counts.get(kind, 0) + n
        return reading.model_copy(update={"value": redacted.text})

    def _send(self, *rows: OutboxRow) -> None:
        if not rows:
            return
        now = time.time()
        for row in rows:
            expiry = max(1, math.ceil(row.expires_at - now))
            self._publish(self._topics.escalation, row.payload, row.request_id.encode(), expiry)
        # One transaction for a whole sweep: the outbox lock is shared with intake, which
        # must not queue behind one fsync per re-sent row during a long outage.
        self._outbox.mark_published([row.request_id for row in rows], now)

    def republish(self) -> int:
        """Publish every pending escalation again (on each connect)."""
        rows = self._outbox.pending(time.time())
        self._send(*rows)
        if rows:
            log.info("outbox_republished", count=len(rows))
        return len(rows)

    # -- the edge side of a pre-generation escalation ---------------------------

    def edge_ready(self, request_id: str, edge: Response) -> None:
        """The local answer of a request escalated before generation is ready."""
        with self._lock:
            waiting = self._waiting.get(request_id)
            if waiting is None or waiting.replied:
                log.info("edge_answer_recorded", request_id=request_id, edge_ok=edge.ok)
                return
            waiting.edge = edge
            reply = waiting.gave_up is not None
            if reply:
                waiting.replied = True
        if reply and waiting.gave_up is not None:
            self._fallback(waiting, waiting.gave_up)

    # -- waiting runs out ------------------------------------------------------

    def _give_up(self, request_id: str, why: str | None) -> None:
        """Stop waiting for the cloud: ``why`` None means the wait timed out."""
        with self._lock:
            waiting = self._waiting.get(request_id)
            if waiting is None:
                return
            reply_now = self._mark_given_up(waiting, why)
            # At the deadline with no edge answer yet (the job still queued): the app
            # gets a typed error now, never silence; with corrections, the cloud's
            # outcome still follows (supersedes: true), as after a fallback.
            too_late = (
                why is None
                and not waiting.replied
                and waiting.edge is None
                and waiting.job.deadline is not None
            )
            if too_late:
                waiting.replied = True
        if reply_now and waiting.gave_up is not None:
            self._fallback(waiting, waiting.gave_up)
        elif too_late:
            log.warning("deadline_without_answer", request_id=request_id)
            self._reply(
                waiting.job.route,
                Response.failure(
                    request_id,
                    ErrorCode.DEADLINE_EXCEEDED,
                    "no answer before the deadline: the edge answer was still queued and "
                    "the cloud did not answer in time",
                ),
                waiting.job.received_at,
            )

    def _mark_given_up(self, waiting: _Waiting, why: str | None) -> bool:
        """Stop awaiting the cloud; True if the caller must send the fallback now.

        The caller holds the lock. Without an edge answer yet, ``edge_ready``
        sends the fallback later.
        """
        if waiting.replied or waiting.gave_up is not None:
            return False
        if why is None:
            why = "the cloud did not answer in time"
            if self._unreachable_since is None:
                self._unreachable_since = time.time()
        waiting.gave_up = why
        if waiting.edge is None:
            return False
        waiting.replied = True
        return True

    def _fallback(self, waiting: _Waiting, why: str) -> None:
        assert waiting.edge is not None  # noqa: S101 - guarded by the callers
        edge = waiting.edge
        if edge.ok:
            edge = edge.model_copy(
                update={
                    "source": Source.EDGE_FALLBACK,
                    "escalated": True,
                    "reason": f"{waiting.reason_text}; {why}; edge answer",
                }
            )
        self._reply(waiting.job.route, edge, waiting.job.received_at)
        log.info("edge_fallback", request_id=waiting.job.request.id, why=why)

    # -- cloud replies (network thread) -----------------------------------------

    def on_cloud(self, msg: Inbound) -> None:
        reply = decode_or_log(
            CloudReply,
            msg.payload,
            rejected="cloud_reply_rejected",
            device_id=self._topics.device_id,
        )
        if reply is None:
            return
        if not reply.ok and reply.error is not None and reply.error.retry_after_ms is not None:
            # The relay shed it (busy, rate limit): not a final answer. Keep the row
            # and send it again after the hint; the app's own wait runs on.
            self._retry_later(reply.id, reply.error.retry_after_ms)
            return
        with self._lock:
            self._unreachable_since = None
            waiting = self._waiting.pop(reply.id, None)
            in_time = waiting is not None and not waiting.replied and reply.ok
            fallback_now = False
            if waiting is not None and in_time:
                waiting.replied = True
            elif waiting is not None and not waiting.replied:
                # The cloud failed before the deadline: the edge answer it is.
                fallback_now = self._mark_given_up(
                    waiting, f"the cloud failed ({reply.outcome.value})"
                )
                if not fallback_now:
                    self._waiting[reply.id] = waiting  # edge_ready will reply
        row = self._outbox.get(reply.id)
        if waiting is None and row is None:
            log.info("cloud_reply_duplicate", request_id=reply.id)
            return
        route, corrections, reason, received_at = self._target(waiting, row)
        log.info(
            "cloud_answered",
            request_id=reply.id,
            outcome=reply.outcome.value,
            in_time=in_time,
            cloud_label=reply.label,
            edge_label=waiting.edge.label if waiting and waiting.edge else None,
        )
        if in_time:
            self._reply(route, _cloud_response(reply, reason, supersedes=None), received_at)
        elif waiting is None and row is not None and not row.replied:
            # A previous run accepted it and died before any reply: the cloud's answer
            # is the app's first one (a redelivered copy of the request is then dropped
            # as already answered).
            self._reply(route, _orphan_response(reply, reason), None)
        elif fallback_now and waiting is not None and waiting.gave_up is not None:
            self._fallback(waiting, waiting.gave_up)
        elif corrections and (waiting is None or waiting.replied):
            late = (
                _cloud_response(reply, reason, supersedes=True)
                if reply.ok
                else _no_correction(reply, ErrorCode.CLOUD_FAILED)
            )
            self._reply(route, late, received_at)
        self._outbox.remove(reply.id)

    def _retry_later(self, request_id: str, retry_after_ms: int) -> None:
        with self._lock:
            self._unreachable_since = None  # it answered: reachable, just busy
        log.info("cloud_busy", request_id=request_id, retry_after_ms=retry_after_ms)

        def resend() -> None:
            row = self._outbox.get(request_id)
            if row is not None and row.expires_at > time.time():
                self._send(row)

        self._scheduler.at(time.monotonic() + max(retry_after_ms, 100) / 1000, resend)

    def _target(
        self, waiting: _Waiting | None, row: OutboxRow | None
    ) -> tuple[ReplyRoute, bool, str, float | None]:
        if waiting is not None:
            job = waiting.job
            return job.route, job.request.corrections, waiting.reason_text, job.received_at
        assert row is not None  # noqa: S101 - checked by the caller
        escalation = Escalation.model_validate_json(row.payload)
        return (
            ReplyRoute(row.reply_topic, row.correlation),
            row.corrections,
            escalation.reason_text,
            None,
        )

    # -- conditions ---------------------------------------------------------

    def _set_condition(self, name: str, *, present: bool) -> None:
        with self._lock:
            changed = (name in self.conditions) != present
            if present:
                self.conditions.add(name)
            else:
                self.conditions.discard(name)
        if changed:
            log.warning("condition_changed", condition=name, present=present)
            self._on_conditions()

    # -- expiry (timer thread) ---------------------------------------------------

    def sweep(self) -> int:
        """Expire old escalations and re-send quiet ones; return how many expired.

        Re-sending covers every way a reply can get lost between here and the
        relay (a relay crash, a broker restart without persistence, a bridge
        that was down); the relay's idempotency makes the copies harmless.
        """
        due = self._outbox.due(time.time(), self._outbox_settings.republish_s)
        for row in due:
            log.info("escalation_resent", request_id=row.request_id, publishes=row.publishes)
        self._send(*due)
        expired = self._outbox.take_expired(time.time())
        for row in expired:
            with self._lock:
                waiting = self._waiting.pop(row.request_id, None)
                fallback_now = False
                if waiting is not None and not waiting.replied:
                    fallback_now = self._mark_given_up(waiting, "the escalation expired")
                    if not fallback_now:
                        self._waiting[row.request_id] = waiting  # edge_ready will reply
            log.warning("escalation_expired", request_id=row.request_id, outcome="expired")
            if fallback_now and waiting is not None:
                self._fallback(waiting, "the escalation expired")
            elif waiting is None and not row.replied:
                # Accepted by a run that died before replying, and now too late.
                self._reply(
                    ReplyRoute(row.reply_topic, row.correlation),
                    Response.failure(
                        row.request_id,
                        ErrorCode.CLOUD_EXPIRED,
                        "the agent restarted before answering, and no cloud answer came "
                        "before the escalation expired",
                    ).model_copy(update={"escalated": True}),
                    None,
                )
            elif row.corrections and (waiting is None or waiting.replied):
                # The app holds a fallback and awaits the correction: tell it none comes.
                route = ReplyRoute(row.reply_topic, row.correlation)
                self._reply(
                    route,
                    Response(
                        id=row.request_id,
                        ok=False,
                        supersedes=True,
                        escalated=True,
                        error=ErrorInfo(
                            code=ErrorCode.CLOUD_EXPIRED,
                            message="no cloud answer before the escalation expired; "
                            "the earlier reply stands",
                        ),
                    ),
                    None,
                )
        return len(expired)

    def _reply(self, route: ReplyRoute, response: Response, received_at: float | None) -> None:
        if received_at is not None:
            response = with_latency(response, received_at)
        if response.id is not None and not response.supersedes:
            # Remembered across a crash, and before sending: a run killed just after the
            # app got this reply must take a later cloud answer for a correction, never
            # for the first reply (which the replied cache would then drop as a repeat).
            try:
                self._outbox.mark_replied(response.id)
            except sqlite3.Error as exc:
                log.warning("outbox_unwritable", error=str(exc), request_id=response.id)
        self._send_reply(route, response)

    def forget(self, request_id: str) -> None:
        """Stop waiting for a request the app was refused; a cloud answer becomes a correction."""
        with self._lock:
            self._waiting.pop(request_id, None)

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)


def _edge_answer(edge: Response | None) -> EdgeAnswer | None:
    if edge is None or not edge.ok or edge.confidence is None:
        return None
    return EdgeAnswer(
        answer=edge.answer,
        label=edge.label,
        data=edge.data,
        tool_call=edge.tool_call,
        confidence=edge.confidence,
        model=edge.model or "unknown",
        latency_ms=edge.latency_ms,
    )


def _cloud_response(reply: CloudReply, reason: str, *, supersedes: bool | None) -> Response:
    return Response(
        id=reply.id,
        ok=True,
        answer=reply.answer,
        label=reply.label,
        data=reply.data,
        tool_call=reply.tool_call,
        confidence=reply.confidence,
        source=Source.CLOUD,
        escalated=True,
        reason=f"{reason}; answered by the cloud",
        model=reply.model,
        tokens=reply.tokens,
        supersedes=supersedes,
    )


def _orphan_response(reply: CloudReply, reason: str) -> Response:
    """The first reply to a request whose accepting run died: the cloud's, or its failure."""
    if reply.ok:
        return _cloud_response(reply, reason, supersedes=None)
    detail = reply.error.message if reply.error else reply.outcome.value
    return Response(
        id=reply.id,
        ok=False,
        escalated=True,
        error=ErrorInfo(code=ErrorCode.CLOUD_FAILED, message=f"the cloud failed ({detail})"),
    )


def _no_correction(reply: CloudReply, code: ErrorCode) -> Response:
    """Tell an app that holds its first reply (a fallback, or an error) that no correction
    will come."""
    detail = reply.error.message if reply.error else reply.outcome.value
    return Response(
        id=reply.id,
        ok=False,
        supersedes=True,
        escalated=True,
        error=ErrorInfo(
            code=code, message=f"the cloud failed ({detail}); the earlier reply stands"
        ),
    )


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(epoch)) + "Z"
