"""Status and telemetry: what a device tells the fleet, retained and periodic."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field

from edge_slm.contract.base import OutboundModel, TokenUsage, Versioned


class ModelState(OutboundModel):
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


class ModelUpdate(OutboundModel):
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


class Status(Versioned, OutboundModel):
    """Retained on ``<prefix>/<device_id>/status``: birth message and last will."""

    device_id: str = Field(description="The device's id.")
    state: Literal["online", "offline"] = Field(description="Whether the agent is serving.")
    model: str | None = Field(default=None, description="Loaded model name.")
    provider: str | None = Field(
        default=None, description="Execution provider really in use (cpu, cuda, ...)."
    )
    version: str | None = Field(default=None, description="edge-slm version.")
    arch: str | None = Field(
        default=None, description="The device's CPU architecture (`uname -m`): aarch64, x86_64."
    )
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
    heads: dict[str, int] | None = Field(
        default=None,
        description="The classify head in use per skill: the version of the head the relay "
        "pushed (`cloud-relay learn`), 0 for the head fitted on the device from the skill's "
        "own text; and per label set that requests list themselves (`_labels-...`), the "
        "version of the head the relay learned for it, for those the device keeps.",
    )
    embedder: str | None = Field(
        default=None,
        description="The sentence encoder the skills' heads run on (`model.embedder`); None: "
        "no embedding stage. A pushed head is made for one encoder (the relay's "
        "`learn.encoder`): a device with another refuses it and keeps its own.",
    )
    ts: float = Field(description="Epoch seconds when published.")


class LatencySummary(OutboundModel):
    p50_ms: float = Field(ge=0.0, description="Median latency, ms.")
    p95_ms: float = Field(ge=0.0, description="95th percentile latency, ms.")
    count: int = Field(ge=0, description="Replies in the window behind the percentiles.")


class Telemetry(Versioned, OutboundModel):
    """Agent -> fleet on ``<prefix>/<device_id>/telemetry`` (QoS 1, every interval).

    Counters are cumulative since the agent started (``started_at``), so a lost
    message loses nothing; percentiles cover the most recent replies.
    """

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


class RelayStatus(Versioned, OutboundModel):
    """On ``<prefix>/_relays/<relay_id>/status``, not retained: a relay came or went.

    Agents re-send their outbox at once when a relay says ``online``, rather than
    waiting for the next periodic re-send.
    """

    relay_id: str = Field(description="The relay's MQTT client id.")
    state: Literal["online", "offline"] = Field(
        description="`online` on each connect; `offline` at a clean stop or as its will."
    )
