"""Settings precedence, validation and `run --check-config`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from cloud_relay.cli import main
from cloud_relay.config import RelaySettings, load_settings


def test_defaults() -> None:
    s = load_settings()
    assert s.subscription == "$share/relays/slm/+/escalation"
    assert s.mqtt.client_id.startswith("cloud-relay-")
    assert s.mqtt.client_id.endswith(f"-{os.getpid()}")
    assert s.db.startswith("sqlite:///")
    assert s.db.endswith("edge-slm/relay.db")
    assert s.llm.model is None
    assert "*" in s.prices


def test_every_field_is_described() -> None:
    def walk(model: type) -> None:
        for name, field in model.model_fields.items():  # type: ignore[attr-defined]
            assert field.description, f"{model.__name__}.{name} has no description"
            ann = field.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                walk(ann)

    walk(RelaySettings)


def test_precedence_flags_over_env_over_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "relay.toml"
    toml.write_text(
        'topic_prefix = "home"\n[llm]\nurl = "http://toml:1/v1"\nmodel = "toml-model"\n'
        'max_attempts = 5\n[prices."my-model"]\ninput_per_mtok = 1.0\noutput_per_mtok = 2.0\n'
    )
    monkeypatch.setenv("CLOUD_RELAY_LLM__MODEL", "env-model")
    monkeypatch.setenv("CLOUD_RELAY_LIMITS__RATE_PER_MINUTE", "7")
    s = load_settings(toml, **{"llm.url": "http://flag:2/v1"})
    assert s.llm.url == "http://flag:2/v1"
    assert s.llm.model == "env-model"
    assert s.llm.max_attempts == 5
    assert s.limits.rate_per_minute == 7
    assert s.topic_prefix == "home"
    assert s.prices["my-model"].output_per_mtok == 2.0


def test_secrets_from_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "llm__api_key").write_text("sk-secret")
    (tmp_path / "mqtt__password").write_text("hunter2")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    s = load_settings()
    assert s.llm.api_key is not None
    assert s.llm.api_key.get_secret_value() == "sk-secret"
    assert s.mqtt.password is not None
    assert s.mqtt.password.get_secret_value() == "hunter2"
    monkeypatch.setenv("CLOUD_RELAY_LLM__API_KEY", "from-env")
    assert load_settings().llm.api_key.get_secret_value() == "from-env"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"db": "mysql://x"}, "db"),
        ({"share_group": "a/b"}, "group"),
        ({"llm.url": "ftp://x"}, "http"),
        ({"limits.max_concurrency": 0}, "max_concurrency"),
        ({"limits.claim_ttl_s": 30}, "claim_ttl_s"),
    ],
)
def test_invalid_values(override: dict[str, object], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        load_settings(**override)


def test_check_config_prints_and_hides_secrets(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUD_RELAY_LLM__API_KEY", "sk-hidden")
    code = main(["run", "--llm-model", "gpt-4o-mini", "--db", "sqlite:///x.db", "--check-config"])
    out = capsys.readouterr()
    assert code == 0
    shown = json.loads(out.out)
    assert shown["llm"]["model"] == "gpt-4o-mini"
    assert "sk-hidden" not in out.out
    assert "configuration OK" in out.err


def test_check_config_reports_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--llm-model", "m", "--broker", "http://nope", "--check-config"]) == 2
    assert "mqtt.broker" in capsys.readouterr().err
    assert main(["run", "--check-config"]) == 2
    assert "llm.model is required" in capsys.readouterr().err
