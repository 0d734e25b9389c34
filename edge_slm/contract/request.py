"""Request and response: what an app asks on ``request`` and what the agent answers."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from edge_slm.contract.base import (
    ErrorCode,
    ErrorInfo,
    InboundModel,
    OutboundModel,
    TokenUsage,
    Versioned,
    new_request_id,
)
from edge_slm.contract.skills import SkillName
from edge_slm.contract.structured import (
    MAX_TOOLS,
    SchemaError,
    ToolCall,
    ToolSetName,
    ToolSpec,
    check_schema,
    schema_problem,
    unique_tools,
)
from edge_slm.topics import MAX_TOPIC_LENGTH, is_plain_topic

TopicName = Annotated[str, Field(min_length=1, max_length=MAX_TOPIC_LENGTH)]


class Kind(StrEnum):
    TEXT = "text"
    VOICE = "voice"
    SENSOR = "sensor"


class Task(StrEnum):
    ANSWER = "answer"
    CLASSIFY = "classify"
    EXTRACT = "extract"
    SUMMARIZE = "summarize"
    ACT = "act"


class CloudPolicy(StrEnum):
    AUTO = "auto"
    NEVER = "never"
    ALWAYS = "always"


class Source(StrEnum):
    EDGE = "edge"
    CLOUD = "cloud"
    EDGE_FALLBACK = "edge-fallback"


class Privacy(StrEnum):
    NORMAL = "normal"  # may leave the device, redacted, when policy allows
    LOCAL = "local"  # never leaves the device


class SensorReading(InboundModel):
    """One sensor reading attached to a request."""

    name: str = Field(min_length=1, max_length=128, description="Sensor name, e.g. `kitchen/temp`.")
    value: float | int | str | bool = Field(description="The reading.")
    unit: str | None = Field(default=None, max_length=32, description="Unit, e.g. `°C`.")
    ts: float | str | None = Field(
        default=None, description="When it was read: epoch seconds or an ISO 8601 string."
    )


class Request(Versioned, InboundModel):
    """What an app publishes on ``<prefix>/<device_id>/request``."""

    # `schema` is the wire name; the attribute is `json_schema` (BaseModel has a `schema`).
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    id: str = Field(
        default_factory=new_request_id,
        min_length=1,
        max_length=128,
        description="Request id, echoed in the reply; generated when absent.",
    )
    kind: Kind = Field(default=Kind.TEXT, description="Where the request comes from.")
    text: str = Field(default="", max_length=8192, description="The user's text or transcript.")
    sensor: SensorReading | list[SensorReading] | None = Field(
        default=None, description="One reading or a list of readings."
    )
    task: Task = Field(default=Task.ANSWER, description="What to do with the input.")
    labels: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        default=None,
        min_length=2,
        max_length=64,
        description="Candidate labels; `classify` needs these or `skill`.",
    )
    skill: SkillName | None = Field(
        default=None,
        description="A skill configured on the device (e.g. `home_intents`): its label set, "
        "descriptions and exemplars; `classify` only, instead of `labels`.",
    )
    json_schema: dict[str, Any] | None = Field(
        default=None,
        alias="schema",
        description="For `extract`: the JSON Schema (documented subset, at most 8 KiB) the "
        "reply's `data` follows. Without it `extract` answers free JSON text as before.",
    )
    tools: list[ToolSpec] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_TOOLS,
        description="For `act`: the tools, in OpenAI's function-tool format "
        '(`{"type": "function", "function": {"name", "description", "parameters"}}`).',
    )
    tool_set: ToolSetName | None = Field(
        default=None,
        description="For `act`, instead of `tools`: a tool set registered on the device.",
    )
    max_tokens: int | None = Field(
        default=None, ge=1, description="Generation budget; capped by the agent's config."
    )
    deadline_ms: int | None = Field(
        default=None,
        ge=1,
        le=86_400_000,
        description="Time budget in ms (at most a day), counted from `sent_at` when given, "
        "else from receipt.",
    )
    sent_at: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="Epoch seconds when the app sent the request (optional).",
    )
    cloud: CloudPolicy = Field(default=CloudPolicy.AUTO, description="Cloud escalation policy.")
    reply_to: TopicName | None = Field(
        default=None, description="Reply topic for clients without MQTT v5 Response Topic."
    )
    privacy: Privacy = Field(
        default=Privacy.NORMAL, description="`local`: this request never leaves the device."
    )
    corrections: bool = Field(
        default=True,
        description="Whether an escalated request's cloud outcome that arrives after its "
        "first reply (edge-fallback, or deadline_exceeded) is published later with "
        "`supersedes: true`: the cloud answer, or a cloud_failed/cloud_expired notice.",
    )

    @field_validator("reply_to")
    @classmethod
    def _plain_topic(cls, value: str | None) -> str | None:
        if value is not None and not is_plain_topic(value):
            raise ValueError("reply_to must be a plain topic name (no wildcards, NUL or $ prefix)")
        return value

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("labels must be unique")
        return value

    @field_validator("json_schema")
    @classmethod
    def _schema_subset(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        try:
            return check_schema(value)
        except SchemaError as exc:
            raise schema_problem(exc) from None

    @field_validator("tools")
    @classmethod
    def _unique_tools(cls, value: list[ToolSpec] | None) -> list[ToolSpec] | None:
        return None if value is None else unique_tools(value)

    @model_validator(mode="after")
    def _task_needs(self) -> Request:
        if self.task is Task.ACT and (self.tools is None) == (self.tool_set is None):
            raise ValueError("task 'act' requires 'tools' or 'tool_set' (one of them)")
        if (self.tools is not None or self.tool_set is not None) and self.task is not Task.ACT:
            raise ValueError("'tools' and 'tool_set' apply to task 'act' only")
        if self.json_schema is not None and self.task is not Task.EXTRACT:
            raise ValueError("'schema' applies to task 'extract' only")
        if self.task is Task.CLASSIFY and not self.labels and self.skill is None:
            raise ValueError("task 'classify' requires 'labels' or 'skill'")
        if self.labels and self.skill is not None:
            raise ValueError("give 'labels' or 'skill', not both")
        if self.skill is not None and self.task is not Task.CLASSIFY:
            raise ValueError("'skill' applies to task 'classify' only")
        if not self.text.strip() and not self.readings:
            raise ValueError("a request needs 'text' or 'sensor' readings")
        return self

    @property
    def readings(self) -> list[SensorReading]:
        if self.sensor is None:
            return []
        return self.sensor if isinstance(self.sensor, list) else [self.sensor]


class Response(Versioned, OutboundModel):
    """What the agent publishes on the reply topic."""

    _keep_null: ClassVar[frozenset[str]] = frozenset({"id"})

    id: str | None = Field(description="The request id; null when it could not be read.")
    ok: bool = Field(description="True for an answer, false for an error.")
    answer: str | None = Field(default=None, description="The answer text.")
    label: str | None = Field(default=None, description="The chosen label, for classify.")
    scores: dict[str, float] | None = Field(
        default=None, description="For classify: the normalized probability of every label."
    )
    confidence: float | None = Field(
        default=None, ge=0.0, le=1.0, description="How sure the model is, in [0, 1]."
    )
    source: Source | None = Field(default=None, description="Who answered.")
    escalated: bool = Field(default=False, description="Whether the cloud was asked.")
    reason: str | None = Field(default=None, description="Why it was or was not escalated.")
    model: str | None = Field(default=None, description="Model that produced the answer.")
    latency_ms: float | None = Field(
        default=None, ge=0.0, description="From receipt to reply, in ms."
    )
    tokens: TokenUsage | None = Field(
        default=None,
        description="Token counts. A skill answer given without the model (bands, embedding "
        "stage) counts the prompt the model would have read and the label's tokens.",
    )
    finish_reason: Literal["stop", "length"] | None = Field(
        default=None, description="Why generation ended (free-text tasks)."
    )
    data: dict[str, Any] | None = Field(
        default=None,
        description="For `extract` with a `schema`: the object, valid under the schema.",
    )
    tool_call: ToolCall | None = Field(
        default=None,
        description="For `act`: the call, its arguments valid under the tool's parameters; "
        "absent when no tool fits (`reason` says so).",
    )
    field_confidence: dict[str, float] | None = Field(
        default=None,
        description="For `extract` with a schema and `act`: each value's confidence, by "
        "dot path (`arguments.room`, `name`, `items.0`); `confidence` is the weakest "
        "required one.",
    )
    supersedes: bool | None = Field(
        default=None,
        description="True on a late cloud answer (or a cloud_failed/cloud_expired notice) "
        "that follows an earlier reply with the same id (edge-fallback, or "
        "deadline_exceeded).",
    )
    error: ErrorInfo | None = Field(default=None, description="Set when ok is false.")

    @model_validator(mode="after")
    def _error_iff_not_ok(self) -> Response:
        if self.ok == (self.error is not None):
            raise ValueError("error must be set exactly when ok is false")
        return self

    @classmethod
    def failure(
        cls,
        request_id: str | None,
        code: ErrorCode,
        message: str,
        *,
        retry_after_ms: int | None = None,
    ) -> Response:
        return cls(
            id=request_id,
            ok=False,
            error=ErrorInfo(code=code, message=message, retry_after_ms=retry_after_ms),
        )
