"""Settings pieces shared by both daemons: sources, loading, the broker connection.

Precedence, highest first: command-line flags, environment variables (nested
with ``__``), the TOML file given with ``--config``, secrets files in
``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``: one file per secret,
named by its dotted path with ``__``, e.g. ``mqtt__password``), then defaults.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NestedSecretsSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from edge_slm.logs import LogFormat
from edge_slm.mqtt import BrokerUrl, Inbound, MqttConnection, TlsFiles, Will


def describe_errors(exc: ValidationError) -> str:
    """Readable `--check-config` output: one line per error, dotted field paths."""
    lines = [f"invalid configuration ({exc.error_count()} error(s)):"]
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


class Section(BaseModel):
    """A nested settings section: unknown keys are errors (typos must not pass)."""

    model_config = ConfigDict(extra="forbid")


class DaemonSettings(BaseSettings):
    """Base of each daemon's settings; subclasses set ``env_prefix``."""

    model_config = SettingsConfigDict(env_nested_delimiter="__", extra="forbid")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls),
        ]
        # Read at load time, not import time: systemd sets it per service start.
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
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

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Self:
        """Build settings from flags (``overrides``), env, and an optional TOML file.

        ``overrides`` use dotted section names for nested fields, e.g.
        ``{"mqtt.broker": "mqtt://..."}``; ``None`` values are ignored.
        """
        if config_file is not None and not config_file.is_file():
            raise FileNotFoundError(f"config file {str(config_file)!r} does not exist")
        nested: dict[str, Any] = {}
        for key, value in overrides.items():
            if value is None:
                continue
            section, _, name = key.partition(".")
            if name:
                nested.setdefault(section, {})[name] = value
            else:
                nested[key] = value

        class _FromFile(cls):  # type: ignore[valid-type,misc]
            model_config = SettingsConfigDict(toml_file=config_file)

        loaded = _FromFile(**nested)
        assert isinstance(loaded, cls)  # noqa: S101 - for the type checker
        return loaded


# Top-level fields both daemons have, with one meaning: each daemon sets the default.
TopicPrefix = Annotated[str, Field(description="First segment of every topic.")]
LogLevel = Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], Field(description="Log level.")]
LogFormatSetting = Annotated[
    LogFormat, Field(description="`auto`: JSON unless stderr is a terminal.")
]


class MetricsSettings(Section):
    port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Serve Prometheus metrics on http://host:port/metrics; 0 = off (default).",
    )
    host: str = Field(
        default="127.0.0.1",
        description="Address to bind. The endpoint has no authentication: anything other "
        "than loopback is logged as a warning; put a proxy with TLS and auth in front.",
    )


class MqttSettings(Section):
    broker: str = Field(
        default="mqtt://127.0.0.1:1883",
        description="Broker URL: mqtt://host:port, or mqtts://host:port for TLS.",
    )
    client_id: str | None = Field(
        default=None,
        description="MQTT client id; must be stable across restarts for a persistent "
        "session to be resumed. Each daemon documents its default.",
    )
    username: str | None = Field(default=None, description="Username for the broker, if any.")
    password: SecretStr | None = Field(default=None, description="Password (prefer a credential).")
    ca_file: Path | None = Field(default=None, description="CA bundle that signs the broker.")
    cert_file: Path | None = Field(default=None, description="Client certificate (mTLS).")
    key_file: Path | None = Field(default=None, description="Client private key (mTLS).")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive in seconds.")
    session_expiry_s: int = Field(
        default=3600,
        ge=0,
        description="How long the broker keeps our session (subscriptions and queued QoS 1 "
        "messages) while we are disconnected.",
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

    def tls_files(self) -> TlsFiles | None:
        if not (self.ca_file or self.cert_file):
            return None
        return TlsFiles(
            ca_file=str(self.ca_file) if self.ca_file else None,
            cert_file=str(self.cert_file) if self.cert_file else None,
            key_file=str(self.key_file) if self.key_file else None,
        )

    def connection(
        self,
        *,
        client_id: str,
        on_connect: Callable[[], None],
        on_message: Callable[[Inbound], None],
        will: Will | None = None,
        manual_ack: bool = False,
    ) -> MqttConnection:
        """The one way a daemon builds its broker connection from settings."""
        return MqttConnection(
            url=self.url,
            client_id=client_id,
            on_connect=on_connect,
            on_message=on_message,
            username=self.username,
            password=self.password.get_secret_value() if self.password else None,
            tls=self.tls_files(),
            will=will,
            keepalive_s=self.keepalive_s,
            session_expiry_s=self.session_expiry_s,
            reconnect_min_s=self.reconnect_min_s,
            reconnect_max_s=self.reconnect_max_s,
            manual_ack=manual_ack,
        )


def user_state_dir() -> Path:
    """``$XDG_STATE_HOME/edge-slm`` (default ``~/.local/state/edge-slm``): where a daemon
    started by hand keeps its state, outside systemd's ``StateDirectory=``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "edge-slm"


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1): what may listen without auth."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere
