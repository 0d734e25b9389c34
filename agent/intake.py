"""Request intake on the MQTT network thread: check, parse, validate, enqueue.

Everything here is cheap (bounded by the payload size limit) so the network
thread never stalls. Every rejection is a typed error reply plus a log line;
nothing raises out of :meth:`Intake.on_message`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from agent.actions import TOOL_SETS
from agent.config import LimitSettings
from agent.jobs import Job
from agent.recent import RecentRequests
from agent.routing import ReplyRoute, route_for
from agent.skills import Skill
from edge_slm.contract import ErrorCode, Request, Response, WireError, decode, load_object
from edge_slm.logs import get_logger
from edge_slm.mqtt import Inbound
from edge_slm.topics import DeviceTopics

log = get_logger("agent.intake")

SendReply = Callable[[ReplyRoute, Response], None]
#: PUBACKs a delivery once its reply is out (manual-ack connections).
Ack = Callable[[Inbound], object]
#: Takes an admitted job and the topic it came on; False when the queue is full.
Submit = Callable[[Job, str], bool]
#: A configured skill by name, or None (``SkillRegistry.get``).
SkillLookup = Callable[[str], Skill | None]


#: Refusals of a well-formed request: they answer its id, once, like any reply.
ANSWERS_THE_REQUEST = frozenset(
    {ErrorCode.DEADLINE_EXCEEDED, ErrorCode.MAX_TOKENS_EXCEEDED, ErrorCode.SHUTTING_DOWN}
)


class Rejected(Exception):
    """A request that gets an error reply instead of a place in the queue."""

    def __init__(
        self, code: ErrorCode, message: str, *, request_id: str | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id
        self.extra = extra


def _raw_id(raw: dict[str, Any]) -> str | None:
    value = raw.get("id")
    return value if isinstance(value, str) and 0 < len(value) <= 128 else None


class Intake:
    """Validates inbound requests and hands them to ``submit``.

    ``send_reply`` publishes a reply as it is (errors for unusable input, replays);
    ``send_final`` is the daemon's path for the one final reply of a request id,
    which also acks the deliveries held for it once the broker has the reply.
    """

    def __init__(
        self,
        *,
        topics: DeviceTopics,
        limits: LimitSettings,
        submit: Submit,
        queue_depth: Callable[[], int],
        send_reply: SendReply,
        send_final: SendReply | None = None,
        ack: Ack = lambda _msg: None,
        recent: RecentRequests | None = None,
        skills: SkillLookup = lambda _name: None,
    ) -> None:
        self._topics = topics
        self._limits = limits
        self._submit = submit
        self._recent = recent or RecentRequests()
        self._queue_depth = queue_depth
        self._send_reply = send_reply
        self._send_final = send_final or send_reply
        self._skills = skills
        self._ack = ack
        self._open = threading.Event()
        self._open.set()
        self.rejected: dict[ErrorCode, int] = {}

    def close(self) -> None:
        """Stop accepting work: later requests get ``shutting_down``."""
        self._open.clear()

    def on_message(self, msg: Inbound) -> None:
        """Handle one delivery; it is acked here unless it was admitted.

        An admitted request's deliveries are held in :class:`RecentRequests` and
        acked by whoever sends its final reply.
        """
        held = self._handle(msg)
        if not held:
            self._ack_quietly(msg)

    def _handle(self, msg: Inbound) -> bool:
        """Reply or enqueue; True when ``msg`` is held for a later ack."""
        received_at = time.monotonic()
        route = route_for(msg, self._topics)
        try:
            raw = self._decode(msg.payload)
            route = route_for(msg, self._topics, raw)
            job = self._admit(raw, route, received_at)
        except Rejected as exc:
            return self._reject(route, exc, msg)
        except Exception as exc:
            log.exception("intake_failed", topic=msg.topic)
            self._reject(route, Rejected(ErrorCode.INTERNAL, f"intake failed: {exc}"))
            return False
        with structlog.contextvars.bound_contextvars(request_id=job.request.id):
            return self._enqueue(job, msg)

    def _enqueue(self, job: Job, msg: Inbound) -> bool:
        """Deduplicate and queue an admitted request; True when ``msg`` is held."""
        route = job.route
        key = (route.topic, job.request.id)
        seen = self._recent.begin(key, msg)
        if isinstance(seen, Response):
            if msg.dup and self._recent.confirmed(key):
                # The broker's redelivery of a request whose reply it already holds
                # (after a reconnect or a restart): only the ack is owed.
                log.info("redelivered_request_acked", hint="already answered")
            else:
                log.info("duplicate_request_replayed")
                self._send_quietly(self._send_reply, route, seen)
            return False
        if seen:
            log.info("duplicate_request_absorbed", hint="the first copy is in progress")
            return True
        if not self._submit(job, msg.topic):
            for other in self._recent.forget(key):
                if other is not msg:
                    self._ack_quietly(other)
            retry = self._limits.busy_retry_ms * max(1, self._queue_depth())
            self._reject(
                route,
                Rejected(
                    ErrorCode.BUSY,
                    f"the inference queue is full ({self._limits.queue_size} waiting)",
                    request_id=job.request.id,
                    retry_after_ms=retry,
                ),
            )
            return False
        log.info(
            "request_accepted",
            task=job.request.task.value,
            kind=job.request.kind.value,
            qos=msg.qos,
            queue_depth=self._queue_depth(),
        )
        log.debug("request_text", text=job.request.text)
        return True

    def _ack_quietly(self, msg: Inbound) -> None:
        try:
            self._ack(msg)
        except Exception:
            # Unacked, the broker redelivers it after a reconnect: a replay, not a loss.
            log.exception("ack_failed", topic=msg.topic)

    def _decode(self, payload: bytes) -> dict[str, Any]:
        limit = self._limits.max_payload_bytes
        if len(payload) > limit:
            raise Rejected(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"payload is {len(payload)} bytes; the limit is {limit}",
            )
        try:
            return load_object(payload)
        except WireError as exc:
            raise Rejected(exc.code, str(exc)) from None

    def _admit(self, raw: dict[str, Any], route: ReplyRoute, received_at: float) -> Job:
        request_id = _raw_id(raw)
        try:
            request = decode(Request, raw)
        except WireError as exc:
            raise Rejected(exc.code, str(exc), request_id=request_id) from None
        cap = self._limits.max_tokens_cap
        if request.max_tokens is not None and request.max_tokens > cap:
            raise Rejected(
                ErrorCode.MAX_TOKENS_EXCEEDED,
                f"max_tokens {request.max_tokens} is over this device's cap of {cap}",
                request_id=request.id,
            )
        skill = None
        if request.skill is not None:
            skill = self._skills(request.skill)
            if skill is None:
                raise Rejected(
                    ErrorCode.UNKNOWN_SKILL,
                    f"skill {request.skill!r} is not configured on this device",
                    request_id=request.id,
                )
            # The label set travels with the request from here on: routing, the edge
            # answer and an escalation (the relay checks the cloud's label against it).
            request = request.model_copy(update={"labels": skill.labels})
        if request.tool_set is not None:
            tool_set = TOOL_SETS.get(request.tool_set)
            if tool_set is None:
                raise Rejected(
                    ErrorCode.UNKNOWN_TOOL_SET,
                    f"tool set {request.tool_set!r} is not registered on this device",
                    request_id=request.id,
                )
            # Like a skill's labels: the tools travel with the request (routing reads
            # their risk, an escalation forwards them).
            request = request.model_copy(update={"tools": list(tool_set.tools)})
        deadline = None
        if request.deadline_ms is not None:
            # With sent_at, the budget started when the app sent it; clocks on one
            # device agree, and across devices NTP error is far below a deadline.
            spent = max(0.0, time.time() - request.sent_at) if request.sent_at else 0.0
            deadline = received_at + request.deadline_ms / 1000 - spent
            if deadline <= received_at:
                raise Rejected(
                    ErrorCode.DEADLINE_EXCEEDED,
                    f"deadline of {request.deadline_ms} ms had passed on arrival",
                    request_id=request.id,
                )
        if not self._open.is_set():
            raise Rejected(
                ErrorCode.SHUTTING_DOWN,
                "the agent is shutting down",
                request_id=request.id,
                retry_after_ms=self._limits.busy_retry_ms,
            )
        return Job(
            request=request,
            route=route,
            received_at=received_at,
            deadline=deadline,
            max_tokens=request.max_tokens or self._limits.default_max_tokens,
            skill=skill,
        )

    def _reject(self, route: ReplyRoute, exc: Rejected, msg: Inbound | None = None) -> bool:
        """Send the typed error reply; True when ``msg`` is held for a later ack."""
        self.rejected[exc.code] = self.rejected.get(exc.code, 0) + 1
        log.warning(
            "request_rejected",
            code=exc.code.value,
            reason=str(exc),
            request_id=exc.request_id,
            reply_topic=route.topic,
        )
        response = Response.failure(
            exc.request_id, exc.code, str(exc), retry_after_ms=exc.extra.get("retry_after_ms")
        )
        if exc.request_id is None or exc.code not in ANSWERS_THE_REQUEST:
            self._send_quietly(self._send_reply, route, response)
            return False
        # This refusal answers the request, like any final reply: once per id. A late
        # copy of a request another copy answers (or answered: a crashed run may have
        # escalated it) gets that answer, never a second, different one.
        key = (route.topic, exc.request_id)
        seen = self._recent.begin(key, msg)
        if seen is True:
            log.info("rejection_dropped", hint="another copy is in progress")
            return True
        if isinstance(seen, Response):
            if msg is None or not (msg.dup and self._recent.confirmed(key)):
                self._send_quietly(self._send_reply, route, seen)
            return False
        self._send_quietly(self._send_final, route, response)
        return msg is not None

    def _send_quietly(self, send: SendReply, route: ReplyRoute, response: Response) -> None:
        try:
            send(route, response)
        except Exception:
            # Never let a reply failure escape to the network thread's handler.
            log.exception("error_reply_failed", reply_topic=route.topic)
