"""systemd/: the units pass ``systemd-analyze verify`` and stay within the exposure budget.

``systemd-analyze security --offline=yes`` scores a unit file without a running
systemd (0 = locked down, 10 = unprotected; a bare service scores 9.6). ``verify``
also checks that ExecStart= binaries exist, and ours live in /opt/edge-slm/venv
on a device; the tests verify a copy whose /opt/edge-slm/venv prefix is this
test run's own virtual environment, where the same console scripts are installed.
Nothing else in the copy changes. Drop-ins are placed in ``<unit>.d/`` beside
the copy, which is where both commands look for them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import LimitSettings as AgentLimits
from cloud_relay.config import LimitSettings as RelayLimits
from cloud_relay.config import load_settings as load_relay_settings

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
DROP_INS = UNITS / "drop-ins"
INSTALL_PREFIX = "/opt/edge-slm/venv"

#: systemd/README.md documents these budgets.
MAX_EXPOSURE = 2.0
MAX_EXPOSURE_WITH_DROP_IN = 2.0

SERVICES = ["edge-agent.service", "cloud-relay.service"]
AGENT_DROP_INS = sorted(p.name for p in DROP_INS.glob("edge-agent-*.conf"))

_ANALYZE = shutil.which("systemd-analyze")


def _systemd_version() -> int:
    if _ANALYZE is None:
        return 0
    out = subprocess.run([_ANALYZE, "--version"], capture_output=True, text=True, check=False)
    match = re.match(r"systemd (\d+)", out.stdout)
    return int(match.group(1)) if match else 0


needs_analyze = pytest.mark.skipif(
    _systemd_version() < 250,
    reason="needs systemd-analyze >= 250 (security --offline=yes); apt-get install systemd",
)


def _directives(unit: Path) -> dict[str, list[str]]:
    """``Key`` -> every value assigned to it, in order (comments skipped)."""
    found: dict[str, list[str]] = {}
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{unit.name}: not a directive: {raw!r}"
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def _stage(tmp_path: Path, service: str, drop_in: str | None = None) -> Path:
    """A copy of ``service`` with its ExecStart prefix pointing at this venv."""
    venv = Path(sys.prefix)
    binary = venv / "bin" / service.removesuffix(".service")
    if not binary.is_file():
        pytest.fail(f"{binary} is missing: install the package (pip install -e .)")
    text = (UNITS / service).read_text()
    assert INSTALL_PREFIX in text
    tmp_path.mkdir(parents=True, exist_ok=True)
    staged = tmp_path / service
    staged.write_text(text.replace(INSTALL_PREFIX, str(venv)))
    if drop_in is not None:
        conf_dir = tmp_path / f"{service}.d"
        conf_dir.mkdir()
        shutil.copy(DROP_INS / drop_in, conf_dir / drop_in)
    return staged


def _analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert _ANALYZE is not None
    return subprocess.run(
        [_ANALYZE, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"SYSTEMD_COLORS": "0", "LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"},
        check=False,
        timeout=60,
    )


def _exposure(unit: Path) -> float:
    result = _analyze("security", "--offline=yes", str(unit), cwd=unit.parent)
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, f"no exposure line in:\n{result.stdout}\n{result.stderr}"
    return float(match.group(1))


# -- systemd-analyze -------------------------------------------------------------


@needs_analyze
@pytest.mark.parametrize("service", SERVICES)
def test_exposure_within_budget(service: str, tmp_path: Path) -> None:
    exposure = _exposure(_stage(tmp_path, service))
    assert exposure <= MAX_EXPOSURE, f"{service} exposure {exposure} > {MAX_EXPOSURE}"


@needs_analyze
@pytest.mark.parametrize("drop_in", AGENT_DROP_INS)
def test_exposure_with_device_drop_in(drop_in: str, tmp_path: Path) -> None:
    base = _exposure(_stage(tmp_path / "base", "edge-agent.service"))
    with_drop_in = _exposure(_stage(tmp_path / "dropin", "edge-agent.service", drop_in))
    assert with_drop_in <= MAX_EXPOSURE_WITH_DROP_IN
    # The drop-in was really read: opening devices costs something.
    assert with_drop_in > base


@needs_analyze
@pytest.mark.parametrize(
    ("service", "drop_in"),
    [(s, None) for s in SERVICES] + [("edge-agent.service", d) for d in AGENT_DROP_INS],
)
def test_verify_is_clean(service: str, drop_in: str | None, tmp_path: Path) -> None:
    unit = _stage(tmp_path, service, drop_in)
    result = _analyze("verify", "--man=no", str(unit), cwd=tmp_path)
    # verify exits 0 on unknown keys too, only warning: any output is a finding.
    assert result.returncode == 0, result.stderr
    assert result.stdout == result.stderr == "", result.stdout + result.stderr


@needs_analyze
def test_verify_catches_what_it_should(tmp_path: Path) -> None:
    """The staging trick must not hide errors: a typo still shows up."""
    unit = _stage(tmp_path, "edge-agent.service")
    unit.write_text(unit.read_text().replace("ProtectHome=yes", "ProtectHom=yes"))
    result = _analyze("verify", "--man=no", str(unit), cwd=tmp_path)
    assert "Unknown key" in result.stderr


def test_drop_ins_exist() -> None:
    assert AGENT_DROP_INS == ["edge-agent-jetson.conf", "edge-agent-qualcomm.conf"]


# -- directives ------------------------------------------------------------------

REQUIRED = {
    "Type": "notify",
    "NotifyAccess": "main",
    "WatchdogSec": "30",
    "Restart": "on-failure",
    "RestartSec": "5",
    "DynamicUser": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "SystemCallArchitectures": "native",
    "SystemCallErrorNumber": "EPERM",
    "RestrictNamespaces": "yes",
    "MemoryDenyWriteExecute": "yes",
    "ConfigurationDirectory": "edge-slm",
}


@pytest.mark.parametrize("service", SERVICES)
def test_required_directives(service: str) -> None:
    d = _directives(UNITS / service)
    for key, value in REQUIRED.items():
        assert d.get(key) == [value], f"{service}: {key}={d.get(key)}"
    assert d["SystemCallFilter"][0] == "@system-service"
    assert "~@privileged @resources" in d["SystemCallFilter"]
    assert d["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert d["StateDirectory"]
    assert d["LoadCredential"]
    assert d["MemoryMax"]
    assert d["TasksMax"]
    name = service.removesuffix(".service")
    toml = "agent.toml" if name == "edge-agent" else "relay.toml"
    run = f"{INSTALL_PREFIX}/bin/{name} run --config /etc/edge-slm/{toml}"
    assert d["ExecStart"] == [run]
    assert d["ExecStartPre"] == [f"{run} --check-config"]


def test_agent_specifics() -> None:
    d = _directives(UNITS / "edge-agent.service")
    assert d["StateDirectory"] == ["edge-slm"]
    assert "EDGE_AGENT_LOG_FORMAT=json" in d["Environment"]
    assert d["IPAddressDeny"] == ["any"]


@pytest.mark.parametrize(
    ("service", "drain_s"),
    [
        ("edge-agent.service", AgentLimits().drain_timeout_s),
        ("cloud-relay.service", RelayLimits().drain_timeout_s),
    ],
)
def test_stop_timeout_outlasts_the_drain(service: str, drain_s: float) -> None:
    # Drain, then publish `offline` and disconnect, before systemd sends SIGKILL.
    (stop,) = _directives(UNITS / service)["TimeoutStopSec"]
    assert float(stop) >= drain_s + 10


@pytest.mark.parametrize("drop_in", AGENT_DROP_INS)
def test_drop_ins_open_devices_but_keep_the_cgroup_closed(drop_in: str) -> None:
    d = _directives(DROP_INS / drop_in)
    assert d["PrivateDevices"] == ["no"]
    assert d["DevicePolicy"] == ["closed"]
    assert d["DeviceAllow"]
    assert all(v.endswith(" rw") for v in d["DeviceAllow"])


def test_relay_credentials_map_to_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A credential's ID is its file name in $CREDENTIALS_DIRECTORY: it must name a field."""
    text = (UNITS / "cloud-relay.service").read_text()
    ids = re.findall(r"^#?LoadCredential=([\w.-]+__[\w]+):", text, re.MULTILINE)
    assert set(ids) == {"llm__api_key", "mqtt__password"}
    creds = tmp_path / "credentials"
    creds.mkdir()
    for cred in ids:
        (creds / cred).write_text(f"secret-{cred}\n")  # as an editor leaves it
    (creds / "mqtt-tls_ca.crt").write_text("not read as a setting")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    settings = load_relay_settings()
    assert settings.llm.api_key is not None
    assert settings.llm.api_key.get_secret_value() == "secret-llm__api_key"
    assert settings.mqtt.password is not None
    assert settings.mqtt.password.get_secret_value() == "secret-mqtt__password"
