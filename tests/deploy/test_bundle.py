"""``edge-agent bundle`` and ``install-device.sh --bundle``, where they can fail, fast and
without qemu (scripts/test-arm64.sh is the long, emulated proof on aarch64).

One real bundle for this machine's architecture is built once per module by the real
``edge-agent bundle``: the project's wheel, its runtime dependencies from pip's configured
index, and the built default model. Installs go into throwaway prefixes; like
tests/deploy/test_install.py, the prefix venv sees the dependencies through PYTHONPATH
(so pip installs only the project's wheel from the bundle), but with ``--no-index`` and,
where the kernel allows, inside a network namespace with no network at all.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
from pathlib import Path

import pytest

from agent.bundle.build import SUMS, TOP

REPO = Path(__file__).resolve().parents[2]
INSTALLER = REPO / "deploy" / "install-device.sh"
MODELS = Path.home() / ".cache" / "edge-slm" / "models"
MODEL = "smollm2-135m-instruct"
ARCH = platform.machine()
PROFILE = "generic-x86-64" if ARCH == "x86_64" else "generic-arm64"

pytestmark = pytest.mark.skipif(
    not (MODELS / MODEL / "manifest.json").is_file(),
    reason=f"needs the built model in {MODELS / MODEL} (edge-agent models build {MODEL})",
)


def _edge_agent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "b.tar"
    done = _edge_agent(
        "bundle",
        "--arch",
        ARCH,
        "--python",
        f"{sys.version_info[0]}.{sys.version_info[1]}",
        "--profile",
        PROFILE,
        "--model",
        MODEL,
        "--cache-dir",
        str(MODELS),
        "-o",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    return out


def _offline_prefix() -> list[str]:
    """``unshare --net`` when this process may make a network namespace (no network)."""
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, check=False)
    return ["unshare", "--net"] if probe.returncode == 0 else []


def _install(bundle: Path, prefix: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_AGENT_", "PIP_"))}
    env.pop("STATE_DIRECTORY", None)
    env["PYTHONPATH"] = sysconfig.get_paths()["purelib"]
    # Any attempt at the network goes to a closed port, even outside a namespace.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env[var] = "http://127.0.0.1:9"
    env["PIP_INDEX_URL"] = "http://127.0.0.1:9/simple"
    env["PIP_CONFIG_FILE"] = os.devnull
    return subprocess.run(
        [
            *_offline_prefix(),
            "bash",
            str(INSTALLER),
            "--bundle",
            str(bundle),
            "--device-id",
            "bundle-test",
            "--prefix",
            str(prefix),
            "--no-systemd",
            "--no-apt",
            *extra,
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )


def _members(bundle: Path) -> dict[str, bytes]:
    with tarfile.open(bundle) as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile() and not m.name.endswith((".whl", ".data", ".onnx"))
        }


def test_bundle_lists_every_file_and_the_projects_own_dependencies(bundle: Path) -> None:
    with tarfile.open(bundle) as tar:
        files = {m.name.removeprefix(f"{TOP}/") for m in tar.getmembers() if m.isfile()}
        sums = tar.extractfile(f"{TOP}/{SUMS}").read().decode()  # type: ignore[union-attr]
        info = json.load(tar.extractfile(f"{TOP}/bundle.json"))  # type: ignore[arg-type]
    listed = {line.split("  ", 1)[1] for line in sums.splitlines()}
    assert listed == files - {SUMS}
    assert f"models/{MODEL}/model.onnx.data" in listed
    assert "deploy/install-device.sh" in listed
    assert info["arch"] == ARCH
    assert info["model"] == MODEL
    # The dependency list is pyproject's, whatever it holds today.
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]

    def name(req: str) -> str:
        return re.split(r"[\s;\[<>=!~]", req, maxsplit=1)[0]

    assert sorted(name(r).lower() for r in info["requirements"]) == sorted(
        name(r).lower() for r in declared
    )
    wheels = {p.split("/")[-1] for p in listed if p.startswith("wheels/")}
    assert info["wheel"] in wheels
    for req in declared:
        stem = name(req).lower().replace("-", "_")
        assert any(w.lower().startswith(stem + "-") for w in wheels), f"no wheel for {req}"


def test_offline_install_and_rerun(bundle: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "root"
    first = _install(bundle, prefix)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "every file matches SHA256SUMS" in first.stdout
    assert "--no-index" in first.stdout
    assert (prefix / "var/lib/edge-slm/models" / MODEL / "model.onnx.data").is_file()
    assert "configuration OK" in first.stdout + first.stderr
    pip_show = subprocess.run(
        [str(prefix / "opt/edge-slm/venv/bin/pip"), "show", "edge-slm"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "Name: edge-slm" in pip_show.stdout
    again = _install(bundle, prefix)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "done: everything unchanged" in again.stdout
    assert f"model {MODEL} unchanged" in again.stdout


def _repack(bundle: Path, dest: Path, change: str) -> Path:
    """A copy of the bundle with one file changed, added or removed."""
    work = dest / "x"
    with tarfile.open(bundle) as tar:
        tar.extractall(work, filter="data")
    top = work / TOP
    if change == "modified":
        # What an attacker would change: the memory limit the unit gets.
        table = top / "deploy" / "profiles.toml"
        table.write_text(table.read_text().replace('memory_max = "2G"', 'memory_max = "64G"'))
    elif change == "added":
        (top / "wheels" / "evil-1.0-py3-none-any.whl").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    elif change == "removed":
        (top / "systemd" / "edge-agent.service").unlink()
    out = dest / f"{change}.tar"
    with tarfile.open(out, "w") as tar:
        tar.add(top, arcname=TOP)
    shutil.rmtree(work)
    return out


@pytest.mark.parametrize("change", ["modified", "added", "removed"])
def test_tampered_bundle_is_refused_and_nothing_changes(
    bundle: Path, tmp_path: Path, change: str
) -> None:
    bad = _repack(bundle, tmp_path, change)
    prefix = tmp_path / "root"
    prefix.mkdir()
    done = _install(bad, prefix)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "refused, nothing was changed" in done.stderr
    assert list(prefix.iterdir()) == []


def test_dependency_without_a_wheel_for_the_target_stops_bundle(tmp_path: Path) -> None:
    # The project with one more runtime dependency, which has only a source distribution
    # and an x86_64 wheel: no aarch64 wheel.
    project = tmp_path / "project"
    listed = subprocess.run(
        [
            "git",
            "ls-files",
            "-z",
            "pyproject.toml",
            "README.md",
            "agent",
            "edge_slm",
            "cloud_relay",
            "deploy",
            "systemd",
        ],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in filter(None, listed):
        src = REPO / raw.decode()
        if src.is_file():
            (project / raw.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, project / raw.decode())
    pyproject = project / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace(
            "dependencies = [\n", 'dependencies = [\n  "nowheel-dep>=1",\n', 1
        )
    )
    links = tmp_path / "links"
    links.mkdir()
    (links / "nowheel_dep-1.0.tar.gz").write_bytes(b"")
    (links / "nowheel_dep-1.0-py3-none-manylinux_2_28_x86_64.whl").write_bytes(b"")
    done = _edge_agent(
        "bundle",
        "--arch",
        "aarch64",
        "--project",
        str(project),
        "--no-index",
        "--find-links",
        str(links),
        "--model",
        MODEL,
        "--cache-dir",
        str(MODELS),
        "-o",
        str(tmp_path / "never.tar"),
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "dependency 'nowheel-dep>=1' has no wheel for manylinux_2_35_aarch64" in done.stderr
    assert not (tmp_path / "never.tar").exists()
