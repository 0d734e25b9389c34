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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from edge_slm.mqtt import BrokerUrl
from edge_slm.topics import escalation_subscription


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def default_client_id() -> str:
    return f"cloud-relay-{socket.gethostname()}-{os.getpid()}"


def default_db_url() -> str:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return f"sqlite:///{Path(state) / 'edge-slm' / 'relay.db'}"


class MqttSettings(_Section):
    broker: str = Field(
        default="mqtt://127.0.0.1:1883",
        description="Broker URL: mqtt://host:port, or mqtts://host:port for TLS.",
    )
    client_id: str = Field(
        default_factory=default_client_id,
        description="MQTT client id; unique per process (several relays share the load). "
        "Default: `cloud-relay-<hostname>-<pid>`.",
    )
    username: str | None = Field(default=None, description="Username for the broker, if any.")
    password: SecretStr | None = Field(default=None, description="Password (prefer a credential).")
    ca_file: Path | None = Field(default=None, description="CA bundle that signs the broker.")
    cert_file: Path | None = Field(default=None, description="Client certificate (mTLS).")
    key_file: Path | None = Field(default=None, description="Client private key (mTLS).")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive in seconds.")
    session_expiry_s: int = Field(
        default=0,
        ge=0,
        description="Session Expiry Interval. 0 by default: the default client id changes "
        "with every process, so a persistent session would never be resumed, and a dead "
        "member's session would keep receiving its share of the group's escalations "
        "(MQTT 5 §4.8.2) until it expired. Raise it only with a stable client_id.",
    )
    reconnect_min_s: float = Field(default=0.5, gt=0, description="First reconnect delay.")
    reconnect_max_s: float = Field(default=30.0, gt=0, description="Longest reconnect delay.")
    connect_timeout_s: float = Field(
        default=30.0, gt=0, description="How long start-up waits for the first connection."
    )

    @field_validator("broker")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        BrokerUrl.parse(value)
        return value

    @model_validator(mode="after")
    def _tls_files_exist(self) -> MqttSettings:
        for name in ("ca_file", "cert_file", "key_file"):
            path: Path | None = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {str(path)!r} does not exist")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self

    @property
    def url(self) -> BrokerUrl:
        return BrokerUrl.parse(self.broker)


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


class RelaySettings(BaseSettings):
    """Everything the cloud relay reads at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="CLOUD_RELAY_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    topic_prefix: str = Field(default="slm", description="First segment of every topic.")
    share_group: str = Field(
        default="relays",
        description="MQTT 5 shared-subscription group; relays in one group split the load.",
    )
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="Broker connection.")
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
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="`auto`: JSON unless stderr is a terminal."
    )

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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Read at load time (not import time): systemd sets it per service start.
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls),
        ]
        if creds:
            sources.append(
                NestedSecretsSettingsSource(
                    file_secret_settings,
                    secrets_dir=creds,
                    secrets_prefix="",
                    secrets_nested_delimiter="__",
                    env_prefix="",
                )
            )
        return tuple(sources)


def load_settings(config_file: Path | None = None, **overrides: Any) -> RelaySettings:
    """Build settings from flags (``overrides``), env, and an optional TOML file.

    ``overrides`` use dotted section names for nested fields, e.g.
    ``{"llm.url": "http://..."}``; ``None`` values are ignored.
    """
    if config_file is not None and not config_file.is_file():
        raise FileNotFoundError(f"config file {str(config_file)!r} does not exist")
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        section, _, field = key.partition(".")
        if field:
            nested.setdefault(section, {})[field] = value
        else:
            nested[key] = value

    class _FromFile(RelaySettings):
        model_config = SettingsConfigDict(toml_file=config_file)

    return _FromFile(**nested)
