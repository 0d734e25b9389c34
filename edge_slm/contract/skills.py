"""Skills: named classify tasks, their labels, calibration fits and sensor bands.

A skill travels inside :class:`~edge_slm.contract.config.DeviceConfig` and is
stored as TOML on the device; it is never a top-level message of its own.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge_slm.contract.base import OutboundModel, Versioned

LabelName = Annotated[str, Field(min_length=1, max_length=64)]
#: A skill's name: lowercase, digits, ``_ . -``; it is also a TOML key and a log field.
SkillName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
#: The name a request's own label set (``labels``, no skill) is learned under: see
#: :func:`label_set_name`. Its leading ``_`` is outside :data:`SkillName`, so no skill
#: can take it.
LabelSetName = Annotated[str, Field(pattern=r"^_labels-[0-9a-f]{16}$")]
LABEL_SET_PREFIX = "_labels-"


def label_set_name(labels: Iterable[str]) -> str:
    """The name of a label set, whatever the order of its labels: ``_labels-`` and 16
    hex digits of the SHA-256 of the sorted labels as JSON (unambiguous for any label)."""
    canonical = json.dumps(sorted(set(labels)), ensure_ascii=False)
    return LABEL_SET_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def is_label_set(name: str) -> bool:
    """Whether ``name`` names a request's label set rather than a skill."""
    return name.startswith(LABEL_SET_PREFIX)


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
    head: bool = Field(
        default=True,
        description="Answer first from a head over the encoder's vectors (fitted on the "
        "device from the skill's own texts, or pushed by `cloud-relay learn`) and run the "
        "SLM only where it is unsure; needs `embedding`. Off: the embedding stage and the "
        "SLM per the fit, as before.",
    )
    slm: bool = Field(
        default=True,
        description="Run the SLM where the head is unsure. Off: the head's answer stands at "
        "its own confidence, and what is under the threshold escalates. For skills with "
        "many labels: the SLM scores every label per request (seconds for 64 on a small "
        "board) and adds little there. Needs `head`; a device without an encoder still "
        "runs the SLM.",
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
    def _slm_off_needs_the_head(self) -> SkillSpec:
        if not self.slm and not (self.head and self.embedding):
            raise ValueError("`slm = false` needs `head` and `embedding`: nothing else answers")
        return self

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


_PARAPHRASES = "Requests the cloud LLM wrote for the skill's labels that it was fitted on."


class HeadProvenance(BaseModel):
    """What a pushed head was fitted on and how it did on the relay's held-out cases."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    skill_texts: int = Field(ge=0, description="The skill's own texts it was fitted on.")
    cloud_labels: int = Field(ge=0, description="Cloud-labelled cases it was fitted on.")
    held_out: int = Field(
        ge=0,
        description="Texts kept out, to check it: cloud-labelled cases, or the skill's "
        "exemplars for a first head fitted on the cloud's paraphrases.",
    )
    accuracy_new: float | None = Field(
        default=None, ge=0, le=1, description="Its accuracy on the held-out cases."
    )
    accuracy_old: float | None = Field(
        default=None, ge=0, le=1, description="The accuracy of the head it replaces there."
    )
    paraphrases: int = Field(default=0, ge=0, description=_PARAPHRASES)
    calibrated_on: Literal["out_of_fold", "held_out"] | None = Field(
        default=None,
        description="Where its confidence was calibrated: `out_of_fold` on its training "
        "texts, `held_out` on the relay's held-out cases (a label set whose labels the "
        "cloud has not all answered yet), or null: its raw top share.",
    )


class SkillHead(Versioned, OutboundModel):
    """Relay -> agents, retained on ``<prefix>/_skills/<skill>/head/<encoder>``: a skill's
    classify head, a multinomial logistic regression over one sentence encoder's vectors
    (``cloud-relay learn``). A request that lists its own labels and names no skill is
    learned the same way, under its label set's name (:func:`label_set_name`)."""

    skill: SkillName | LabelSetName = Field(
        description="The skill this head classifies for, or the label set "
        "(`_labels-` and 16 hex digits of the SHA-256 of its sorted labels as JSON) for "
        "requests that list their own labels."
    )
    version: int = Field(
        ge=1,
        description="Increases with every push for the skill: one sequence over all its "
        "encoders, so a version names one head.",
    )
    embedder: str = Field(
        min_length=1, max_length=128, description="The sentence encoder the head reads."
    )
    labels: list[LabelName] = Field(
        min_length=2, max_length=64, description="The skill's labels, in the weights' row order."
    )
    dim: int = Field(ge=1, le=4096, description="Vector size of the encoder.")
    weights: str = Field(
        max_length=1_500_000,
        description="K x dim weights, float32 little-endian, row-major, base64.",
    )
    bias: list[float] = Field(description="K biases.")
    calibration: tuple[float, float] = Field(
        description="Confidence = sigmoid(a * logit(p_top) + b): the calibrated probability "
        "that the top label is right, fitted on out-of-fold predictions.",
    )
    provenance: HeadProvenance = Field(description="What it was fitted on, how it did.")
    created_at: float = Field(description="Epoch seconds when it was fitted.")

    @model_validator(mode="after")
    def _consistent(self) -> SkillHead:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        if len(self.bias) != len(self.labels):
            raise ValueError("bias needs one value per label")
        if is_label_set(self.skill) and self.skill != label_set_name(self.labels):
            raise ValueError(f"{self.skill} is not the name of the labels {self.labels}")
        # base64 length of K*dim float32 values, padding included.
        expected = 4 * ((len(self.labels) * self.dim * 4 + 2) // 3)
        if len(self.weights) != expected:
            raise ValueError(f"weights must be {len(self.labels)} x {self.dim} float32 in base64")
        if not all(math.isfinite(x) for x in (*self.bias, *self.calibration)):
            raise ValueError("bias and calibration must be finite")
        return self
