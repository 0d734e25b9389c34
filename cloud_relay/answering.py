"""Ask the LLM for one escalation; for ``classify``, insist on one of the labels.

Classify policy: the reply must name one of the labels (case/whitespace-
insensitive). If not, ask once more with a stricter prompt; if that fails too,
the answer is ``unknown`` with confidence 0.0 and ``ok=true``: the cloud did
answer, it just could not decide, and the device keeps its own label.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloud_relay.llm import ChatRequest, Completion, LlmClient, LlmError
from cloud_relay.prompting import UNKNOWN_LABEL, build_messages, match_label, stricter_messages
from edge_slm.contract import Escalation, Task
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
    """Raises :class:`LlmError` when the first call fails."""
    first = await llm.complete(ChatRequest(build_messages(esc), esc.max_tokens), deadline=deadline)
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
