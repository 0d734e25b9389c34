"""The on-disk model cache: one folder per model, each with ``manifest.json``.

Layout (Foundry-Local style)::

    <root>/<name>/genai_config.json, *.onnx, *.onnx.data, tokenizer files
    <root>/<name>/manifest.json
    <root>/.staging-<name>-XXXX/   (a build or download in progress)

Installs are atomic: a model is assembled in a staging folder *inside* the root
(same filesystem), its manifest written last, then renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from agent.models.catalog import CATALOG, RECIPE_VERSION
from agent.models.errors import (
    IntegrityError,
    ModelError,
    ModelNotInstalled,
    StaleModel,
    UnknownModel,
    enospc_as_disk_full,
)
from agent.models.hashing import sha256_file
from agent.models.manifest import MANIFEST_NAME, Manifest, SourceRecord, record_files

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
STAGING_PREFIX = ".staging-"
GENAI_CONFIG = "genai_config.json"


def default_cache_dir() -> Path:
    """``$STATE_DIRECTORY/models`` under systemd, else the XDG cache."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        # systemd may pass several colon-separated dirs; the first is ours.
        return Path(state.split(":")[0]) / "models"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "edge-slm" / "models"


def check_name(name: str) -> str:
    """Reject names that could escape the cache root."""
    if not _NAME.match(name):
        raise ModelError(
            f"invalid model name {name!r}: use lowercase letters, digits, '.', '_' and '-'"
        )
    return name


@dataclass(frozen=True)
class Mismatch:
    path: str
    expected: str
    actual: str


@dataclass(frozen=True)
class VerifyResult:
    name: str
    checked: int
    mismatched: list[Mismatch] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatched and not self.missing

    def raise_for_errors(self) -> None:
        if self.mismatched:
            m = self.mismatched[0]
            raise IntegrityError(self.name, m.path, m.expected, m.actual)
        if self.missing:
            raise IntegrityError(self.name, self.missing[0], "a file", "missing")


class ModelCache:
    """A folder of installed models."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, name: str) -> Path:
        return self.root / check_name(name)

    def manifest(self, name: str) -> Manifest | None:
        """The model's manifest, or None when it is not installed (or unreadable)."""
        try:
            return Manifest.read(self.path(name))
        except (FileNotFoundError, NotADirectoryError, ValidationError, ValueError):
            return None

    def list(self) -> list[Manifest]:
        """Manifests of every installed model, sorted by name."""
        if not self.root.is_dir():
            return []
        out = []
        for d in sorted(self.root.iterdir()):
            if d.name.startswith(".") or not (d / MANIFEST_NAME).is_file():
                continue
            m = self.manifest(d.name)
            if m is not None:
                out.append(m)
        return out

    def _require_manifest(self, name: str) -> Manifest:
        m = self.manifest(name)
        if m is None:
            raise ModelNotInstalled(name, self.root)
        return m

    def verify(self, name: str) -> VerifyResult:
        """Re-hash every file against the manifest."""
        m = self._require_manifest(name)
        d = self.path(name)
        result = VerifyResult(name=name, checked=len(m.files))
        for rec in m.files:
            p = d / rec.path
            if not p.is_file():
                result.missing.append(rec.path)
                continue
            actual = sha256_file(p)
            if actual != rec.sha256:
                result.mismatched.append(Mismatch(rec.path, rec.sha256, actual))
        return result

    def remove(self, name: str) -> bool:
        """Delete an installed model; False when there was none."""
        d = self.path(name)
        if not d.exists():
            return False
        # Rename first so a half-deleted folder never looks installed.
        trash = Path(tempfile.mkdtemp(prefix=f".trash-{name}-", dir=self.root))
        d.rename(trash / name)
        shutil.rmtree(trash)
        return True

    def is_current(self, name: str) -> bool:
        """Installed, and (for models built here) built by the current recipe."""
        m = self.manifest(name)
        if m is None:
            return False
        if m.source.kind == "pypi-gguf":
            return m.recipe_version == RECIPE_VERSION
        return True

    def require(self, name: str) -> Path:
        """The folder of an installed, current model; cheap size check of its files."""
        m = self.manifest(name)
        if m is None:
            if name not in CATALOG:
                raise UnknownModel(name, CATALOG)
            raise ModelNotInstalled(name, self.root)
        if not self.is_current(name):
            raise StaleModel(name, m.recipe_version, RECIPE_VERSION)
        d = self.path(name)
        for rec in m.files:
            p = d / rec.path
            size = p.stat().st_size if p.is_file() else None
            if size != rec.size:
                raise IntegrityError(
                    name,
                    rec.path,
                    f"{rec.size} bytes",
                    "missing" if size is None else f"{size} bytes",
                )
        return d

    @contextlib.contextmanager
    def staging(self, name: str) -> Iterator[Path]:
        """A scratch folder inside the root, removed on exit unless committed."""
        check_name(name)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{name}-", dir=self.root))
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def commit(self, staged: Path, manifest: Manifest) -> Path:
        """Write the manifest into ``staged`` and atomically move it to ``path(name)``."""
        manifest.write(staged)
        dest = self.path(manifest.name)
        old: Path | None = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".trash-{manifest.name}-", dir=self.root))
            dest.rename(old / "old")
        staged.rename(dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return dest

    def import_dir(self, src: Path, name: str | None = None) -> Manifest:
        """Copy a prebuilt onnxruntime-genai folder into the cache."""
        src = Path(src)
        if not (src / GENAI_CONFIG).is_file():
            raise ModelError(
                f"{src} is not an onnxruntime-genai model folder: it has no {GENAI_CONFIG}"
            )
        name = check_name(name or src.name.lower())
        needed = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
        with enospc_as_disk_full(self.root, needed), self.staging(name) as tmp:
            stage = tmp / "model"
            shutil.copytree(src, stage, ignore=shutil.ignore_patterns(MANIFEST_NAME))
            manifest = Manifest(
                name=name,
                source=SourceRecord(kind="import", url=str(src.resolve())),
                precision=CATALOG[name].precision if name in CATALOG else None,
                files=record_files(stage),
            )
            self.commit(stage, manifest)
        return manifest
