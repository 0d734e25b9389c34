"""The wire contract (v1) shared by the edge agent and the cloud relay.

Pydantic only: this module must never import paho, onnxruntime or anything
heavy, so that apps and the relay can depend on it cheaply (a test checks).

Inbound models are tolerant (unknown fields are ignored, so newer minor
revisions of a sender still parse); outbound models are strict (``extra=forbid``)
so that we never put an undocumented field on the wire by accident.
"""

from __future__ import annotations

import itertools
import json
import math
import uuid
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: The contract's major version. A payload whose ``v`` differs is rejected with
#: :attr:`ErrorCode.UNSUPPORTED_VERSION`.
WIRE_VERSION = 1


class ErrorCode(StrEnum):
    """Typed error codes carried in ``Response.error.code``."""

    INVALID_JSON = "invalid_json"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_REQUEST = "invalid_request"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_VERSION = "unsupported_version"
    MAX_TOKENS_EXCEEDED = "max_tokens_exceeded"
    BUSY = "busy"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    SHUTTING_DOWN = "shutting_down"
    CLOUD_EXPIRED = "cloud_expired"
    CLOUD_FAILED = "cloud_failed"
    UNKNOWN_SKILL = "unknown_skill"
    INTERNAL = "internal"


class Kind(StrEnum):
    TEXT = "text"
    VOICE = "voice"
    SENSOR = "sensor"


class Task(StrEnum):
    ANSWER = "answer"
    CLASSIFY = "classify"
    EXTRACT = "extract"
    SUMMARIZE = "summarize"


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


class _Inbound(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Outbound(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Fields published even when null (``id`` of an unreadable request).
    _keep_null: ClassVar[frozenset[str]] = frozenset()

    def to_wire(self) -> bytes:
        """JSON for the wire: unset optional fields are left out, required ones kept."""
        data = self.model_dump(mode="json", exclude_none=True)
        for name in self._keep_null:
            data.setdefault(name, None)
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def new_request_id() -> str:
    return uuid.uuid4().hex


TopicName = Annotated[str, Field(min_length=1, max_length=512)]
LabelName = Annotated[str, Field(min_length=1, max_length=64)]
#: A skill's name: lowercase, digits, ``_ . -``; it is also a TOML key and a log field.
SkillName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]


def default_verbalizer(label: str) -> str:
    """The words scored for a label without its own verbalizer: ``lights_on`` -> ``lights on``."""
    return " ".join(label.replace("_", " ").replace("-", " ").split())


class SkillLabel(BaseModel):
    """One label of a skill: what it means, the words scored for it, and examples."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    description: str = Field(
        default="", max_length=512, description="What the label means, shown to the model."
    )
    verbalizer: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="The words the model is scored on for this label, e.g. `turn on the "
        "lights` for `lights_on`; default: the name with `_` and `-` as spaces. The reply "
        "still carries the label name.",
    )
    exemplars: list[Annotated[str, Field(min_length=1, max_length=512)]] = Field(
        default_factory=list,
        max_length=16,
        description="Example inputs of this label, shown to the model as earlier turns.",
    )

    def words(self, name: str) -> str:
        return self.verbalizer or default_verbalizer(name)


class SkillCalibrator(BaseModel):
    """How one skill turns its evidence into labels and a confidence, for one edge model.

    The label distribution is ``softmax(slm_weight * log p_slm + embed_weight * cos)``,
    where ``p_slm`` is the SLM's label distribution and ``cos`` each label's cosine to
    the request in the embedding stage. The confidence is the fitted probability
    that the chosen label is right: ``sigmoid(bias + top_weight * p_top +
    agree_weight * agree)``, with ``p_top`` the chosen label's share and ``agree``
    1 when the SLM alone and the embedding stage alone pick the same label.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    slm_weight: float = Field(default=1.0, ge=0, le=100, description="1 / temperature of the SLM.")
    embed_weight: float = Field(
        default=0.0, ge=0, le=1000, description="Weight of the embedding cosines; 0: unused."
    )
    bias: float = Field(default=0.0, ge=-100, le=100, description="Confidence: intercept.")
    top_weight: float = Field(
        default=0.0, ge=-100, le=100, description="Confidence: weight of the top label's share."
    )
    agree_weight: float = Field(
        default=0.0, ge=-100, le=100, description="Confidence: weight of SLM/embedding agreement."
    )


#: How the SLM scores a skill's labels (``Engine.classify_fixed``): every token of each
#: verbalizer, or only its distinguishing prefix.
Scoring = Literal["full", "prefix"]


class SkillFit(BaseModel):
    """A skill's calibration on one edge model, fitted on labelled data by
    ``edge-agent skills fit``; stored in the skill under ``[fits."<model>"]``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    embedder: str | None = Field(
        default=None,
        max_length=128,
        description="The embedding model the fit was made with (`combined`, `embedding_only`); "
        "without `combined` (its answers were all right or all wrong) the SLM runs alone.",
    )
    combined: SkillCalibrator | None = Field(
        default=None, description="With the embedding stage (when `embedder` is loaded)."
    )
    slm_only: SkillCalibrator = Field(
        default_factory=SkillCalibrator, description="Without the embedding stage."
    )
    embedding_only: SkillCalibrator | None = Field(
        default=None, description="The embedding stage alone (`slm_weight` 0), for `accept`."
    )
    accept: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Cascade: when the embedding stage alone is at least this confident, "
        "answer from it and skip the SLM (fitted to give up at most 2 points of "
        "cross-validated accuracy); none: always run the SLM.",
    )
    scoring: Scoring = Field(
        default="full",
        description="How the SLM's label scores were computed for this fit, and must be at "
        "run time: `full` (every token of each verbalizer: one forward pass per label) or "
        "`prefix` (each verbalizer's distinguishing prefix: a label whose first token is its "
        "own costs no pass).",
    )
    items: int = Field(default=0, ge=0, description="Labelled items the fit was made on.")
    ece_before: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Expected calibration error of the raw SLM "
        "confidence on held-out data, when measured.",
    )
    ece_after: float | None = Field(
        default=None, ge=0, le=1, description="The same with this fit (`combined` if fitted)."
    )


Bound = float | None


class SensorBand(BaseModel):
    """The label a skill gives one kind of reading, by rule: ranges for numbers, a table
    for words. Stored in a skill under ``[bands.<reading>]``."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    unit: str | None = Field(
        default=None,
        max_length=32,
        description="The unit the ranges are in. A reading in another unit is left to the "
        "model (a °F thermometer is not judged by °C bands); one without a unit is taken "
        "to be in this one.",
    )
    ranges: dict[LabelName, list[tuple[Bound, Bound]]] = Field(
        default_factory=dict,
        description="Per label, `[low, high]` pairs: a number with `low <= value < high` "
        "gets the label. `null` (or TOML's `-inf`/`inf`) is an open end. Ranges must not "
        "overlap; a number in none of them is left to the model.",
    )
    states: dict[Annotated[str, Field(min_length=1, max_length=64)], LabelName] = Field(
        default_factory=dict,
        description="Per word reading (`detected`, `wet`; `true`/`false` for booleans), "
        "its label; matched without regard to case.",
    )

    @field_validator("ranges")
    @classmethod
    def _open_ends(cls, ranges: dict[str, list[tuple[Bound, Bound]]]) -> Any:
        # TOML has no null and spells an open end -inf or inf; JSON cannot carry those.
        def bound(value: Bound) -> Bound:
            if value is not None and math.isnan(value):
                raise ValueError("a range bound is NaN")
            return None if value is None or math.isinf(value) else value

        return {k: [(bound(lo), bound(hi)) for lo, hi in pairs] for k, pairs in ranges.items()}

    @model_validator(mode="after")
    def _consistent(self) -> SensorBand:
        if not self.ranges and not self.states:
            raise ValueError("a band needs `ranges` or `states`")
        spans = sorted(
            (float("-inf") if low is None else low, float("inf") if high is None else high, label)
            for label, pairs in self.ranges.items()
            for low, high in pairs
        )
        for low, high, label in spans:
            if not low < high:
                raise ValueError(f"range [{low}, {high}] of {label!r} is empty")
        for (_, high, first), (low, _, second) in itertools.pairwise(spans):
            if low < high:
                raise ValueError(f"ranges of {first!r} and {second!r} overlap")
        if len({state.casefold() for state in self.states}) != len(self.states):
            raise ValueError("states differ only in case")
        return self

    def labels(self) -> set[str]:
        return set(self.ranges) | set(self.states.values())


class SkillSpec(BaseModel):
    """A named classify task: a label set with descriptions, verbalizers and exemplars."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    description: str = Field(default="", max_length=512, description="What the skill is for.")
    instructions: str | None = Field(
        default=None,
        max_length=4096,
        description="Opening of the system prompt; default: a generic classify instruction.",
    )
    labels: dict[LabelName, SkillLabel] = Field(
        min_length=2, max_length=64, description="The labels, by name, in prompt order."
    )
    embedding: bool = Field(
        default=True,
        description="Use the embedding stage (when the device has an embedder and the fit "
        "was made with it). Turn it off where labels hinge on numbers, such as sensor "
        "thresholds: sentence embeddings do not read magnitudes.",
    )
    fits: dict[Annotated[str, Field(min_length=1, max_length=128)], SkillFit] = Field(
        default_factory=dict,
        max_length=16,
        description="Fitted calibration by edge model name (`edge-agent skills fit`); a "
        "model without one gets the raw SLM distribution and confidence.",
    )
    bands: dict[Annotated[str, Field(min_length=1, max_length=64)], SensorBand] = Field(
        default_factory=dict,
        max_length=64,
        description="Readings judged by rule, keyed by the last segment of the sensor name "
        "(`kitchen/co2` -> `co2`). A request whose readings all fall in a band is answered "
        "from the bands, without the model, with confidence 1: the worst of its readings' "
        "labels, worst meaning latest in `labels` order. A reading no band covers leaves "
        "the request to the model, unless the bands already give the last label.",
    )
    calibrate: bool = Field(
        default=True,
        description="Divide the label distribution by the one a content-free request "
        "(`N/A`) gets, removing the prompt's own lean towards some labels. Turn it off "
        "where an empty request has a real answer (a sensor report with nothing in it "
        "reads as `normal`).",
    )

    @model_validator(mode="after")
    def _distinct_verbalizers(self) -> SkillSpec:
        seen: dict[str, str] = {}
        for name, label in self.labels.items():
            words = label.words(name)
            key = " ".join(words.lower().split())
            if not key:
                raise ValueError(f"label {name!r} has an empty verbalizer")
            if key in seen:
                raise ValueError(
                    f"labels {seen[key]!r} and {name!r} have the same verbalizer {words!r}"
                )
            seen[key] = name
        for reading, band in self.bands.items():
            unknown = band.labels() - set(self.labels)
            if unknown:
                raise ValueError(f"band {reading!r} names unknown labels {sorted(unknown)}")
        return self


class SensorReading(_Inbound):
    """One sensor reading attached to a request."""

    name: str = Field(min_length=1, max_length=128, description="Sensor name, e.g. `kitchen/temp`.")
    value: float | int | str | bool = Field(description="The reading.")
    unit: str | None = Field(default=None, max_length=32, description="Unit, e.g. `°C`.")
    ts: float | str | None = Field(
        default=None, description="When it was read: epoch seconds or an ISO 8601 string."
    )


class Request(_Inbound):
    """What an app publishes on ``<prefix>/<device_id>/request``."""

    v: int = Field(description="Contract major version; must be 1.")
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
        description="Whether a cloud answer that arrives after the edge fallback reply is "
        "published later as a correction (`supersedes: true`).",
    )

    @field_validator("reply_to")
    @classmethod
    def _no_wildcards(cls, value: str | None) -> str | None:
        # MQTT 5 §4.7.1: no wildcards in topic names; §1.5.4: no U+0000 in strings.
        if value is not None and (set(value) & {"+", "#", "\x00"} or value.startswith("$")):
            raise ValueError("reply_to must be a plain topic name (no wildcards, NUL or $ prefix)")
        return value

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("labels must be unique")
        return value

    @model_validator(mode="after")
    def _task_needs(self) -> Request:
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


class TokenUsage(_Outbound):
    prompt: int = Field(ge=0, description="Prompt tokens.")
    completion: int = Field(ge=0, description="Generated (or scored) tokens.")


class ErrorInfo(_Outbound):
    code: ErrorCode = Field(description="Machine-readable error code.")
    message: str = Field(description="Human-readable explanation.")
    retry_after_ms: int | None = Field(
        default=None, description="For `busy`: when a retry is likely to be accepted."
    )


class Response(_Outbound):
    """What the agent publishes on the reply topic."""

    _keep_null: ClassVar[frozenset[str]] = frozenset({"id"})

    v: Literal[1] = Field(default=1, description="Contract major version.")
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
    supersedes: bool | None = Field(
        default=None,
        description="True on a late cloud answer that replaces an earlier edge-fallback reply "
        "with the same id.",
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


class ModelState(_Outbound):
    """The model in memory: loaded or idle-unloaded, pinned, and its load times."""

    version: str | None = Field(
        default=None,
        description="Version of the running model: the first 12 hex digits of the sha256 of "
        "the archive it was installed from over the air; absent for a configured model.",
    )
    loaded: bool = Field(description="In memory now (false after an idle unload).")
    pinned: bool = Field(description="Kept loaded: never unloaded when idle.")
    idle_unload_s: float | None = Field(
        default=None, description="Unloaded after this many idle seconds; absent: never."
    )
    loads: int = Field(ge=0, description="Loads since the agent started (start-up included).")
    last_load_ms: float | None = Field(
        default=None, ge=0.0, description="Duration of the latest load, in ms."
    )


class ModelUpdateState(StrEnum):
    """Steps of an over-the-air model update, then its outcome."""

    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    UNPACKING = "unpacking"
    IMPORTING = "importing"
    LOADING = "loading"
    SELF_TEST = "self_test"
    SWAPPING = "swapping"
    DONE = "done"
    FAILED = "failed"


class ModelUpdate(_Outbound):
    """Where the latest desired-model update stands (in the retained Status)."""

    name: str = Field(description="The desired model's name.")
    sha256: str = Field(description="sha256 of the desired archive.")
    state: ModelUpdateState = Field(description="The step under way, or `done` / `failed`.")
    failed_step: ModelUpdateState | None = Field(
        default=None, description="With `failed`: the step that failed (the model was rolled back)."
    )
    reason: str | None = Field(default=None, description="With `failed`: why.")
    issued_at: float = Field(description="`issued_at` of the DesiredModel it answers.")
    ts: float = Field(description="Epoch seconds of this state.")


class Status(_Outbound):
    """Retained on ``<prefix>/<device_id>/status``: birth message and last will."""

    v: Literal[1] = Field(default=1, description="Contract major version.")
    device_id: str = Field(description="The device's id.")
    state: Literal["online", "offline"] = Field(description="Whether the agent is serving.")
    model: str | None = Field(default=None, description="Loaded model name.")
    provider: str | None = Field(
        default=None, description="Execution provider really in use (cpu, cuda, ...)."
    )
    version: str | None = Field(default=None, description="edge-slm version.")
    conditions: list[str] | None = Field(
        default=None,
        description="Degraded conditions the operator should know about, e.g. "
        "`outbox_unwritable` (disk full: escalations are not queued, local answers go on) "
        "or `outbox_was_corrupt` (the file was moved aside at start).",
    )
    model_state: ModelState | None = Field(
        default=None, description="Whether the model is loaded, pinned, and how long loads take."
    )
    model_update: ModelUpdate | None = Field(
        default=None, description="Progress or outcome of the latest over-the-air model update."
    )
    ts: float = Field(description="Epoch seconds when published.")


class _DeviceToCloud(BaseModel):
    """Agent <-> relay messages: strict fields by construction, tolerant when parsed."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    def to_wire(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class EdgeAnswer(_DeviceToCloud):
    """What the device answered, sent along for comparison and calibration."""

    answer: str | None = Field(default=None, description="Edge answer text.")
    label: str | None = Field(default=None, description="Edge label, for classify.")
    confidence: float = Field(ge=0.0, le=1.0, description="Edge confidence.")
    model: str = Field(description="Edge model.")
    latency_ms: float | None = Field(default=None, ge=0.0, description="Edge latency.")


class Escalation(_DeviceToCloud):
    """Agent -> relay on ``<prefix>/<device_id>/escalation`` (QoS 1, Message Expiry)."""

    v: Literal[1] = Field(default=1, description="Contract major version; must be 1.")
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


class CloudReply(_DeviceToCloud):
    """Relay -> agent on ``<prefix>/<device_id>/cloud`` (QoS 1)."""

    v: Literal[1] = Field(default=1, description="Contract major version; must be 1.")
    id: str = Field(min_length=1, max_length=128, description="The request id.")
    device_id: str = Field(
        min_length=1, max_length=64, description="The device the escalation came from."
    )
    ok: bool = Field(description="Whether the cloud produced an answer.")
    outcome: Outcome = Field(description="Final state of the escalation.")
    answer: str | None = Field(default=None, description="Cloud answer text.")
    label: str | None = Field(default=None, description="Cloud label, for classify.")
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


class LatencySummary(_Outbound):
    p50_ms: float = Field(ge=0.0, description="Median latency, ms.")
    p95_ms: float = Field(ge=0.0, description="95th percentile latency, ms.")
    count: int = Field(ge=0, description="Replies in the window behind the percentiles.")


class Telemetry(_Outbound):
    """Agent -> fleet on ``<prefix>/<device_id>/telemetry`` (QoS 1, every interval).

    Counters are cumulative since the agent started (``started_at``), so a lost
    message loses nothing; percentiles cover the most recent replies.
    """

    v: Literal[1] = Field(default=1, description="Contract major version.")
    device_id: str = Field(description="The device's id.")
    ts: float = Field(description="Epoch seconds when published.")
    started_at: float = Field(description="Epoch seconds when the agent started.")
    model: str = Field(description="Model in use.")
    provider: str = Field(description="Execution provider actually in use.")
    requests: dict[str, int] = Field(
        description="Final replies by source (`edge`, `cloud`, `edge-fallback`) and `error`."
    )
    escalations: int = Field(ge=0, description="Requests sent to the cloud.")
    escalation_rate: float = Field(
        ge=0.0, le=1.0, description="Escalations / answered requests (errors excluded)."
    )
    escalation_reasons: dict[str, int] = Field(description="Escalations by reason.")
    latency: dict[str, LatencySummary] = Field(description="Reply latency by source.")
    decode_tok_s: float | None = Field(
        default=None, ge=0.0, description="Median edge decode speed over recent generations."
    )
    outbox_depth: int = Field(ge=0, description="Escalations waiting for a cloud reply.")
    outbox_dropped: dict[str, int] = Field(
        description="Escalations dropped: `full` (bounds), `expired`, `unwritable` (disk)."
    )
    cloud_tokens: TokenUsage = Field(description="Tokens the cloud spent on this device.")
    cost_avoided_usd: float = Field(
        ge=0.0,
        description="Edge answers priced at the configured cloud price per token: what "
        "answering them in the cloud would have cost.",
    )
    conditions: list[str] | None = Field(default=None, description="As in Status.")


class DeviceConfig(_DeviceToCloud):
    """Relay -> agent, retained on ``<prefix>/<device_id>/config``: run-time settings.

    Only the relay identity may publish it (broker ACL). The agent validates it
    and applies it without a restart; fields left out keep their current value.
    """

    v: Literal[1] = Field(default=1, description="Contract major version.")
    device_id: str = Field(min_length=1, max_length=64, description="The device it is for.")
    thresholds: dict[Task, Annotated[float, Field(ge=0.0, le=1.0)]] | None = Field(
        default=None, description="Escalation thresholds by task, e.g. from `calibrate`."
    )
    shadow_rate: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Share of confident edge answers also sent to the cloud for comparison.",
    )
    skills: dict[SkillName, SkillSpec] | None = Field(
        default=None,
        max_length=32,
        description="Skills pushed to the device, by name. They replace the previously "
        "pushed set (`{}` clears it) and take precedence over built-in and configured "
        "skills of the same name.",
    )
    issued_at: float = Field(description="Epoch seconds when the operator issued it.")
    issued_by: str | None = Field(default=None, max_length=128, description="Who or what.")


_SHA256 = r"^[0-9a-f]{64}$"
_MODEL_NAME = r"^[a-z0-9][a-z0-9._-]*$"


class DesiredModel(_DeviceToCloud):
    """Relay -> agent, retained on ``<prefix>/<device_id>/model``: the model to run.

    Only the relay identity may publish it (broker ACL), e.g. with ``cloud-relay
    models push``. The agent downloads the archive, verifies its size and sha256,
    unpacks and imports it, loads and self-tests it, then swaps it in between two
    requests; any failed step leaves the previous model serving (see
    ``Status.model_update``).
    """

    v: Literal[1] = Field(default=1, description="Contract major version.")
    device_id: str = Field(min_length=1, max_length=64, description="The device it is for.")
    name: str = Field(
        min_length=1, max_length=64, pattern=_MODEL_NAME, description="Model name on the device."
    )
    url: str = Field(
        min_length=1,
        max_length=2048,
        pattern=r"^https?://",
        description="Where the archive is served (http or https; the sha256 pins the content).",
    )
    sha256: str = Field(pattern=_SHA256, description="sha256 of the archive, lowercase hex.")
    size: int | None = Field(default=None, gt=0, description="Size of the archive in bytes.")
    format: Literal["tar", "zip"] = Field(
        default="tar",
        description="An onnxruntime-genai model folder packed as a tar (optionally gzip, bzip2 "
        "or xz compressed) or a zip archive; its genai_config.json may sit at the top or in "
        "one top-level folder.",
    )
    pin: bool | None = Field(
        default=None, description="Keep the model loaded (no idle unload); absent: unchanged."
    )
    issued_at: float = Field(description="Epoch seconds when the operator issued it.")
    issued_by: str | None = Field(default=None, max_length=128, description="Who or what.")


#: Every model that travels on a topic, for schema export and the AsyncAPI check.
WIRE_MODELS: dict[str, type[BaseModel]] = {
    "Request": Request,
    "Response": Response,
    "Status": Status,
    "Escalation": Escalation,
    "CloudReply": CloudReply,
    "Telemetry": Telemetry,
    "DeviceConfig": DeviceConfig,
    "DesiredModel": DesiredModel,
}

#: Models whose receivers validate them (schemas exported in validation mode).
_RECEIVED = (Request, Escalation, CloudReply, DeviceConfig, DesiredModel)


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every wire model (validation mode for received ones)."""
    return {
        name: model.model_json_schema(mode="validation" if model in _RECEIVED else "serialization")
        for name, model in WIRE_MODELS.items()
    }
