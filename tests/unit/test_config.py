import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.cli import main
from agent.config import AgentSettings, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("EDGE_AGENT_"):
            monkeypatch.delenv(key)


def test_defaults_need_only_a_device_id() -> None:
    s = load_settings(device_id="kitchen")
    assert s.topics.request == "slm/kitchen/request"
    assert s.client_id == "edge-agent-kitchen"
    assert s.mqtt.url.port == 1883
    assert s.limits.max_payload_bytes == 16 * 1024
    assert s.model.name == "smollm2-135m-instruct"


def test_device_id_is_required() -> None:
    with pytest.raises(ValidationError, match="device_id"):
        load_settings()


def test_precedence_flags_over_env_over_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text(
        'device_id = "from-toml"\ntopic_prefix = "home"\n'
        '[mqtt]\nbroker = "mqtt://toml:1883"\nkeepalive_s = 45\n'
        "[limits]\nqueue_size = 7\n"
    )
    monkeypatch.setenv("EDGE_AGENT_MQTT__BROKER", "mqtt://env:1884")
    monkeypatch.setenv("EDGE_AGENT_LIMITS__QUEUE_SIZE", "9")
    s = load_settings(toml, **{"mqtt.broker": "mqtts://flag:8884"})
    assert s.device_id == "from-toml"
    assert s.topic_prefix == "home"
    assert s.mqtt.broker == "mqtts://flag:8884"  # flag beats env
    assert s.mqtt.keepalive_s == 45  # TOML survives a partial override of [mqtt]
    assert s.limits.queue_size == 9  # env beats TOML
    assert isinstance(s, AgentSettings)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"device_id": "a/b"}, "device id"),
        ({"device_id": "ok", "mqtt.broker": "http://x"}, "mqtt://"),
        ({"device_id": "ok", "mqtt.ca_file": "/nonexistent/ca.pem"}, "does not exist"),
        ({"device_id": "ok", "model.provider": "tpu"}, "provider"),
        ({"device_id": "ok", "limits.default_max_tokens": 999}, "default_max_tokens"),
    ],
)
def test_invalid_settings_are_rejected(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        load_settings(**overrides)


def test_unknown_keys_in_toml_are_errors(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text('device_id = "x"\n[mqtt]\nbrokr = "mqtt://typo"\n')
    with pytest.raises(ValidationError, match="brokr"):
        load_settings(toml)


def test_every_field_is_described() -> None:
    from agent.config import LimitSettings, ModelSettings, MqttSettings

    for model in (AgentSettings, MqttSettings, ModelSettings, LimitSettings):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


def test_check_config_prints_valid_config_and_exits_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "genai_config.json").write_text("{}")
    toml = tmp_path / "agent.toml"
    toml.write_text('device_id = "d1"\n[mqtt]\npassword = "hunter2"\n')
    code = main(["run", "--config", str(toml), "--model-path", str(model), "--check-config"])
    out, err = capsys.readouterr()
    assert code == 0
    shown = json.loads(out)
    assert shown["device_id"] == "d1"
    assert "hunter2" not in out
    assert "configuration OK" in err


def test_check_config_reports_readable_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text('device_id = "d/1"\n[limits]\nqueue_size = 0\n')
    code = main(["run", "--config", str(toml), "--check-config"])
    err = capsys.readouterr().err
    assert code == 2
    assert "invalid configuration" in err
    assert "limits.queue_size" in err


def test_check_config_reports_missing_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGE_AGENT_MODEL__CACHE_DIR", str(tmp_path / "empty-cache"))
    code = main(["run", "--device-id", "d1", "--check-config"])
    err = capsys.readouterr().err
    assert code == 2
    assert "models build smollm2-135m-instruct" in err


def test_missing_config_file_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--config", "/nonexistent.toml", "--check-config"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_secrets_come_from_systemd_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mqtt__password").write_text("s3cret")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    s = load_settings(device_id="d1")
    assert s.mqtt.password is not None
    assert s.mqtt.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)


def test_the_readme_example_config_is_valid(tmp_path: Path) -> None:
    """The README's agent.toml must load as written (docs cannot drift from code)."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    start = readme.index("# /etc/edge-slm/agent.toml")
    block = readme[start : readme.index("```", start)]
    toml = tmp_path / "agent.toml"
    toml.write_text(block)
    s = load_settings(toml)
    assert s.device_id == "kitchen"
    assert s.policy.redact_names == ["Anna", "Schmidt"]
    assert s.telemetry.interval_s == 60.0
    assert s.metrics.port == 0
    assert s.log_level == "INFO"
