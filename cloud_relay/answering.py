"""Ask the LLM for one escalation; for ``classify``, insist on one of the labels.

Classify policy: the reply must name one of the labels (case/whitespace-
insensitive). If not, ask once more with a stricter prompt; if that fails too,
the answer is ``unknown`` with confidence 0.0 and ``ok=true``: the cloud did
answer, it just could not decide, and the device keeps its own label.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from cloud_relay.llm import ChatRequest, Completion, LlmClient, LlmError
from cloud_relay.prompting import (
    UNKNOWN_LABEL,
    build_messages,
    match_label,
    stricter_messages,
    structured_request,
)
from edge_slm.contract import Escalation, Task, ToolCall, validation_errors
from edge_slm.logs import get_logger
from edge_slm.rounding import confidence as round_confidence

log = get_logger("cloud_relay.answering")


@dataclass(frozen=True, slots=True)
class CloudAnswer:
    answer: str
    label: str | None
    confidence: float | None
    model: str
    tokens_in: int
    tokens_out: int
    attempts: int
    llm_calls: int
    data: dict[str, Any] | None = None  # extract with a schema: the validated object
    tool_call: ToolCall | None = None  # act: the validated call


class SchemaMismatch(Exception):
    """The LLM's answer does not validate against the escalation's schema or tools."""

    def __init__(self, message: str, *, model: str, attempts: int) -> None:
        super().__init__(message)
        self.model = model
        self.attempts = attempts


def _from(
    c: Completion, *, answer: str, label: str | None, confidence: float | None
) -> CloudAnswer:
    return CloudAnswer(
        answer=answer,
        label=label,
        # Rounded as the edge rounds its replies: the reply and the log show the same.
        confidence=None if confidence is None else round_confidence(confidence),
        model=c.model,
        tokens_in=c.prompt_tokens,
        tokens_out=c.completion_tokens,
        attempts=c.attempts,
        llm_calls=1,
    )


async def ask(llm: LlmClient, esc: Escalation, *, deadline: float) -> CloudAnswer:
    """Raises :class:`LlmError` when the first call fails, :class:`SchemaMismatch` when an
    extract or act answer does not validate (``jsonschema``)."""
    extra = structured_request(esc)
    first = await llm.complete(
        ChatRequest(build_messages(esc), esc.max_tokens, extra=extra), deadline=deadline
    )
    if extra is not None:
        return _structured(esc, first)
    if esc.task is not Task.CLASSIFY or not esc.labels:
        return _from(first, answer=first.text.strip(), label=None, confidence=first.confidence)
    label = match_label(first.text, esc.labels)
    if label is not None:
        return _from(first, answer=label, label=label, confidence=first.confidence)
    log.info("classify_reply_not_a_label", labels=len(esc.labels))
    log.debug("classify_reply_text", reply=first.text[:200])  # model text: debug only
    try:
        second = await llm.complete(
            ChatRequest(stricter_messages(esc, first.text), esc.max_tokens), deadline=deadline
        )
    except LlmError as exc:
        log.warning("classify_retry_failed", error=str(exc))
        result = _from(first, answer=UNKNOWN_LABEL, label=UNKNOWN_LABEL, confidence=0.0)
        return _merge(result, attempts=exc.attempts, tokens_in=0, tokens_out=0)
    label = match_label(second.text, esc.labels)
    confidence = second.confidence if label is not None else 0.0
    label = label or UNKNOWN_LABEL
    result = _from(second, answer=label, label=label, confidence=confidence)
    return _merge(
        result,
        attempts=first.attempts,
        tokens_in=first.prompt_tokens,
        tokens_out=first.completion_tokens,
    )


def _merge(a: CloudAnswer, *, attempts: int, tokens_in: int, tokens_out: int) -> CloudAnswer:
    return CloudAnswer(
        answer=a.answer,
        label=a.label,
        confidence=a.confidence,
        model=a.model,
        tokens_in=a.tokens_in + tokens_in,
        tokens_out=a.tokens_out + tokens_out,
        attempts=a.attempts + attempts,
        llm_calls=2,
    )


def _structured(esc: Escalation, c: Completion) -> CloudAnswer:
    """The validated object (extract) or call (act) of ``c``; :class:`SchemaMismatch` if none."""

    def mismatch(why: str) -> SchemaMismatch:
        return SchemaMismatch(why, model=c.model, attempts=c.attempts)

    if esc.task is Task.ACT:
        if len(c.tool_calls) != 1:
            raise mismatch(f"expected one tool call, got {len(c.tool_calls)}")
        name, raw = c.tool_calls[0]
        tool = next((t for t in esc.tools or [] if t["function"]["name"] == name), None)
        if tool is None:
            raise mismatch(f"the cloud called an unknown tool {name[:64]!r}")
        arguments = _json_object(raw, mismatch)
        errors = validation_errors(tool["function"].get("parameters") or {}, arguments)
        if errors:
            raise mismatch(f"arguments of {name}: " + "; ".join(errors))
        call = ToolCall(name=name, arguments=arguments)
        text = json.dumps(call.model_dump(), separators=(",", ":"), ensure_ascii=False)
        return replace(_from(c, answer=text, label=None, confidence=c.confidence), tool_call=call)
    data = _json_object(c.text, mismatch)
    errors = validation_errors(esc.json_schema or {}, data)
    if errors:
        raise mismatch("; ".join(errors))
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return replace(_from(c, answer=text, label=None, confidence=c.confidence), data=data)


def _json_object(raw: str, mismatch: Any) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise mismatch("the answer is not JSON") from None
    if not isinstance(value, dict):
        raise mismatch("the answer is not a JSON object")
    return value
