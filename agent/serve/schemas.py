"""The subset of OpenAI's chat completions API that ``edge-agent serve`` speaks.

Requests are tolerant: fields we do not implement (``user``,
``presence_penalty`` ...) are ignored, as an OpenAI-compatible server must
accept what the official clients send. Fields whose meaning we cannot honour
are rejected instead of silently ignored: ``n`` other than 1, non-text content
parts. Decoding is greedy unless the request sets a ``temperature`` above 0: then
it samples, within ``top_p``, reproducibly under a ``seed``. Unlike OpenAI, whose
default temperature is 1, an omitted one is greedy: the agent's confidence signal
is defined on the greedy choice, and a local model is most often asked to decide.

Responses are strict models with one extension, ``x_confidence``: the engine's
confidence in [0, 1] (see :mod:`agent.engine.confidence`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.engine.sampling import Sampling
from edge_slm.contract import SchemaError, ToolSpec, check_schema, tool_call_schema
from edge_slm.contract.structured import MAX_TOOLS

MAX_STOP_SEQUENCES = 4  # OpenAI's limit
MAX_TOP_LOGPROBS = 20  # OpenAI's limit
#: ``response_format: {"type": "json_object"}``: any JSON object.
_ANY_OBJECT: dict[str, Any] = {"type": "object", "properties": {}}


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Tolerant):
    type: Literal["text"]
    text: str


class ChatMessage(_Tolerant):
    # "developer" is what newer OpenAI clients send instead of "system".
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def as_engine_message(self) -> dict[str, str]:
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": self.text()}


class StreamOptions(_Tolerant):
    include_usage: bool = False


class ChatCompletionRequest(_Tolerant):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)  # None or 0: greedy
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    n: int = 1
    # Structured outputs: decoded under the schema (the documented subset), not streamed.
    response_format: dict[str, Any] | None = None
    tools: list[ToolSpec] | None = Field(default=None, min_length=1, max_length=MAX_TOOLS)
    tool_choice: str | dict[str, Any] | None = None

    @field_validator("response_format")
    @classmethod
    def _format(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None or value.get("type") == "text":
            return None
        if value.get("type") == "json_object":
            return {"type": "json_schema", "json_schema": {"schema": _ANY_OBJECT}}
        if value.get("type") != "json_schema" or not isinstance(value.get("json_schema"), dict):
            raise ValueError("response_format type must be text, json_object or json_schema")
        try:
            check_schema(value["json_schema"].get("schema"), where="json_schema.schema")
        except SchemaError as exc:
            raise ValueError(f"{exc.code.value}: {exc}") from None
        return value

    def structured(self) -> tuple[dict[str, Any], list[ToolSpec]] | None:
        """The schema to decode under and the tools it calls ([] for response_format)."""
        if self.tools and self.tool_choice != "none":
            tools = list(self.tools)
            choice = self.tool_choice
            if isinstance(choice, dict):
                name = (choice.get("function") or {}).get("name")
                tools = [t for t in tools if t.name == name]
                if not tools:
                    raise ValueError(f"tool_choice names no given tool: {name!r}")
            return tool_call_schema(tools, allow_none=choice in (None, "auto")), tools
        if self.response_format is not None:
            return dict(self.response_format["json_schema"]["schema"]), []
        return None

    def sampling(self) -> Sampling:
        """How to decode: greedy, or sampled when a temperature above 0 is asked."""
        return Sampling(
            temperature=self.temperature or 0.0, top_p=self.top_p or 1.0, seed=self.seed
        )

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is supported")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty")
        return value

    @model_validator(mode="after")
    def _structured_not_streamed(self) -> ChatCompletionRequest:
        if self.stream and (self.tools or self.response_format):
            raise ValueError("response_format json_schema and tools are served with stream=false")
        return self

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs=true")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream=true")
        return self

    def stop_sequences(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def token_budget(self, cap: int) -> int:
        """``max_completion_tokens`` (the current name) over ``max_tokens``; never above cap."""
        asked = self.max_completion_tokens or self.max_tokens or cap
        return min(asked, cap)

    def top_k(self) -> int:
        return (self.top_logprobs or 0) if self.logprobs else 0

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


# -- responses -------------------------------------------------------------

FinishReason = Literal["stop", "length"]


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: None = None


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCallOut] | None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | Literal["tool_calls"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt: int, completion: int) -> Usage:
        return cls(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[Choice]
    usage: Usage
    x_confidence: float = Field(ge=0.0, le=1.0)


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChunkChoice]
    # Present (null until the usage chunk) only when stream_options.include_usage is set.
    usage: Usage | None = None
    x_confidence: Annotated[float, Field(ge=0.0, le=1.0)] | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "edge-slm"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail
