"""One escalation, end to end, as a coroutine on the relay's loop: claim, decide, log, reply.

Order matters for idempotency: the row is claimed before any LLM call and
finalized (with the reply JSON) before the reply is published, so a replay
after a crash either finds the stored reply or, once the claim went stale
(``claim_ttl_s``), is answered afresh; it never reaches the LLM twice while
a live relay works on it.

The checks that need no LLM (a refused payload, an expired escalation, a
spent budget) run just before the claim, so an escalation that will go to the
LLM is claimed with its ``llm_start`` in the same INSERT: two store writes per
escalation (claim, finalize) instead of three. Their log lines and answers
still come after the claim, so a duplicate is only ever logged as one.

Store calls go through the group-commit writer (:mod:`cloud_relay.store.writer`):
``await claim(...)`` returns once the claim is committed, and the final row is
committed before the reply is published, exactly as when each was its own
transaction; only the commits are shared with the other escalations in flight.

An escalation runs in two parts. The head (checks, claim, LLM) holds one of the
pool's ``max_concurrency`` slots; it returns the tail (commit the final row,
log, publish), which runs outside the slots: waiting for a commit is not work,
and with a slow disk (a PostgreSQL commit is an fsync) it would otherwise cap
the relay at slots / commit time.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from cloud_relay.agreement import agrees
from cloud_relay.answering import CloudAnswer, SchemaMismatch, ask
from cloud_relay.config import RelaySettings
from cloud_relay.intake import Envelope
from cloud_relay.limits import check_budget
from cloud_relay.llm import LlmClient, LlmError, LlmFailure
from cloud_relay.pricing import PriceBook
from cloud_relay.prompting import UNKNOWN_LABEL
from cloud_relay.store import Claim, ClaimState, Final, NewEscalation, Usage
from edge_slm.contract import (
    CloudReply,
    ErrorCode,
    ErrorInfo,
    Escalation,
    Outcome,
    TokenUsage,
    ToolCall,
)
from edge_slm.logs import get_logger

if TYPE_CHECKING:
    from cloud_relay.metrics import RelayMetrics

log = get_logger("cloud_relay.handling")

#: publish(topic, payload, correlation_data)
Publish = Callable[[str, bytes, bytes | None], None]
#: What is left of an escalation once its decision is made: commit, log, reply.
Tail = Coroutine[Any, Any, None]


class EscalationLog(Protocol):
    """The store calls the handler makes; each returns once committed (the store writer)."""

    async def claim(self, esc: NewEscalation, *, stale_before: float) -> Claim: ...

    async def finalize(self, device_id: str, request_id: str, final: Final) -> None: ...

    async def usage(self, device_id: str, *, calls_since: float, tokens_since: float) -> Usage: ...


@dataclass(frozen=True, slots=True)
class _Decision:
    reply: CloudReply
    final: Final


@dataclass(frozen=True, slots=True)
class _Refusal:
    outcome: Outcome
    code: ErrorCode
    message: str
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class _Gate:
    """What the checks before the claim found: ask the LLM, or answer without it."""

    refusal: _Refusal | None = None  # None: go to the LLM
    deadline: float | None = None  # monotonic instant the device stops waiting (None: no limit)
    warning: tuple[str, dict[str, Any]] | None = None  # (event, context), logged once claimed
    error: Exception | None = None  # a check failed: logged once claimed


def _call(call: ToolCall | None) -> dict[str, Any] | None:
    """A call as the log keeps it: ``{"name", "arguments"}``."""
    return None if call is None else call.model_dump(mode="json")


def _key(env: Envelope) -> str:
    if env.request_id is not None:
        return env.request_id
    # Unreadable and uncorrelated: still one log row per distinct payload.
    digest = hashlib.sha256(f"{env.received_at}:{env.payload_size}".encode()).hexdigest()
    return f"unreadable-{digest[:16]}"


class Handler:
    def __init__(
        self,
        settings: RelaySettings,
        *,
        store: EscalationLog,
        llm: LlmClient,
        publish: Publish,
        relay_id: str,
        metrics: RelayMetrics | None = None,
    ) -> None:
        self._s = settings
        self._store = store
        self._llm = llm
        self._publish = publish
        self._relay_id = relay_id
        self._metrics = metrics
        self._prices = PriceBook(settings.prices)

    def _case(self, esc: Escalation | None) -> dict[str, Any]:
        """The case's text, labels, tools, schema and readings, exactly as received (the
        device redacted them before they left it), unless ``store_prompts`` is off."""
        if esc is None or not self._s.store_prompts:
            return {}
        return {
            "text": esc.text,
            "labels": list(esc.labels) if esc.labels is not None else None,
            "sensor": [r.model_dump(mode="json", exclude_none=True) for r in esc.sensor]
            if esc.sensor is not None
            else None,
            "tools": esc.tools,
            "json_schema": esc.json_schema,
        }

    async def __call__(self, env: Envelope) -> Tail | None:
        """The head of ``env``'s handling; returns its tail (None: nothing left to do)."""
        # Each task runs in its own copy of the context: the binding is this escalation's.
        with structlog.contextvars.bound_contextvars(device_id=env.device_id, request_id=_key(env)):
            tail = await self.handle(env)
        return None if tail is None else self._bound(env, tail)

    async def run(self, env: Envelope) -> None:
        """Head and tail, one after the other."""
        tail = await self(env)
        if tail is not None:
            await tail

    async def _bound(self, env: Envelope, tail: Tail) -> None:
        with structlog.contextvars.bound_contextvars(device_id=env.device_id, request_id=_key(env)):
            await tail

    async def handle(self, env: Envelope) -> Tail | None:
        """Claim and decide; returns the rest (:meth:`_finish`), or None for a duplicate."""
        esc = env.escalation
        edge = esc.edge if esc else None
        gate = await self._gate(env)
        claim = await self._store.claim(
            NewEscalation(
                device_id=env.device_id,
                request_id=_key(env),
                relay_id=self._relay_id,
                received_at=env.received_at,
                task=esc.task.value if esc else None,
                kind=esc.kind.value if esc else None,
                reason=esc.reason.value if esc else None,
                edge_answer=edge.answer if edge else None,
                edge_label=edge.label if edge else None,
                edge_confidence=edge.confidence if edge else None,
                redactions=dict(esc.redactions) if esc else {},
                edge_model=edge.model if edge else None,
                edge_tool_call=_call(edge.tool_call) if edge else None,
                edge_data=edge.data if edge else None,
                skill=esc.skill if esc else None,
                llm_start=time.time() if gate.refusal is None else None,
                **self._case(esc),
            ),
            stale_before=time.time() - self._s.limits.claim_ttl_s,
        )
        if claim.state is ClaimState.IN_FLIGHT:
            log.info("escalation_duplicate_in_flight")
            return None
        if claim.state is ClaimState.FINAL:
            log.info("escalation_duplicate_resent")
            if claim.reply is not None:
                self._publish(env.topics.cloud, claim.reply.encode(), self._correlation(env))
            return None
        try:
            decision = await self._decide(env, gate)
        except Exception as exc:  # a bug must still end the row and answer the device
            log.exception("escalation_failed")
            decision = self._failure(env, Outcome.LLM_ERROR, ErrorCode.INTERNAL, repr(exc))
        return self._finish(env, decision)

    async def _finish(self, env: Envelope, decision: _Decision) -> None:
        """Commit the final row, then log and publish the reply."""
        await self._store.finalize(env.device_id, _key(env), decision.final)
        if self._metrics is not None:
            self._metrics.escalation_final(decision.final)
        reply = decision.reply
        log.info(
            "escalation_answered",
            outcome=reply.outcome.value,
            latency_ms=reply.latency_ms,
            attempts=decision.final.attempts,
            tokens_in=decision.final.tokens_in,
            tokens_out=decision.final.tokens_out,
            error=decision.final.error,
        )
        if env.request_id is not None:  # CloudReply needs an id; unreadable ones are only logged
            self._publish(env.topics.cloud, decision.final.reply.encode(), self._correlation(env))

    @staticmethod
    def _correlation(env: Envelope) -> bytes | None:
        if env.correlation_data is not None:
            return env.correlation_data
        return env.request_id.encode() if env.request_id else None

    # -- the decision ----------------------------------------------------

    async def _gate(self, env: Envelope) -> _Gate:
        """The checks that need no LLM, run before the claim; nothing is logged here."""
        esc = env.escalation
        if env.problem is not None or esc is None:
            problem = env.problem
            code = problem.code if problem else ErrorCode.INVALID_REQUEST
            return _Gate(
                refusal=_Refusal(Outcome.REJECTED, code, str(problem)),
                warning=("escalation_rejected", {"code": code.value, "error": str(problem)}),
            )
        now = time.time()
        remaining_s = self._remaining_s(esc, now)
        if remaining_s is not None and remaining_s <= 0:
            return _Gate(
                refusal=_Refusal(
                    Outcome.EXPIRED, ErrorCode.CLOUD_EXPIRED, "expired before the LLM call"
                )
            )
        try:
            over = await check_budget(self._store, self._s.limits, env.device_id, now)
        except Exception as exc:  # noqa: BLE001 - logged and answered once claimed
            return _Gate(
                refusal=_Refusal(Outcome.LLM_ERROR, ErrorCode.INTERNAL, repr(exc)),
                error=exc,
            )
        if over is not None:
            return _Gate(
                refusal=_Refusal(
                    Outcome.BUDGET, ErrorCode.BUSY, over.message, retry_after_s=over.retry_after_s
                ),
                warning=("escalation_over_budget", {"reason": over.message}),
            )
        return _Gate(deadline=None if remaining_s is None else time.monotonic() + remaining_s)

    async def _decide(self, env: Envelope, gate: _Gate) -> _Decision:
        esc = env.escalation
        if gate.error is not None:
            log.error("escalation_failed", exc_info=gate.error)
        if gate.warning is not None:
            event, context = gate.warning
            log.warning(event, **context)
        if gate.refusal is not None or esc is None:
            r = gate.refusal or _Refusal(Outcome.REJECTED, ErrorCode.INVALID_REQUEST, "no payload")
            return self._failure(env, r.outcome, r.code, r.message, retry_after_s=r.retry_after_s)
        deadline = gate.deadline
        if deadline is None:
            deadline = time.monotonic() + self._s.llm.total_timeout_s
        try:
            answer = await ask(self._llm, esc, deadline=deadline)
        except SchemaMismatch as exc:
            log.warning(
                "cloud_answer_invalid", task=esc.task.value, model=exc.model, error=str(exc)
            )
            if self._metrics is not None:
                self._metrics.llm_call("invalid")
            return self._failure(
                env,
                Outcome.LLM_ERROR,
                ErrorCode.SCHEMA_MISMATCH,
                f"the cloud's answer does not match the schema: {exc}",
                attempts=exc.attempts,
            )
        except LlmError as exc:
            if self._metrics is not None:
                self._metrics.llm_call(exc.failure.value)
            if exc.failure is LlmFailure.DEADLINE:
                return self._failure(
                    env, Outcome.EXPIRED, ErrorCode.CLOUD_EXPIRED, str(exc), attempts=exc.attempts
                )
            code = ErrorCode.BUSY if exc.failure is LlmFailure.UNAVAILABLE else ErrorCode.INTERNAL
            return self._failure(
                env,
                Outcome.LLM_ERROR,
                code,
                f"cloud LLM {exc.failure.value}: {exc}",
                attempts=exc.attempts,
                retry_after_s=exc.retry_after_s,
            )
        if self._metrics is not None:
            self._metrics.llm_call("ok", answer.llm_calls)
        return self._success(env, esc, answer)

    def _remaining_s(self, esc: Escalation, now: float) -> float | None:
        """Seconds the device still has use for an answer; None: no limit given.

        ``expires_at`` is when the device stops caring (corrections included);
        ``deadline_ms`` only says when the app's own deadline passes, after which a
        late answer still becomes a correction, so it is the fallback for senders
        that give no ``expires_at``.
        """
        if esc.expires_at is not None:
            until = esc.expires_at
        elif esc.deadline_ms is not None:
            until = esc.created_at + esc.deadline_ms / 1000
        else:
            return None
        return until - now + self._s.limits.clock_skew_s

    def _latency_ms(self, env: Envelope) -> float:
        return round((time.monotonic() - env.received_mono) * 1000, 3)

    def _success(self, env: Envelope, esc: Escalation, a: CloudAnswer) -> _Decision:
        latency = self._latency_ms(env)
        reply = CloudReply(
            id=_key(env),
            device_id=env.device_id,
            ok=True,
            outcome=Outcome.OK,
            answer=a.answer,
            label=a.label,
            data=a.data,
            tool_call=a.tool_call,
            confidence=a.confidence,
            model=a.model,
            tokens=TokenUsage(prompt=a.tokens_in, completion=a.tokens_out),
            latency_ms=latency,
        )
        edge = esc.edge
        agreement = agrees(
            esc.task,
            edge_answer=edge.answer if edge else None,
            edge_label=edge.label if edge else None,
            cloud_answer=a.answer,
            cloud_label=a.label,
            threshold=self._s.agreement_threshold,
        )
        if a.label == UNKNOWN_LABEL and agreement:
            agreement = False
        final = Final(
            outcome=Outcome.OK,
            answered_at=time.time(),
            reply=reply.to_wire().decode(),
            latency_ms=latency,
            llm_model=a.model,
            tokens_in=a.tokens_in,
            tokens_out=a.tokens_out,
            cost_usd=self._prices.cost(a.model, a.tokens_in, a.tokens_out),
            attempts=a.attempts,
            cloud_answer=a.answer,
            cloud_label=a.label,
            cloud_confidence=a.confidence,
            agreement=agreement,
            cloud_tool_call=_call(a.tool_call),
            cloud_data=a.data,
        )
        return _Decision(reply, final)

    def _failure(
        self,
        env: Envelope,
        outcome: Outcome,
        code: ErrorCode,
        message: str,
        *,
        attempts: int = 0,
        retry_after_s: float | None = None,
    ) -> _Decision:
        latency = self._latency_ms(env)
        reply = CloudReply(
            id=_key(env),
            device_id=env.device_id,
            ok=False,
            outcome=outcome,
            latency_ms=latency,
            error=ErrorInfo(
                code=code,
                message=message,
                retry_after_ms=int(retry_after_s * 1000) if retry_after_s is not None else None,
            ),
        )
        final = Final(
            outcome=outcome,
            answered_at=time.time(),
            reply=reply.to_wire().decode(),
            latency_ms=latency,
            attempts=attempts,
            error=f"{code.value}: {message}",
        )
        return _Decision(reply, final)
