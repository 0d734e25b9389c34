"""Agent configuration: pydantic-settings, one nested model per concern.

Precedence, highest first: command-line flags, ``EDGE_AGENT_*`` environment
variables (nested with ``__``, e.g. ``EDGE_AGENT_MQTT__BROKER``), the TOML file
given with ``--config``, secrets files in ``$CREDENTIALS_DIRECTORY`` (systemd
``LoadCredential=``, e.g. ``mqtt__password``), then the defaults below.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    SettingsConfigDict,
)

from agent.models.embedders import DEFAULT_EMBEDDER
from edge_slm.contract import Kind, SkillName, SkillSpec, Task, ToolSetName, ToolSetSpec
from edge_slm.settings import (
    DaemonSettings,
    LogFormatSetting,
    LogLevel,
    MetricsSettings,
    MqttSettings,
    TopicPrefix,
    user_state_dir,
)
from edge_slm.settings import Section as _Section
from edge_slm.topics import DeviceTopics

Provider = Literal["auto", "cpu", "cuda", "qnn", "dml"]


class ModelSettings(_Section):
    name: str = Field(
        default="smollm2-135m-instruct",
        description="Catalog name of the model to load from the model cache.",
    )
    path: Path | None = Field(
        default=None,
        description="Load this onnxruntime-genai folder instead of looking the name up.",
    )
    cache_dir: Path | None = Field(
        default=None,
        description="Model cache; default $STATE_DIRECTORY/models under systemd, else "
        "$XDG_CACHE_HOME/edge-slm/models.",
    )
    provider: Provider = Field(
        default="auto",
        description="Execution provider. `auto` tries what the runtime offers and falls back "
        "to CPU with a warning.",
    )
    threads: int = Field(
        default=0,
        ge=0,
        description="Intra-op threads; 0 means one per available core.",
    )
    spin: bool = Field(
        default=True,
        description="Let onnxruntime's threads spin-wait for work after each run instead of "
        "sleeping. Off frees the cores as soon as an answer is done: measured here, about a "
        "quarter less CPU per sporadic classify, but classify ~7% and free-text generation "
        '~30% slower (BENCHMARKS.md, "Spinning pool threads"). For fanless or battery devices '
        "that mostly classify.",
    )
    embedder: str = Field(
        default=DEFAULT_EMBEDDER,
        description="Sentence-embedding model of the skills' embedding stage, from the model "
        "cache (`edge-agent models build NAME --install-source`): `minilm-l6-v2-int8`, or "
        "`mpnet-base-v2-int8` (more accurate heads, ~3x the time); the relay's "
        "`learn.encoders` must list it for the device to get learned heads. Empty: off. When "
        "it is not installed the default one is used if it is (`embedder_fallback`, also a "
        "status condition), else skills run on the SLM alone (`embedder_missing`).",
    )
    idle_unload_s: float = Field(
        default=0.0,
        ge=0,
        description="Unload the model after this many seconds without a request, giving its "
        "memory back; the next request loads it again (and waits for the load). 0 = never.",
    )
    pin: bool = Field(
        default=False,
        description="Keep the model loaded: never unload it when idle. A desired-model "
        "message's `pin` overrides it.",
    )


class LimitSettings(_Section):
    max_payload_bytes: int = Field(
        default=16 * 1024, ge=256, description="Requests larger than this are rejected."
    )
    max_tokens_cap: int = Field(
        default=256, ge=1, description="Largest `max_tokens` a request may ask for."
    )
    default_max_tokens: int = Field(
        default=96, ge=1, description="`max_tokens` when the request gives none."
    )
    queue_size: int = Field(
        default=32, ge=1, description="Requests waiting for the model; beyond it: `busy`."
    )
    busy_retry_ms: int = Field(
        default=500, ge=0, description="Retry hint sent with a `busy` error, per queued request."
    )
    drain_timeout_s: float = Field(
        default=30.0, ge=0, description="On SIGTERM, how long in-flight work may finish."
    )
    worker_stall_s: float = Field(
        default=180.0,
        gt=0,
        description="The inference worker counts as hung (systemd's watchdog is no longer "
        "pinged) when one job runs longer than this; keep it above the longest legitimate "
        "generation on the slowest device.",
    )

    @model_validator(mode="after")
    def _default_within_cap(self) -> LimitSettings:
        if self.default_max_tokens > self.max_tokens_cap:
            raise ValueError("default_max_tokens must not exceed max_tokens_cap")
        return self


def _state_dir() -> Path:
    state = os.environ.get("STATE_DIRECTORY")  # systemd StateDirectory=
    if state:
        return Path(state.split(":")[0])
    return user_state_dir()


class PolicySettings(_Section):
    thresholds: dict[Task, float] = Field(
        # Classify confidences are calibrated probabilities of being right (the skill
        # head, the zero-shot head for ad-hoc labels, the skills' fits), whatever the
        # number of labels: escalate what is wrong more than 2 times in 5. The others
        # are raw model scores, from `python -m bench.routing` (see BENCHMARKS.md).
        default_factory=lambda: {
            Task.CLASSIFY: 0.6,
            Task.ANSWER: 0.40,
            Task.EXTRACT: 0.40,
            Task.SUMMARIZE: 0.35,
            # A calibrated P(the call is exactly right) where the tool set has a fit for
            # the model (`edge-agent toolsets fit`), checked on the dev split only: there
            # SmolLM2-135M's calls never reach 0.35 and those kept at any lower threshold
            # are at most 3 in 11 exact, so none may stand; 0.6 is classify's rule (a
            # wrong action costs at least a wrong label), and every 135M call escalates.
            Task.ACT: 0.6,
        },
        description="Escalate when the edge confidence is below the task's threshold.",
    )
    complexity_direct: float = Field(
        default=0.5,
        ge=0.0,
        le=1.01,
        description="Requests at or above this complexity score go straight to the cloud "
        "(above 1 disables it).",
    )
    keywords: dict[str, float] = Field(
        default_factory=dict,
        description="Extra complexity per keyword found in the text, e.g. {diagnose = 0.4}.",
    )
    local_only_kinds: list[Kind] = Field(
        default_factory=list, description="Request kinds that never leave the device."
    )
    local_only_sensors: list[str] = Field(
        default_factory=list,
        description="Sensor name patterns (fnmatch, e.g. `camera/*`) that never leave the device.",
    )
    local_only_topics: list[str] = Field(
        default_factory=list,
        description="MQTT topic filters (e.g. `slm/+/request/health`) whose requests never "
        "leave the device.",
    )
    redact_names: list[str] = Field(
        default_factory=list,
        description="Names (household members, places) redacted before anything leaves.",
    )
    shadow_rate: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Share of confident edge answers also sent to the cloud, for comparison "
        "only (calibration data); the app still gets only the edge answer.",
    )
    learning_shadow_rate: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Shadow rate of a skill whose head is still young: a skill answering with "
        "its own text's head (version 0) sends this share of its confident answers to the cloud, "
        "halved with each head version the relay pushes, never below `shadow_rate`. The cloud "
        "only learns a skill's confident errors from these samples; 0 turns it off.",
    )

    @field_validator("thresholds")
    @classmethod
    def _in_unit_range(cls, value: dict[Task, float]) -> dict[Task, float]:
        for task, threshold in value.items():
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(f"threshold for {task.value} must be within [0, 1]")
        return value


class CloudSettings(_Section):
    enabled: bool = Field(default=True, description="Escalate to the cloud relay at all.")
    timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="How long an app waits for the cloud when its request has no deadline.",
    )
    margin_ms: int = Field(
        default=50,
        ge=0,
        description="Fallback is sent this long before the deadline, so it arrives in time.",
    )
    max_escalations_per_day: int = Field(
        default=0, ge=0, description="The device's daily cloud budget; 0 = unlimited."
    )


class OutboxSettings(_Section):
    path: Path | None = Field(
        default=None,
        description="SQLite file; default $STATE_DIRECTORY/outbox.db under systemd, else "
        "$XDG_STATE_HOME/edge-slm/outbox-<device_id>.db.",
    )
    max_rows: int = Field(default=10_000, ge=1, description="Most escalations kept.")
    max_bytes: int = Field(default=50 * 1024 * 1024, ge=1024, description="Most bytes kept.")
    ttl_s: float = Field(
        default=3600.0,
        gt=0,
        description="How long an escalation stays deliverable when the app wants corrections "
        "(else it expires with the request's deadline).",
    )
    sweep_interval_s: float = Field(
        default=1.0, gt=0, description="How often expired escalations are swept."
    )
    republish_s: float = Field(
        default=30.0,
        gt=0,
        description="An escalation without a cloud reply is published again after this long "
        "(the relay is idempotent, so copies are harmless).",
    )


class TelemetrySettings(_Section):
    interval_s: float = Field(
        default=60.0, gt=0, description="How often telemetry is published on .../telemetry."
    )
    window: int = Field(
        default=1000, ge=10, description="Recent replies behind the latency percentiles."
    )
    cloud_price_in_per_mtok: float = Field(
        default=0.15,
        ge=0,
        description="USD per 1M prompt tokens in the cloud, to price the cost avoided by "
        "edge answers (default: a small hosted model's list price).",
    )
    cloud_price_out_per_mtok: float = Field(
        default=0.60, ge=0, description="USD per 1M completion tokens in the cloud."
    )


class OtaSettings(_Section):
    enabled: bool = Field(
        default=True, description="Accept desired-model messages (over-the-air model updates)."
    )
    work_dir: Path | None = Field(
        default=None,
        description="Scratch folder for downloads and unpacking; default <state dir>/ota.",
    )
    state_path: Path | None = Field(
        default=None,
        description="Where the installed over-the-air choice is kept, so a restart runs the "
        "same model; default <state dir>/model-<device_id>.json.",
    )
    max_archive_bytes: int = Field(
        default=8 * 1024**3, ge=1024, description="Largest archive the agent downloads."
    )
    max_unpacked_bytes: int = Field(
        default=16 * 1024**3, ge=1024, description="Largest total size of the unpacked files."
    )
    http_timeout_s: float = Field(
        default=30.0, gt=0, description="Connect/read timeout of the archive download."
    )
    retries: int = Field(
        default=5, ge=0, description="Download retries (resumed with HTTP Range) on network errors."
    )
    swap_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="How long the swap may wait for the request in progress to finish.",
    )


class AgentSettings(DaemonSettings):
    """Everything the edge agent daemon reads at start-up."""

    model_config = SettingsConfigDict(env_prefix="EDGE_AGENT_")

    device_id: str = Field(
        description="This device's id; one topic segment (no / + # $).",
        min_length=1,
        max_length=64,
    )
    topic_prefix: TopicPrefix = "slm"
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="Broker connection.")
    model: ModelSettings = Field(default_factory=ModelSettings, description="The on-device SLM.")
    limits: LimitSettings = Field(default_factory=LimitSettings, description="Input limits.")
    policy: PolicySettings = Field(
        default_factory=PolicySettings, description="When to escalate, what stays local."
    )
    cloud: CloudSettings = Field(default_factory=CloudSettings, description="Cloud fallback.")
    outbox: OutboxSettings = Field(
        default_factory=OutboxSettings, description="Durable escalation outbox."
    )
    telemetry: TelemetrySettings = Field(
        default_factory=TelemetrySettings, description="Periodic telemetry and cost avoided."
    )
    metrics: MetricsSettings = Field(
        default_factory=MetricsSettings, description="Optional Prometheus endpoint."
    )
    skills: dict[SkillName, SkillSpec] = Field(
        default_factory=dict,
        description="Classify skills by name, `[skills.<name>]` (see README, Skills); a "
        "name here replaces the built-in skill of that name.",
    )
    builtin_skills: bool = Field(
        default=True, description="Offer the built-in skills (`home_intents`, `sensor_state`)."
    )
    tool_sets: dict[ToolSetName, ToolSetSpec] = Field(
        default_factory=dict,
        description="`act` tool sets by name, `[tool_sets.<name>]` (see README, Actions and "
        "extraction); a name here replaces the built-in set of that name, and a set pushed "
        "in the relay's DeviceConfig replaces this one.",
    )
    ota: OtaSettings = Field(default_factory=OtaSettings, description="Over-the-air model updates.")
    log_level: LogLevel = "INFO"
    log_format: LogFormatSetting = "auto"

    @model_validator(mode="after")
    def _valid_topics(self) -> AgentSettings:
        DeviceTopics(self.topic_prefix, self.device_id)
        return self

    @property
    def topics(self) -> DeviceTopics:
        return DeviceTopics(self.topic_prefix, self.device_id)

    @property
    def outbox_path(self) -> Path:
        return self.outbox.path or _state_dir() / f"outbox-{self.device_id}.db"

    @property
    def ota_work_dir(self) -> Path:
        return self.ota.work_dir or _state_dir() / "ota"

    @property
    def ota_state_path(self) -> Path:
        return self.ota.state_path or _state_dir() / f"model-{self.device_id}.json"

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"edge-agent-{self.device_id}"


def load_settings(config_file: Path | None = None, **overrides: Any) -> AgentSettings:
    """Settings from flags, env, TOML and credentials (see :mod:`edge_slm.settings`)."""
    return AgentSettings.load(config_file, **overrides)
