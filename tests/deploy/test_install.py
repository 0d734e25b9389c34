"""deploy/install-device.sh, run for real into throwaway prefixes (a clean root filesystem
stand-in): real venv, real pip install of this source, real ``--check-config`` against
the real built model. systemd and apt are skipped (``--no-systemd --no-apt``, and a
prefix skips them anyway), and the script says so; nothing here touches the host's /.

Speed, honestly: the venv under the prefix is created fresh and the package is really
built and installed into it, but its *dependencies* (onnxruntime, pydantic, ...) come
from this repo's venv through PYTHONPATH, so pip sees them satisfied and downloads
nothing (``--no-build-isolation``: setuptools comes from there too). On a device pip
fetches them from the index (or a wheelhouse via ``--pip-opt``); that part is pip's.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.config import load_settings

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = Path.home() / ".cache" / "edge-slm" / "models" / "smollm2-135m-instruct"
MODEL = "smollm2-135m-instruct"

pytestmark = pytest.mark.skipif(
    not (MODEL_DIR / "genai_config.json").is_file(),
    reason=f"needs the built model in {MODEL_DIR} (edge-agent models build {MODEL})",
)


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A snapshot of the checkout (tracked + untracked-not-ignored files).

    Other work in the tree cannot change the source between an install and its rerun,
    and pip's in-tree build (build/, *.egg-info) lands in the snapshot, not the repo.
    """
    dest = tmp_path_factory.mktemp("source")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "-co", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in filter(None, listed):
        rel = raw.decode()
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env["PYTHONPATH"] = sysconfig.get_paths()["purelib"]
    env.pop("STATE_DIRECTORY", None)
    return env


def run_script(source: Path, *args: str) -> Result:
    proc = subprocess.run(
        ["bash", str(source / "deploy" / "install-device.sh"), *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def install_args(prefix: Path, source: Path, *extra: str) -> list[str]:
    return [
        "--prefix",
        str(prefix),
        "--no-systemd",
        "--no-apt",
        "--source",
        str(source),
        "--python",
        sys.executable,
        "--pip-opt=--no-build-isolation",
        *extra,
    ]


def install(prefix: Path, source: Path, *extra: str) -> Result:
    result = run_script(
        source,
        *install_args(
            prefix,
            source,
            "--device-id",
            "kitchen",
            "--profile",
            "rpi5-8gb",
            "--model",
            MODEL,
            *extra,
        ),
    )
    assert result.rc == 0, result.text
    return result


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.lstat().st_mtime_ns, p.lstat().st_mode)
        for p in sorted(root.rglob("*"))
        if "__pycache__" not in p.parts
    }


def expected_conf_mode(source: Path) -> int:
    """0640, except 0644 under a DynamicUser unit without Group= (no group reaches it)."""
    unit = source / "systemd/edge-agent.service"
    text = unit.read_text() if unit.is_file() else ""
    dynamic = re.search(r"^DynamicUser=(yes|true|1|on)\s*$", text, re.MULTILINE)
    static = re.search(r"^(User|Group)=", text, re.MULTILINE)
    return 0o644 if dynamic and not static else 0o640


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, source: Path) -> tuple[Path, Result]:
    prefix = tmp_path_factory.mktemp("prefix")
    return prefix, install(prefix, source, "--model-path", str(MODEL_DIR))


# -- a first install ---------------------------------------------------------------


def test_files_and_modes(installed: tuple[Path, Result], source: Path) -> None:
    prefix, result = installed
    venv = prefix / "opt/edge-slm/venv"
    assert os.access(venv / "bin/edge-agent", os.X_OK)
    assert mode(prefix / "etc/edge-slm/agent.toml") == expected_conf_mode(source)
    assert mode(prefix / "etc/edge-slm/tls") == 0o700  # the unit's LoadCredential= source
    assert mode(prefix / "opt/edge-slm/profiles.toml") == 0o644
    dropin = prefix / "etc/systemd/system/edge-agent.service.d/50-profile.conf"
    assert mode(dropin) == 0o644
    assert "MemoryMax=3G\nMemoryHigh=2560M\n" in dropin.read_text()  # rpi5-8gb
    assert (prefix / "var/lib/edge-slm").is_dir()
    assert "skipping systemd steps" in result.out
    assert "skipping apt (--no-apt)" in result.out


def test_unit_copied(installed: tuple[Path, Result], source: Path) -> None:
    prefix, result = installed
    unit_src = source / "systemd/edge-agent.service"
    unit = prefix / "etc/systemd/system/edge-agent.service"
    if unit_src.is_file():
        assert unit.read_bytes() == unit_src.read_bytes()
        assert mode(unit) == 0o644
    else:  # the unit is another change in flight; the script must say it skipped it
        assert not unit.exists()
        assert "is not in this checkout yet" in result.err


def test_package_really_installed_in_the_prefix_venv(installed: tuple[Path, Result]) -> None:
    prefix, _ = installed
    venv = prefix / "opt/edge-slm/venv"
    where = subprocess.run(
        [str(venv / "bin/python"), "-c", "import agent.profiles; print(agent.profiles.__file__)"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=prefix,  # not the repo: `-c` puts the working directory first on sys.path
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv), where
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert not (site / "torch").exists()  # base install: devices never build models


def test_agent_toml_parses_and_validates(installed: tuple[Path, Result]) -> None:
    prefix, _ = installed
    conf = prefix / "etc/edge-slm/agent.toml"
    data = tomllib.loads(conf.read_text())
    assert data["device_id"] == "kitchen"
    assert data["mqtt"]["broker"] == "mqtt://127.0.0.1:1883"
    assert data["model"] == {
        "name": MODEL,
        "provider": "cpu",
        "threads": 3,  # from the rpi5-8gb profile
        "embedder": "minilm-l6-v2-int8",  # the profile's encoder
        "path": str(MODEL_DIR),
    }
    settings = load_settings(conf)
    assert settings.device_id == "kitchen"
    assert settings.model.threads == 3
    assert settings.model.embedder == "minilm-l6-v2-int8"


def test_check_config_ran(installed: tuple[Path, Result]) -> None:
    _, result = installed
    assert "--check-config" in result.out
    assert "configuration OK" in result.out
    assert f'"resolved_path": "{MODEL_DIR}"' in result.out


def test_rerun_changes_nothing(installed: tuple[Path, Result], source: Path) -> None:
    prefix, _ = installed
    before = tree_state(prefix)
    again = install(prefix, source, "--model-path", str(MODEL_DIR))
    assert tree_state(prefix) == before
    assert "exists" in again.out  # the venv
    assert "edge-slm package unchanged" in again.out
    assert "agent.toml unchanged" in again.out
    assert "done: everything unchanged" in again.out


def test_dry_run_writes_nothing(installed: tuple[Path, Result], source: Path) -> None:
    prefix, _ = installed
    before = tree_state(prefix)
    result = install(
        prefix, source, "--model-path", str(MODEL_DIR), "--broker", "mqtts://b:8883", "--dry-run"
    )
    assert tree_state(prefix) == before
    assert "would update" in result.out
    assert '+broker = "mqtts://b:8883"' in result.out
    assert "dry run: nothing was changed" in result.out


def test_dry_run_on_an_empty_prefix(tmp_path: Path, source: Path) -> None:
    result = install(tmp_path, source, "--model-path", str(MODEL_DIR), "--dry-run")
    assert list(tmp_path.iterdir()) == []
    assert "would create venv" in result.out
    assert "would run:" in result.out


# -- changes, model import, uninstall ---------------------------------------------------


def test_changed_flags_rewrite_config_and_keep_a_backup(tmp_path: Path, source: Path) -> None:
    install(tmp_path, source, "--model-path", str(MODEL_DIR))
    conf = tmp_path / "etc/edge-slm/agent.toml"
    old = conf.read_text()
    result = install(tmp_path, source, "--model-path", str(MODEL_DIR), "--broker", "mqtt://b:1")
    assert (tmp_path / "etc/edge-slm/agent.toml.bak").read_text() == old
    assert tomllib.loads(conf.read_text())["mqtt"]["broker"] == "mqtt://b:1"
    assert mode(conf) == expected_conf_mode(source)
    assert "edge-slm package unchanged" in result.out  # only the config changed


def test_import_model_then_uninstall_keeps_state(tmp_path: Path, source: Path) -> None:
    # The documented path for a real device: a built folder copied over, imported into
    # the state dir's cache; check-config then finds it by name, with no model.path.
    first = install(tmp_path, source, "--import-model", str(MODEL_DIR))
    models = tmp_path / "var/lib/edge-slm/models"
    assert (models / MODEL / "genai_config.json").is_file()
    assert "configuration OK" in first.out
    assert "path" not in tomllib.loads((tmp_path / "etc/edge-slm/agent.toml").read_text())["model"]
    again = install(tmp_path, source, "--import-model", str(MODEL_DIR))
    assert f"model {MODEL} already in" in again.out
    (tmp_path / "var/lib/edge-slm/outbox.db").write_bytes(b"")

    gone = run_script(source, "--uninstall", "--prefix", str(tmp_path), "--no-systemd")
    assert gone.rc == 0, gone.text
    for rel in (
        "opt/edge-slm",
        "etc/edge-slm/agent.toml",
        "etc/systemd/system/edge-agent.service",
        "etc/systemd/system/edge-agent.service.d",
    ):
        assert not (tmp_path / rel).exists(), rel
    assert (models / MODEL / "genai_config.json").is_file()
    assert (tmp_path / "var/lib/edge-slm/outbox.db").is_file()
    assert "kept" in gone.out

    purged = run_script(source, "--uninstall", "--purge", "--prefix", str(tmp_path))
    assert purged.rc == 0, purged.text
    assert not (tmp_path / "var/lib/edge-slm").exists()


def test_check_config_failure_stops_before_enabling(tmp_path: Path, source: Path) -> None:
    # No model anywhere: check-config must fail, and the script must say how to fix it.
    result = run_script(
        source,
        *install_args(tmp_path, source, "--device-id", "d1", "--profile", "generic-arm64"),
    )
    assert result.rc == 1
    assert "check-config failed; the service was not enabled" in result.err
    assert "--import-model DIR" in result.err


# -- bad usage ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--device-id is required"),
        (["--device-id", "a/b"], "must be 1-64 of [A-Za-z0-9._-]"),
        (["--device-id", "d", "--broker", "http://x"], "must look like mqtt://host:port"),
        (["--device-id", "d", "--provider", "tpu"], "--provider must be one of"),
        (["--device-id", "d", "--profile", "nope"], "unknown profile 'nope'"),
        (["--device-id", "d", "--model-path", "/nonexistent"], "not an onnxruntime-genai folder"),
        (["--device-id", "d", "--source", "/", "--wheel", "x.whl"], "mutually exclusive"),
        (["--device-id", "d", "--prefix", "rel/dir"], "--prefix must be an absolute path"),
        (["--device-id"], "--device-id needs a value"),
        (["--purge"], "--purge only goes with --uninstall"),
        (["--frobnicate"], "unknown argument '--frobnicate'"),
    ],
)
def test_bad_flags_fail_clearly(
    tmp_path: Path, source: Path, args: list[str], message: str
) -> None:
    result = run_script(source, "--no-apt", "--no-systemd", "--python", sys.executable, *args)
    assert result.rc == 2, result.text
    assert message in result.err
    assert list(tmp_path.iterdir()) == []


def test_help(source: Path) -> None:
    result = run_script(source, "--help")
    assert result.rc == 0
    assert "--device-id ID" in result.out


def test_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    scripts = [REPO / "deploy/install-device.sh", *sorted((REPO / "scripts").glob("*.sh"))]
    proc = subprocess.run(
        [shellcheck, *map(str, scripts)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout
