"""``manifest.json``: what a model folder holds and how it was made.

Written last, inside the staging folder, before the atomic rename; a model
folder without a manifest is not installed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.models.hashing import sha256_file

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1


class FileRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(description="POSIX path relative to the model folder")
    size: int = Field(ge=0)
    sha256: str


class Fidelity(BaseModel):
    """Teacher-forced comparison of the built model with its source weights."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompts: int
    tokens: int = Field(description="positions compared")
    top1_agreement: float = Field(description="share of positions with the same argmax")
    mean_kl: float = Field(description="mean KL(source || onnx) in nats")
    min_agreement: float = Field(description="the catalog gate the build had to pass")


class SourceRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["pypi-gguf", "hub-onnx", "import"]
    packages: list[str] = Field(default_factory=list, description="pinned requirements")
    url: str | None = Field(default=None, description="base URL or imported folder")
    sha256: str | None = Field(default=None, description="sha256 of the source GGUF")


class Manifest(BaseModel):
    # Tolerant of unknown fields: a newer agent may add some.
    model_config = ConfigDict(extra="ignore")

    schema_version: int = SCHEMA_VERSION
    name: str
    source: SourceRecord
    recipe_version: str | None = Field(default=None, description="None unless built here")
    precision: str | None = None
    execution_provider: str = "cpu"
    builder: str | None = Field(default=None, description="e.g. onnxruntime-genai 0.18.0")
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    build_seconds: float | None = None
    fidelity: Fidelity | None = None
    files: list[FileRecord]

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def write(self, model_dir: Path) -> Path:
        path = model_dir / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, model_dir: Path) -> Manifest:
        return cls.model_validate_json((model_dir / MANIFEST_NAME).read_text(encoding="utf-8"))


def record_files(model_dir: Path) -> list[FileRecord]:
    """Size and sha256 of every file under ``model_dir`` except the manifest."""
    records = []
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(model_dir).as_posix()
        if rel in {MANIFEST_NAME, MANIFEST_NAME + ".tmp"}:
            continue
        records.append(FileRecord(path=rel, size=path.stat().st_size, sha256=sha256_file(path)))
    return records
