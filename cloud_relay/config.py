"""Relay configuration: pydantic-settings, one nested model per concern.

Precedence, highest first: command-line flags, ``CLOUD_RELAY_*`` environment
variables (nested with ``__``, e.g. ``CLOUD_RELAY_LLM__URL``), the TOML file
given with ``--config``, secrets files in ``$CREDENTIALS_DIRECTORY`` (systemd
``LoadCredential=``: one file per secret, named by its dotted path with ``__``,
e.g. ``llm__api_key`` or ``mqtt__password``), then the defaults below.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    SettingsConfigDict,
)

from edge_slm.settings import (
    DaemonSettings,
    LogFormatSetting,
    LogLevel,
    MetricsSettings,
    MqttSettings,
    TopicPrefix,
    is_loopback,
    user_state_dir,
)
from edge_slm.settings import Section as _Section
from edge_slm.topics import (
    escalation_subscription,
    shared,
    status_wildcard,
    telemetry_wildcard,
)


def default_client_id() -> str:
    return f"cloud-relay-{socket.gethostname()}-{os.getpid()}"


def default_db_url() -> str:
    return f"sqlite:///{user_state_dir() / 'relay.db'}"


class RelayMqttSettings(MqttSettings):
    client_id: str = Field(
        default_factory=default_client_id,
        description="MQTT client id; unique per process (several relays share the load). "
        "Default: `cloud-relay-<hostname>-<pid>`.",
    )
    session_expiry_s: int = Field(
        default=0,
        ge=0,
        description="Session Expiry Interval. 0 by default: the default client id changes "
        "with every process, so a persistent session would never be resumed, and a dead "
        "member's session would keep receiving its share of the group's escalations "
        "(MQTT 5 §4.8.2) until it expired. Raise it only with a stable client_id.",
    )


class LlmSettings(_Section):
    url: str = Field(
        default="http://127.0.0.1:8080/v1",
        description="OpenAI-compatible base URL (the part before `/chat/completions`).",
    )
    model: str | None = Field(
        default=None, description="Model name sent to the LLM; required by `run`."
    )
    api_key: SecretStr | None = Field(
        default=None, description="Bearer token for the LLM API (prefer a credential)."
    )
    connect_timeout_s: float = Field(default=5.0, gt=0, description="TCP/TLS connect timeout.")
    read_timeout_s: float = Field(
        default=30.0, gt=0, description="Longest silence while reading one response."
    )
    total_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="Longest time for one escalation's LLM work, retries included; the "
        "escalation's own deadline cuts it shorter.",
    )
    max_attempts: int = Field(
        default=3, ge=1, le=10, description="HTTP attempts per LLM call (1 = no retry)."
    )
    backoff_base_s: float = Field(
        default=0.5, gt=0, description="First retry delay; doubles per attempt, jittered."
    )
    backoff_max_s: float = Field(default=8.0, gt=0, description="Longest retry delay.")
    temperature: float = Field(default=0.0, ge=0, le=2, description="Sampling temperature.")
    request_logprobs: bool = Field(
        default=False,
        description="Ask for token logprobs to derive a confidence when the server sends "
        "no `x_confidence` (some servers reject the parameter).",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("llm.url must start with http:// or https://")
        return value.rstrip("/")


class BreakerSettings(_Section):
    failure_threshold: int = Field(
        default=5, ge=1, description="Consecutive LLM failures that open the circuit."
    )
    open_s: float = Field(
        default=30.0, gt=0, description="How long the circuit stays open before one probe."
    )


class LimitSettings(_Section):
    max_concurrency: int = Field(
        default=8, ge=1, description="LLM calls in flight at once, across all devices."
    )
    queue_size: int = Field(
        default=256,
        ge=1,
        description="Escalations waiting for a worker; beyond it they are shed with `busy`.",
    )
    rate_per_minute: int = Field(
        default=30,
        ge=0,
        description="Escalations per device per minute that may reach the LLM (0 = unlimited); "
        "counted in the shared store, so it holds across relay processes.",
    )
    daily_tokens: int = Field(
        default=200_000,
        ge=0,
        description="LLM tokens (in + out) per device per UTC day (0 = unlimited).",
    )
    drain_timeout_s: float = Field(
        default=30.0, ge=0, description="On SIGTERM, how long in-flight escalations may finish."
    )
    clock_skew_s: float = Field(
        default=1.0,
        ge=0,
        description="Tolerance for device/relay clock skew when judging `created_at + "
        "deadline_ms` expired.",
    )
    claim_ttl_s: float = Field(
        default=90.0,
        gt=0,
        description="An in-flight row older than this (its relay died mid-call) may be taken "
        "over by a replay; must exceed `llm.total_timeout_s`, so a live relay's slow call is "
        "never duplicated.",
    )


class FleetSettings(_Section):
    """The fleet view: device telemetry and status, kept in the shared store."""

    enabled: bool = Field(
        default=True,
        description="Subscribe to every device's telemetry and status and keep the fleet view "
        "(`cloud-relay devices`, cost avoided in `stats`).",
    )
    shared_telemetry: bool = Field(
        default=True,
        description="Take telemetry through the share group (`$share/<share_group>/...`): "
        "the store is shared, so one relay writing each sample is enough; false makes every "
        "relay write every sample (harmless, deduplicated on (device, ts), N times the load). "
        "Status is always a plain subscription: the broker sends retained messages to plain "
        "subscriptions only (MQTT 5 §4.8.2), and each relay needs the fleet's state at start.",
    )
    stale_after_s: float = Field(
        default=300.0,
        gt=0,
        description="`devices` shows an `online` device as `stale` when nothing was heard "
        "from it for this long (a dead bridge publishes no will to the cloud broker); set it "
        "above the agents' `telemetry.interval_s`.",
    )
    queue_size: int = Field(
        default=1000,
        ge=1,
        description="Telemetry/status messages waiting for the fleet writer; beyond it they "
        "are dropped (counters are cumulative, so the next sample makes up for it).",
    )
    max_payload_bytes: int = Field(
        default=65536, ge=1024, description="Larger telemetry or status payloads are dropped."
    )


class DashboardSettings(_Section):
    """``cloud-relay dashboard``: the read-only web page for fleet operators."""

    host: str = Field(
        default="127.0.0.1",
        description="Address to bind. Loopback by default; any other address needs `token` "
        "or `username`/`password` (or `allow_unauthenticated`), and TLS from a proxy in front.",
    )
    port: int = Field(default=8787, ge=1, le=65535, description="TCP port to listen on.")
    token: SecretStr | None = Field(
        default=None,
        description="Bearer token for the JSON API (`Authorization: Bearer <token>`); the page "
        "asks for it once, or takes it from the URL fragment `#token=...`. Prefer a systemd "
        "credential named `dashboard__token`.",
    )
    username: str | None = Field(
        default=None, description="HTTP basic auth user (the browser asks); with `password`."
    )
    password: SecretStr | None = Field(
        default=None,
        description="HTTP basic auth password (prefer a credential: `dashboard__password`).",
    )
    allow_unauthenticated: bool = Field(
        default=False,
        description="Serve without any auth on a non-loopback host. Only behind a proxy that "
        "authenticates; loopback never needs it.",
    )
    refresh_s: float = Field(
        default=5.0,
        ge=1,
        le=3600,
        description="How often the page polls the API for new rows and samples (live updates).",
    )
    max_page_size: int = Field(
        default=200, ge=10, le=5000, description="Most log rows one API page may return."
    )

    @model_validator(mode="after")
    def _auth_off_loopback(self) -> DashboardSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("dashboard.username and dashboard.password must be given together")
        if not (self.has_auth or self.allow_unauthenticated or is_loopback(self.host)):
            raise ValueError(
                f"dashboard.host {self.host!r} is not loopback: set dashboard.token or "
                "dashboard.username/password (or dashboard.allow_unauthenticated = true)"
            )
        return self

    @property
    def has_auth(self) -> bool:
        return self.token is not None or self.username is not None


class LearnSettings(_Section):
    """The learn loop: fit each skill's classify head on the cloud's labels and push it."""

    interval_s: float = Field(
        default=3600.0,
        ge=0,
        description="How often `cloud-relay run` learns, on a thread of its own (the first "
        "run one interval after start); 0: never, only `cloud-relay learn` does. In a group "
        "of relays sharing a store each may run it: a head version is claimed in the store "
        "before it is pushed, so a version is pushed once.",
    )
    skills_dir: Path | None = Field(
        default=None,
        description="Folder of skill definitions, `<name>.toml` in the format of the built-in "
        "ones, beside the built-in skills (a file wins over a built-in of its name). They "
        "must be the skills the devices run: a head is fitted for the skill's labels.",
    )
    skills: list[str] | None = Field(
        default=None, description="Learn only these skills; default: every known skill."
    )
    encoders: list[str] = Field(
        default=["minilm-l6-v2-int8"],
        min_length=1,
        description="The sentence encoders the heads are fitted on, one head per skill "
        "and encoder: every `model.embedder` the fleet's devices run (a device takes only "
        'its encoder\'s heads). Each must be in `model_cache`. (`encoder = "<name>"`, '
        "one encoder, is read as a list of it.)",
    )
    model_cache: Path | None = Field(
        default=None,
        description="Model cache holding the encoder (`edge-agent models build <encoder> "
        "--install-source` installs it); default: the per-user cache, as `edge-agent models`.",
    )
    holdout: float = Field(
        default=0.25,
        gt=0,
        lt=1,
        description="Share of the cloud-labelled cases kept out of fitting, chosen by a hash "
        "of (device, request id) so a case stays in it run after run; the new head is pushed "
        "only if it is at least as accurate on them as the head in use.",
    )
    min_cases: int = Field(
        default=20,
        ge=2,
        description="A skill with fewer cloud-labelled cases is not learned yet.",
    )
    max_cases: int = Field(
        default=5000, ge=2, description="The newest this many cases per skill are used."
    )
    label_sets: int = Field(
        default=50,
        ge=0,
        description="Requests that name no skill and list their own `labels` are learned "
        "too, one head per label set (whatever the order of its labels) and encoder, from "
        "their cloud-labelled cases and the label names: at most this many label sets per "
        "run, those with the most cases first, each once it has `min_cases`. 0: off.",
    )
    max_label_cases: int = Field(
        default=20000,
        ge=2,
        description="The newest this many cloud-labelled cases of requests with their own "
        "labels are read per run, over all label sets.",
    )
    paraphrases: int = Field(
        default=20,
        ge=0,
        le=200,
        description="Requests per label the cloud LLM (`llm`) is asked to write for each "
        "skill, once per version of the skill's text, and kept in the store: every head is "
        "fitted on them beside the skill's texts, and a skill's first head is pushed from "
        "them before any case escalates, if with them it recognizes at least as many of the "
        "skill's exemplars, each left out in turn. Only the skill's own text is sent. 0: off.",
    )
    paraphrase_temperature: float = Field(
        default=0.0,
        ge=0,
        le=2,
        description="Sampling temperature the paraphrases are asked at; above 0, each call "
        "carries a seed of its own derived from the skill's text, for servers that honour "
        "one. 0 (greedy) wrote the better heads with the offline 1.5B teacher (BENCHMARKS.md); "
        "a stronger hosted model may write more varied ones sampled. Independent of "
        "`llm.temperature`, which escalations are answered at.",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_encoder(cls, data: Any) -> Any:
        # `learn.encoder` (one name) before heads were kept per encoder.
        if isinstance(data, dict) and "encoder" in data and "encoders" not in data:
            data = {**data, "encoders": [data["encoder"]]}
            del data["encoder"]
        return data

    @field_validator("encoders")
    @classmethod
    def _plain_and_distinct(cls, names: list[str]) -> list[str]:
        for name in names:
            if not name or set(name) & set("/+#$\x00"):
                raise ValueError(f"encoder {name!r} is not a plain name (it names a topic level)")
        if len(set(names)) != len(names):
            raise ValueError(f"encoders lists one twice: {names}")
        return names


class ModelPrice(_Section):
    input_per_mtok: float = Field(ge=0, description="USD per 1M input (prompt) tokens.")
    output_per_mtok: float = Field(ge=0, description="USD per 1M output (completion) tokens.")


def default_prices() -> dict[str, ModelPrice]:
    # List prices in USD per 1M tokens as published by the vendors in 2025; estimates
    # only, check your contract. `*` covers self-hosted and unknown models.
    table = {
        "gpt-4o-mini*": (0.15, 0.60),
        "gpt-4o*": (2.50, 10.00),
        "gpt-4.1-mini*": (0.40, 1.60),
        "gpt-4.1*": (2.00, 8.00),
        "claude-3-5-haiku*": (0.80, 4.00),
        "claude-sonnet-4*": (3.00, 15.00),
        "*": (0.50, 1.50),
    }
    return {k: ModelPrice(input_per_mtok=i, output_per_mtok=o) for k, (i, o) in table.items()}


class RelaySettings(DaemonSettings):
    """Everything the cloud relay reads at start-up."""

    model_config = SettingsConfigDict(env_prefix="CLOUD_RELAY_")

    topic_prefix: TopicPrefix = "slm"
    share_group: str = Field(
        default="relays",
        description="MQTT 5 shared-subscription group; relays in one group split the load.",
    )
    mqtt: RelayMqttSettings = Field(
        default_factory=RelayMqttSettings, description="Broker connection."
    )
    llm: LlmSettings = Field(default_factory=LlmSettings, description="The large LLM.")
    breaker: BreakerSettings = Field(
        default_factory=BreakerSettings, description="Circuit breaker around the LLM."
    )
    limits: LimitSettings = Field(
        default_factory=LimitSettings, description="Concurrency, rate and budget limits."
    )
    prices: dict[str, ModelPrice] = Field(
        default_factory=default_prices,
        description="USD per 1M tokens by model; keys are exact names or glob patterns "
        "(`gpt-4o*`), the most specific match wins, `*` is the fallback.",
    )
    fleet: FleetSettings = Field(
        default_factory=FleetSettings, description="Fleet view from device telemetry."
    )
    metrics: MetricsSettings = Field(
        default_factory=MetricsSettings, description="Prometheus /metrics endpoint."
    )
    dashboard: DashboardSettings = Field(
        default_factory=DashboardSettings, description="`cloud-relay dashboard` web page."
    )
    learn: LearnSettings = Field(
        default_factory=LearnSettings,
        description="Skill heads learned from the cloud's labels and pushed to the devices.",
    )
    store_prompts: bool = Field(
        default=True,
        description="Keep each escalation's text, labels, sensor readings, tools (act) and "
        "schema (extract) in the log, as received (the device redacted them), for "
        "`cloud-relay export`; false stores none.",
    )
    agreement_threshold: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Free-text edge/cloud answers agree when their word-set Jaccard overlap "
        "reaches this (or their normalized texts are equal).",
    )
    db: str = Field(
        default_factory=default_db_url,
        description="Relay log store: sqlite:///path (default under $XDG_STATE_HOME) or "
        "postgresql://... for a fleet of relays.",
    )
    log_level: LogLevel = "INFO"
    log_format: LogFormatSetting = "auto"

    @field_validator("db")
    @classmethod
    def _known_db(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("db must be sqlite:///path or postgresql://...")
        return value

    @model_validator(mode="after")
    def _valid_topics(self) -> RelaySettings:
        escalation_subscription(self.topic_prefix, self.share_group)
        return self

    @model_validator(mode="after")
    def _claims_outlive_calls(self) -> RelaySettings:
        if self.limits.claim_ttl_s <= self.llm.total_timeout_s:
            raise ValueError("limits.claim_ttl_s must exceed llm.total_timeout_s")
        return self

    @property
    def subscription(self) -> str:
        return escalation_subscription(self.topic_prefix, self.share_group)

    @property
    def telemetry_subscription(self) -> str:
        topic = telemetry_wildcard(self.topic_prefix)
        return shared(self.share_group, topic) if self.fleet.shared_telemetry else topic

    @property
    def status_subscription(self) -> str:
        return status_wildcard(self.topic_prefix)

    @property
    def subscriptions(self) -> list[tuple[str, int]]:
        """Every filter the relay subscribes to, QoS 1."""
        filters = [self.subscription]
        if self.fleet.enabled:
            filters += [self.telemetry_subscription, self.status_subscription]
        return [(f, 1) for f in filters]


def load_settings(config_file: Path | None = None, **overrides: Any) -> RelaySettings:
    """Settings from flags, env, TOML and credentials (see :mod:`edge_slm.settings`)."""
    return RelaySettings.load(config_file, **overrides)
