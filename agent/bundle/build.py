"""Assemble a device bundle: stage every file, hash them all, write one tar.

Layout, under one top folder ``edge-slm-bundle/``::

    bundle.json                 what it is for: arch, Python, profile, model(s), wheel
    SHA256SUMS                  ``sha256sum -c`` format, every other file listed
    wheels/*.whl                the project's wheel and every runtime dependency
    models/<name>/...           built models, each with its manifest.json
    deploy/install-device.sh    the installer (``--bundle`` mode reads this layout)
    deploy/profiles.toml        the board profiles
    systemd/...                 the unit, its README and the accelerator drop-ins
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from agent.bundle import BundleError
from agent.bundle.wheels import Target, build_project_wheel, download, runtime_requirements
from agent.models.cache import ModelCache
from agent.models.hashing import sha256_file
from agent.models.manifest import MANIFEST_NAME
from agent.profiles import get_profile, load_profiles

FORMAT = 1
TOP = "edge-slm-bundle"
SUMS = "SHA256SUMS"
INFO = "bundle.json"
# Files of the project the installer needs beside the wheel, relative to its root.
DEPLOY_FILES = ("deploy/install-device.sh", "deploy/profiles.toml")
SYSTEMD_GLOBS = ("systemd/edge-agent.service", "systemd/README.md", "systemd/drop-ins/*.conf")


@dataclass(frozen=True)
class BundleSpec:
    """What to bundle. ``models`` empty: the profile's model and its skills' encoder."""

    project: Path
    target: Target
    profile: str
    output: Path
    cache: ModelCache
    models: tuple[str, ...] = ()
    find_links: tuple[Path, ...] = ()
    no_index: bool = False


@dataclass
class BundleResult:
    path: Path
    info: dict[str, object]
    files: int = 0
    size: int = 0
    models: list[str] = field(default_factory=list)
    wheels: list[str] = field(default_factory=list)


def _copy_model(cache: ModelCache, name: str, dest: Path) -> str:
    """Copy an installed model and check the copy against its manifest; its kind."""
    manifest = cache.manifest(name)
    if manifest is None:
        raise BundleError(
            f"model {name!r} is not in {cache.root}: build it first "
            f"(edge-agent models build {name})"
        )
    src = cache.path(name)
    dest.mkdir(parents=True)
    for rec in manifest.files:
        shutil.copy2(src / rec.path, dest / rec.path)
        if sha256_file(dest / rec.path) != rec.sha256:
            raise BundleError(
                f"model {name!r}: {rec.path} does not match its manifest "
                f"(edge-agent models verify {name})"
            )
    shutil.copy2(src / MANIFEST_NAME, dest / MANIFEST_NAME)
    return manifest.source.kind


def _copy_project_files(project: Path, stage: Path) -> None:
    paths = [project / rel for rel in DEPLOY_FILES]
    for pattern in SYSTEMD_GLOBS:
        paths += sorted(project.glob(pattern))
    for src in paths:
        if not src.is_file():
            raise BundleError(f"{src} is missing from the project")
        dest = stage / src.relative_to(project)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)


def write_sums(stage: Path) -> int:
    """Write ``SHA256SUMS`` over every file of ``stage`` (but itself); the count."""
    files = sorted(p for p in stage.rglob("*") if p.is_file() and p.name != SUMS)
    lines = [f"{sha256_file(p)}  {p.relative_to(stage).as_posix()}\n" for p in files]
    (stage / SUMS).write_text("".join(lines))
    return len(files)


def _normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Owned by root on the device whoever built it; no workstation user names inside.
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def make_bundle(spec: BundleSpec) -> BundleResult:
    """Build the bundle described by ``spec`` at ``spec.output``."""
    profiles = load_profiles(spec.project / "deploy" / "profiles.toml")
    profile = get_profile(spec.profile, profiles)
    if profile.arch != spec.target.arch:
        raise BundleError(
            f"profile {profile.name} is for {profile.arch}, not {spec.target.arch}; "
            "pass a profile of the target's architecture"
        )
    models = spec.models or (profile.model, profile.embedder)
    spec.output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".bundle-", dir=spec.output.parent) as tmp:
        stage = Path(tmp) / TOP
        wheels_dir = stage / "wheels"
        wheels_dir.mkdir(parents=True)
        own = build_project_wheel(spec.project, wheels_dir)
        requirements = runtime_requirements(own)
        download(
            requirements,
            spec.target,
            wheels_dir,
            find_links=list(spec.find_links),
            no_index=spec.no_index,
        )
        kinds = {name: _copy_model(spec.cache, name, stage / "models" / name) for name in models}
        _copy_project_files(spec.project, stage)
        info: dict[str, object] = {
            "format": FORMAT,
            "arch": spec.target.arch,
            "python": spec.target.python,
            "platform": spec.target.platform,
            "profile": profile.name,
            # The model the agent serves: the first given, or the profile's.
            "model": models[0],
            "models": {name: kinds[name] for name in models},
            "wheel": own.name,
            "requirements": requirements,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (stage / INFO).write_text(json.dumps(info, indent=2) + "\n")
        count = write_sums(stage)
        wheels = sorted(p.name for p in wheels_dir.glob("*.whl"))
        partial = spec.output.with_name(spec.output.name + ".partial")
        # Plain tar by default: the int8/int4 weights, most of the bytes, barely compress.
        gz = spec.output.name.endswith(".gz")
        with tarfile.open(partial, "w:gz") if gz else tarfile.open(partial, "w") as tar:
            tar.add(stage, arcname=TOP, filter=_normalized)
        partial.replace(spec.output)
    return BundleResult(
        path=spec.output,
        info=info,
        files=count,
        size=spec.output.stat().st_size,
        models=list(models),
        wheels=wheels,
    )
