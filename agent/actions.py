"""``extract`` with a schema and ``act``: constrained decoding to a validated reply.

The engine decodes under the schema (a tool call's ``anyOf`` for ``act``, with a
``none`` branch: no tool fits) and measures each value's confidence from the
tokens the model chose freely. Here that becomes the reply:

* ``confidence`` is the weakest required value (for ``act``: the tool name and
  the tool's required arguments); a free-text string that no word of the request
  backs (an invented name) counts as unsure, :data:`UNGROUNDED`;
* an ``act`` call with a registered tool set that has a fit for the engine's model
  (``edge-agent toolsets fit``) gets that confidence calibrated: P(the call is
  exactly right), the value routing and the high-risk thresholds compare.
  ``field_confidence`` stays raw, and so does the confidence of inline ``tools``
  and of a model without a fit;
* ``none`` gives no ``tool_call`` and confidence 0: it routes like low confidence;
* an answer that ran out of length or does not validate (``jsonschema``) has
  confidence 0 too, never an invented object.

Tool sets live as TOML in ``agent/toolsets/`` (built in) and may be pushed in
``DeviceConfig.tool_sets``; their prompt (instructions, tool list, exemplars) is
a :class:`~agent.engine.engine.FixedPrompt` kept prefilled by the engine.
"""

from __future__ import annotations

import hashlib
import json
import threading
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.engine.engine import Engine, FixedPrompt, StopWhen, Structured
from agent.engine.guided import grounded, weakest
from agent.engine.prompts import Message, user_content
from agent.toolset_fit import calibrate
from edge_slm.contract import (
    NO_TOOL,
    Request,
    Response,
    Source,
    Task,
    TokenUsage,
    ToolCall,
    ToolSetSpec,
    ToolSpec,
    tool_call_schema,
    validation_errors,
)
from edge_slm.contract.structured import ToolSetFit
from edge_slm.logs import get_logger
from edge_slm.rounding import confidence as round_confidence

log = get_logger("agent.actions")

BUILTIN_DIR = Path(__file__).parent / "toolsets"
#: The confidence of a free string value that no word of the request backs.
UNGROUNDED = 0.05
#: The confidence an edge call of a ``risk: high`` tool needs, unless the tool sets its own.
HIGH_RISK_THRESHOLD = 0.9
#: The reason of an act reply when the model found no tool for the request.
NO_TOOL_REASON = "no tool fits"

_EXTRACT_SYSTEM = (
    "Extract the fields of the JSON schema below from the user's text. Use null for a "
    "field the text does not mention; never invent values. Reply with JSON only.\n"
)
_ACT_SYSTEM = "You turn a command into one tool call. Reply with JSON only."


class ToolSets:
    """Tool sets by name: built-in TOML files, then the agent config's ``[tool_sets.*]``,
    then those pushed in ``DeviceConfig``; a later layer takes precedence by name."""

    def __init__(self, directory: Path = BUILTIN_DIR) -> None:
        self._lock = threading.Lock()
        self._builtin = {
            path.stem: ToolSetSpec.model_validate(tomllib.loads(path.read_text()))
            for path in sorted(directory.glob("*.toml"))
        }
        self._configured: dict[str, ToolSetSpec] = {}
        self._pushed: dict[str, ToolSetSpec] = {}

    def get(self, name: str) -> ToolSetSpec | None:
        with self._lock:
            for layer in (self._pushed, self._configured, self._builtin):
                if name in layer:
                    return layer[name]
            return None

    def names(self) -> list[str]:
        """Every set's name, all layers."""
        with self._lock:
            return sorted({*self._builtin, *self._configured, *self._pushed})

    def set_configured(self, sets: Mapping[str, ToolSetSpec]) -> list[str]:
        """The agent config's sets (at start-up); return their names."""
        with self._lock:
            self._configured = dict(sets)
            return sorted(self._configured)

    def set_pushed(self, sets: Mapping[str, ToolSetSpec]) -> list[str]:
        """Replace the pushed sets; return their names (for the config log)."""
        with self._lock:
            self._pushed = dict(sets)
            return sorted(self._pushed)


#: The device's tool sets (intake resolves a request's ``tool_set`` here, answering
#: reads its exemplars).
TOOL_SETS = ToolSets()


def _tool_line(tool: ToolSpec) -> str:
    params = tool.function.parameters.get("properties", {})
    args = ", ".join(params)
    return f"- {tool.name}({args}): {tool.function.description}".rstrip(": ")


def act_prompt(
    tools: list[ToolSpec], spec: ToolSetSpec | None = None, name: str = "inline"
) -> FixedPrompt:
    """The fixed part of an act prompt: instructions, the tools, exemplar turns."""
    opening = (spec.instructions if spec and spec.instructions else None) or _ACT_SYSTEM
    system = (
        f"{opening}\nTools:\n"
        + "\n".join(_tool_line(t) for t in tools)
        + f'\nIf no tool fits the command, reply {{"name":"{NO_TOOL}"}}.'
    )
    messages: list[Message] = [{"role": "system", "content": system}]
    for example in spec.exemplars if spec else []:
        call = example.call.model_dump() if example.call else {"name": NO_TOOL}
        messages.append({"role": "user", "content": example.text})
        messages.append({"role": "assistant", "content": json.dumps(call, separators=(",", ":"))})
    schema = tool_call_schema(tools)
    key = hashlib.sha256(json.dumps([messages, schema], sort_keys=True).encode()).hexdigest()
    return FixedPrompt(name=f"act:{name}", key=key[:16], messages=tuple(messages), choices={})


def _string_leaves(value: Any, path: str = "") -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, sub in value.items():
            out |= _string_leaves(sub, f"{path}.{key}" if path else str(key))
        return out
    if isinstance(value, list):
        out = {}
        for i, sub in enumerate(value):
            out |= _string_leaves(sub, f"{path}.{i}" if path else str(i))
        return out
    return {path: value} if isinstance(value, str) and path else {}


def _grounding(
    confidences: dict[str, float], value: Any, text: str, prefix: str = ""
) -> dict[str, float]:
    """Cap free string values that the request does not back (see module docstring)."""
    capped = dict(confidences)
    for path, string in _string_leaves(value).items():
        full = f"{prefix}{path}"
        if full in capped and string and not grounded(string, text):
            capped[full] = min(capped[full], UNGROUNDED)
    return capped


def answer_structured(
    engine: Engine,
    request: Request,
    *,
    max_tokens: int,
    stop: StopWhen,
    tool_set: ToolSetSpec | None = None,
) -> Response:
    """The edge reply of an ``extract`` with a schema or an ``act`` (engine errors propagate)."""
    text = user_content(request)
    if request.task is Task.ACT:
        if tool_set is None and request.tool_set is not None:
            tool_set = TOOL_SETS.get(request.tool_set)
        tools = list(request.tools or (tool_set.tools if tool_set else []))
        prompt = act_prompt(tools, tool_set, request.tool_set or "inline")
        result = engine.generate_structured(
            tool_call_schema(tools), fixed=prompt, user=text, max_tokens=max_tokens, stop=stop
        )
        fit = tool_set.fits.get(engine.name) if tool_set and request.tool_set else None
        return _act_reply(engine, request, tools, result, text, fit=fit)
    schema = request.json_schema or {}
    system = _EXTRACT_SYSTEM + json.dumps(schema, separators=(",", ":"))
    result = engine.generate_structured(
        schema,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": text}],
        max_tokens=max_tokens,
        stop=stop,
    )
    common = _common(engine, request, result)
    if result.value is None or validation_errors(schema, result.value):
        return Response(**common, confidence=0.0, reason="no valid object within max_tokens")
    confidences = _grounding(result.field_confidence, result.value, text)
    confidence = weakest(confidences, schema.get("required", []))
    return Response(
        **common,
        data=result.value,
        answer=json.dumps(result.value, separators=(",", ":"), ensure_ascii=False),
        field_confidence={k: round_confidence(v) for k, v in confidences.items()},
        confidence=round_confidence(confidence),
        reason="answered on the edge",
    )


def _common(engine: Engine, request: Request, result: Structured) -> dict[str, Any]:
    return {
        "id": request.id,
        "ok": True,
        "source": Source.EDGE,
        "escalated": False,
        "model": engine.name,
        "finish_reason": result.finish_reason,
        "tokens": TokenUsage(prompt=result.prompt_tokens, completion=result.completion_tokens),
    }


def required_fields(tool: ToolSpec) -> list[str]:
    """The paths whose weakest confidence is a call of ``tool``'s raw confidence."""
    return ["name", *(f"arguments.{r}" for r in tool.function.parameters.get("required", []))]


def _act_reply(
    engine: Engine,
    request: Request,
    tools: list[ToolSpec],
    result: Structured,
    text: str,
    *,
    fit: ToolSetFit | None,
) -> Response:
    common = _common(engine, request, result)
    value = result.value
    if not isinstance(value, dict) or validation_errors(tool_call_schema(tools), value):
        return Response(**common, confidence=0.0, reason="no valid call within max_tokens")
    if value["name"] == NO_TOOL:
        return Response(
            **common,
            confidence=0.0,
            field_confidence={"name": round_confidence(result.field_confidence.get("name", 0))},
            reason=NO_TOOL_REASON,
        )
    tool = next(t for t in tools if t.name == value["name"])
    confidences = _grounding(result.field_confidence, value["arguments"], text, "arguments.")
    confidence = weakest(confidences, required_fields(tool))
    if fit is not None:
        confidence = calibrate(confidence, fit)
    return Response(
        **common,
        tool_call=ToolCall(name=value["name"], arguments=value["arguments"]),
        field_confidence={k: round_confidence(v) for k, v in confidences.items()},
        confidence=round_confidence(confidence),
        answer=json.dumps(value, separators=(",", ":")),
        reason="answered on the edge",
    )


def tool_threshold(request: Request, edge: Response, high_risk: float) -> float | None:
    """The stricter threshold an edge call of a high-risk tool must reach, or None."""
    if edge.tool_call is None:
        return None
    for tool in request.tools or []:
        if tool.name == edge.tool_call.name:
            if tool.threshold is not None:
                return tool.threshold
            return high_risk if tool.risk == "high" else None
    return None
