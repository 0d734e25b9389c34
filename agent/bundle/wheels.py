"""The bundle's wheelhouse: the project's wheel and its runtime dependencies for a target.

The dependency list is the project's own metadata (``Requires-Dist`` of the wheel just
built, extras left out), never a list kept here, so a dependency added to
``pyproject.toml`` travels with the next bundle. Dependencies come from ``pip download
--platform ... --only-binary=:all:``: a device builds nothing from source, so a
dependency without a wheel for the target stops the bundle here, on the workstation,
instead of on a board with no network.
"""

from __future__ import annotations

import email.parser
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from agent.bundle import BundleError

ARCHES = ("aarch64", "x86_64")
# The newest glibc a wheel may need: 2.35, that of Ubuntu 22.04 (JetPack 6); Debian
# bookworm and Raspberry Pi OS 12 have 2.36. (llguidance's aarch64 wheels need 2.31, so
# 2.28 is too old.) pip does not widen ``--platform manylinux_2_35_*`` to older glibcs
# itself, so every tag down to manylinux2014 (glibc 2.17) is passed.
GLIBC_MINOR_MAX = 35
GLIBC_MINOR_MIN = 17
_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")
_NO_VERSION = re.compile(r"satisfies the requirement (\S+)")


@dataclass(frozen=True, slots=True)
class Target:
    """What the device runs: its CPU architecture and its CPython's major.minor."""

    arch: str
    python: str

    def __post_init__(self) -> None:
        if self.arch not in ARCHES:
            raise BundleError(f"unknown arch {self.arch!r}; one of {', '.join(ARCHES)}")
        if not re.fullmatch(r"3\.\d{1,2}", self.python):
            raise BundleError(f"python must look like 3.11, got {self.python!r}")

    @property
    def platform(self) -> str:
        """The newest platform tag a wheel may carry."""
        return f"manylinux_2_{GLIBC_MINOR_MAX}_{self.arch}"

    @property
    def platforms(self) -> list[str]:
        """Every platform tag the device accepts, newest first (pip's --platform list)."""
        tags = [
            f"manylinux_2_{minor}_{self.arch}"
            for minor in range(GLIBC_MINOR_MAX, GLIBC_MINOR_MIN - 1, -1)
        ]
        return [*tags, f"manylinux2014_{self.arch}"]

    @property
    def abi(self) -> str:
        return "cp" + self.python.replace(".", "")

    def describe(self) -> str:
        return f"{self.platform}, CPython {self.python}"


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def build_project_wheel(project: Path, dest: Path) -> Path:
    """Build the project's own (pure Python) wheel into ``dest``; return its path.

    No build isolation: the workstation's setuptools builds it, so no network is needed.
    """
    if not (project / "pyproject.toml").is_file():
        raise BundleError(f"{project} has no pyproject.toml")
    before = set(dest.glob("*.whl"))
    done = _pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dest), str(project))
    if done.returncode != 0:
        raise BundleError(f"building the wheel of {project} failed:\n{done.stderr.strip()}")
    built = sorted(set(dest.glob("*.whl")) - before)
    if len(built) != 1:
        raise BundleError(f"expected one wheel from {project}, got {[p.name for p in built]}")
    return built[0]


def runtime_requirements(wheel: Path) -> list[str]:
    """``Requires-Dist`` of a wheel, without the ones that only an extra asks for."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next((n for n in zf.namelist() if n.endswith(".dist-info/METADATA")), None)
        if meta is None:
            raise BundleError(f"{wheel.name} has no METADATA")
        text = zf.read(meta).decode()
    reqs = []
    for value in email.parser.Parser().parsestr(text).get_all("Requires-Dist") or []:
        _, _, marker = value.partition(";")
        if "extra" in marker:
            continue
        reqs.append(value.strip())
    return reqs


def download(
    requirements: list[str],
    target: Target,
    dest: Path,
    *,
    find_links: list[Path] | None = None,
    no_index: bool = False,
) -> list[Path]:
    """Download wheels of ``requirements`` and all they need for ``target`` into ``dest``.

    Raises :class:`BundleError` naming the requirement when one has no wheel for the
    target (pip offers only source distributions, or only other platforms' wheels).
    """
    args = [
        "download",
        "-q",
        "--dest",
        str(dest),
        "--only-binary=:all:",
        *(f"--platform={tag}" for tag in target.platforms),
        "--python-version",
        target.python,
        "--implementation",
        "cp",
        "--abi",
        target.abi,
    ]
    if no_index:
        args.append("--no-index")
    for link in find_links or []:
        args += ["--find-links", str(link)]
    done = _pip(*args, *requirements)
    if done.returncode != 0:
        errors = [ln for ln in done.stderr.splitlines() if ln.startswith("ERROR")]
        found = _NO_MATCH.search(done.stderr) or _NO_VERSION.search(done.stderr)
        if found:
            raise BundleError(
                f"dependency {found.group(1)!r} has no wheel for {target.describe()}: a "
                "device installs wheels only and builds nothing from source. Pin a version "
                "that has one, build one for the target (pip wheel) and pass --find-links "
                "DIR, or drop the dependency.\npip said: " + " ".join(errors)
            )
        raise BundleError(f"pip download failed:\n{done.stderr.strip()}")
    wheels = sorted(dest.glob("*.whl"))
    others = sorted(p.name for p in dest.iterdir() if p.suffix != ".whl")
    if others:
        raise BundleError(f"pip left files that are not wheels: {others}")
    return wheels
