"""Turn a validated request into a response with the engine (worker thread only)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from agent.actions import answer_structured
from agent.engine.engine import (
    Cancelled,
    Classification,
    DeadlineExceeded,
    Engine,
    EngineError,
    Generation,
    PromptTooLong,
    StopWhen,
)
from agent.engine.prompts import build_messages, user_content
from agent.skills.classify import classify_labels, classify_skill
from edge_slm.contract import ErrorCode, Request, Response, Source, Task, TokenUsage
from edge_slm.rounding import confidence as round_confidence

if TYPE_CHECKING:
    from agent.skills import Skill
    from agent.skills.embedding import Embedder
    from edge_slm.head import Head


#: The reason of an edge answer that no rule decided (the router then says why it stands).
EDGE_REASON = "answered on the edge"


def answer(  # noqa: PLR0911 - one return per engine failure and per kind of answer
    engine: Engine,
    request: Request,
    *,
    max_tokens: int,
    stop: StopWhen,
    skill: Skill | None = None,
    embedder: Embedder | None = None,
    head: tuple[Head, int] | None = None,
) -> Response:
    """Answer on the edge. Engine failures become typed error responses.

    With a ``skill`` (resolved at intake for a request naming one), classify uses
    the skill's fixed prompt, kept prefilled by the engine, its verbalizers, and,
    per the skill's fit for this model, the ``embedder`` and a calibrated confidence.
    The skill's head answers first (``head``: the one pushed by the relays and its
    version; without one, the head fitted from the skill's texts); the SLM runs only
    where it is unsure. Ad-hoc ``labels`` get the head the relays learned for that label
    set (``head``), else a zero-shot head from the label names.
    """
    messages = build_messages(request)
    try:
        if request.task is Task.ACT or request.json_schema is not None:
            return answer_structured(engine, request, max_tokens=max_tokens, stop=stop)
        if skill is not None:
            result: Classification | Generation = classify_skill(
                engine,
                skill,
                user_content(request),
                readings=request.readings,
                embedder=embedder,
                stop=stop,
                head=head,
            )
        elif request.task is Task.CLASSIFY:
            result = classify_labels(
                engine,
                messages,
                request.labels or [],
                user_content(request),
                # Sentence vectors do not read magnitudes: readings stay with the SLM.
                embedder=None if request.readings else embedder,
                stop=stop,
                head=head,
            )
        else:
            result = engine.generate(messages, max_tokens=max_tokens, stop=stop)
    except DeadlineExceeded as exc:
        return Response.failure(request.id, ErrorCode.DEADLINE_EXCEEDED, str(exc))
    except Cancelled as exc:
        return Response.failure(request.id, ErrorCode.SHUTTING_DOWN, str(exc))
    except PromptTooLong as exc:
        return Response.failure(request.id, ErrorCode.INVALID_REQUEST, str(exc))
    except EngineError as exc:
        return Response.failure(request.id, ErrorCode.INTERNAL, str(exc))
    basis = result.basis if isinstance(result, Classification) else None
    common = {
        "id": request.id,
        "ok": True,
        "confidence": round_confidence(result.confidence),
        "source": Source.EDGE,
        "escalated": False,
        "reason": basis or EDGE_REASON,
        "model": engine.name,
    }
    if isinstance(result, Classification):
        return Response(
            **common,
            answer=result.label,
            label=result.label,
            scores={k: round_confidence(v) for k, v in result.scores.items()},
            tokens=TokenUsage(prompt=result.prompt_tokens, completion=result.scored_tokens),
        )
    return Response(
        **common,
        answer=result.text,
        finish_reason=result.finish_reason,
        tokens=TokenUsage(prompt=result.prompt_tokens, completion=result.completion_tokens),
    )


def with_latency(response: Response, received_at: float) -> Response:
    return response.model_copy(
        update={"latency_ms": round((time.monotonic() - received_at) * 1000, 2)}
    )
