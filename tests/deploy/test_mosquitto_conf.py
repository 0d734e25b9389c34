"""deploy/mosquitto/cloud.conf: the security settings that tests/security relies on stay put.

tests/security/test_authz.py runs this file against a real mosquitto; these static
checks name the lines whose loss would quietly open the broker (an ``acl_file``
back in place of the plugin would grant every SUBSCRIBE again,
eclipse/mosquitto#2042).
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLOUD_CONF = REPO / "deploy" / "mosquitto" / "cloud.conf"


def _settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for raw in CLOUD_CONF.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out.setdefault(key, []).append(value.strip())
    return out


def test_authorization_is_the_dynamic_security_plugin() -> None:
    conf = _settings()
    assert "acl_file" not in conf
    assert "password_file" not in conf
    assert len(conf["plugin"]) == 1
    assert conf["plugin"][0].endswith("/mosquitto_dynamic_security.so")
    assert conf["plugin_opt_config_file"] == ["/etc/mosquitto/dynamic-security.json"]
    # One global set of security options: a listener cannot come without the plugin.
    assert conf["per_listener_settings"] == ["false"]
    assert conf["listener"] == ["8883"]


def test_every_client_authenticates_with_a_fleet_certificate() -> None:
    conf = _settings()
    assert conf["require_certificate"] == ["true"]
    assert conf["use_identity_as_username"] == ["true"]
    assert conf["allow_anonymous"] == ["false"]
    assert conf["crlfile"] == ["/etc/mosquitto/certs/crl.pem"]
    assert conf["tls_version"] == ["tlsv1.2"]
