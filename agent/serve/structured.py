"""Chat completions with ``response_format`` json_schema or ``tools``: one constrained reply.

The engine decodes under the schema (compact JSON, llguidance through
``set_guidance``), so the content parses and validates, or the reply ends with
``finish_reason: "length"``. Tools are decoded as one call of one tool (the
``anyOf`` of ``tool_call_schema``; with ``tool_choice`` ``auto`` also ``none``,
which answers with empty content) and returned as OpenAI ``tool_calls``.
``x_confidence`` is the weakest value's confidence, counting only the tokens the
model chose freely (see :mod:`agent.engine.guided`).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from agent.engine.engine import Structured
from agent.engine.guided import weakest
from agent.serve.schemas import (
    AssistantMessage,
    ChatCompletion,
    Choice,
    FunctionCall,
    ToolCallOut,
    Usage,
)
from edge_slm.contract import NO_TOOL, ToolSpec
from edge_slm.rounding import confidence as round_confidence


def structured_completion(
    result: Structured, tools: list[ToolSpec], *, model: str, completion_id: str
) -> dict[str, Any]:
    value = result.value
    confidence = round_confidence(weakest(result.field_confidence, []))
    message = AssistantMessage(content=result.text)
    finish: Any = result.finish_reason
    if value is None:
        confidence = 0.0  # out of length: the text is a cut JSON prefix
    elif tools and isinstance(value, dict):
        if value.get("name") == NO_TOOL:
            message = AssistantMessage(content="")
        else:
            arguments = json.dumps(value.get("arguments", {}), separators=(",", ":"))
            call = ToolCallOut(
                id=f"call_{uuid.uuid4().hex[:24]}",
                function=FunctionCall(name=str(value["name"]), arguments=arguments),
            )
            message = AssistantMessage(content=None, tool_calls=[call])
            finish = "tool_calls"
    reply = ChatCompletion(
        id=completion_id,
        created=int(time.time()),
        model=model,
        choices=[Choice(message=message, finish_reason=finish)],
        usage=Usage.of(result.prompt_tokens, result.completion_tokens),
        x_confidence=confidence,
    )
    return reply.model_dump(mode="json", exclude_none=False)
