"""Escalation and cloud reply: agent -> relay cases, relay -> agent answers."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field, model_validator

from edge_slm.contract.base import ErrorInfo, PeerModel, TokenUsage, Versioned
from edge_slm.contract.request import Kind, SensorReading, Task
from edge_slm.contract.skills import SkillName
from edge_slm.contract.structured import ToolCall


class EscalationReason(StrEnum):
    """Why a request went to the cloud (machine-readable; ``reason`` texts explain)."""

    CLOUD_ALWAYS = "cloud_always"
    COMPLEX = "complex"
    LOW_CONFIDENCE = "low_confidence"
    EDGE_ERROR = "edge_error"
    SHADOW = "shadow"  # a confident edge answer, sampled for comparison only


class Outcome(StrEnum):
    """Final state of an escalation, in the relay log and on the cloud reply."""

    OK = "ok"
    LLM_ERROR = "llm_error"
    REJECTED = "rejected"
    BUDGET = "budget"
    EXPIRED = "expired"


class EdgeAnswer(PeerModel):
    """What the device answered, sent along for comparison and calibration."""

    answer: str | None = Field(default=None, description="Edge answer text.")
    label: str | None = Field(default=None, description="Edge label, for classify.")
    data: dict[str, Any] | None = Field(default=None, description="Edge object, for extract.")
    tool_call: ToolCall | None = Field(default=None, description="Edge call, for act.")
    confidence: float = Field(ge=0.0, le=1.0, description="Edge confidence.")
    model: str = Field(description="Edge model.")
    latency_ms: float | None = Field(default=None, ge=0.0, description="Edge latency.")


class Escalation(Versioned, PeerModel):
    """Agent -> relay on ``<prefix>/<device_id>/escalation`` (QoS 1, Message Expiry)."""

    id: str = Field(min_length=1, max_length=128, description="The request id.")
    device_id: str = Field(min_length=1, max_length=64, description="Sending device.")
    kind: Kind = Field(description="Request kind.")
    task: Task = Field(description="Request task.")
    text: str = Field(description="Request text after redaction.")
    sensor: list[SensorReading] | None = Field(
        default=None, description="Sensor readings after redaction."
    )
    labels: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        default=None, max_length=64, description="Labels, for classify."
    )
    skill: SkillName | None = Field(
        default=None,
        description="The skill the request named (its labels are in `labels`); the relay "
        "learns that skill's head from the cloud's labels (`cloud-relay learn`).",
    )
    json_schema: dict[str, Any] | None = Field(
        default=None,
        alias="schema",
        description="For extract: the schema the answer must follow (already checked by "
        "the device).",
    )
    tools: list[dict[str, Any]] | None = Field(
        default=None,
        description="For act: the tools in OpenAI's format (a named tool set resolved, "
        "edge-only fields dropped); the cloud must call one of them.",
    )
    max_tokens: int = Field(ge=1, description="Generation budget.")
    reason: EscalationReason = Field(description="Why the device escalated.")
    reason_text: str = Field(description="Human-readable reason.")
    edge: EdgeAnswer | None = Field(
        default=None, description="The edge answer; null when escalated before generation."
    )
    redactions: dict[str, int] = Field(
        default_factory=dict, description="How many values of each PII type were redacted."
    )
    deadline_ms: int | None = Field(
        default=None,
        ge=1,
        description="Time left before the app's deadline when escalated, in ms: answer within "
        "it to be the app's one reply; later answers become corrections.",
    )
    expires_at: float | None = Field(
        default=None,
        description="Epoch seconds after which the device has no use for a cloud answer, "
        "corrections included; the relay stops retrying then.",
    )
    created_at: float = Field(description="Epoch seconds when the device escalated.")


class CloudReply(Versioned, PeerModel):
    """Relay -> agent on ``<prefix>/<device_id>/cloud`` (QoS 1)."""

    id: str = Field(min_length=1, max_length=128, description="The request id.")
    device_id: str = Field(
        min_length=1, max_length=64, description="The device the escalation came from."
    )
    ok: bool = Field(description="Whether the cloud produced an answer.")
    outcome: Outcome = Field(description="Final state of the escalation.")
    answer: str | None = Field(default=None, description="Cloud answer text.")
    label: str | None = Field(default=None, description="Cloud label, for classify.")
    data: dict[str, Any] | None = Field(
        default=None, description="Cloud object, for extract: validated against the schema."
    )
    tool_call: ToolCall | None = Field(
        default=None, description="Cloud call, for act: validated against the tool's parameters."
    )
    confidence: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Cloud confidence, when the LLM gives logprobs."
    )
    model: str | None = Field(default=None, description="Cloud model.")
    tokens: TokenUsage | None = Field(default=None, description="Cloud token counts.")
    latency_ms: float | None = Field(
        default=None, ge=0.0, description="Relay time from receipt to reply."
    )
    error: ErrorInfo | None = Field(default=None, description="Set when ok is false.")

    @model_validator(mode="after")
    def _error_iff_not_ok(self) -> CloudReply:
        if self.ok == (self.error is not None):
            raise ValueError("error must be set exactly when ok is false")
        return self
