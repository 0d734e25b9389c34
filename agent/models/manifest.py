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

    kind: Literal["pypi-gguf", "hub-onnx", "import", "pypi-files", "pypi-encoder", "tuned"]
    packages: list[str] = Field(default_factory=list, description="pinned requirements")
    url: str | None = Field(default=None, description="base URL or imported folder")
    sha256: str | None = Field(default=None, description="sha256 of the source GGUF")


class EvalFigures(BaseModel):
    """Classify quality on one held-out split (``edge-agent models tune``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    examples: int = Field(ge=0)
    accuracy: float
    auroc: float | None = Field(
        description="of confidence vs correctness; None when all or none are right"
    )
    ece: float = Field(description="expected calibration error, 10 equal-width bins")


class TuneRecord(BaseModel):
    """How a tuned model was made: its base, its data, its settings, its figures."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    base: str = Field(description="catalog name of the model it was tuned from")
    key: str = Field(description="sha256 of base, data, settings and recipe: the name's suffix")
    data_file: str = Field(description="name of the JSONL it was tuned on")
    data_sha256: str
    examples: int = Field(description="usable classify and act examples in the file")
    train_examples: int
    heldout_examples: int = Field(description="the data's own held-out split, never trained")
    official_heldout_examples: int = Field(
        description="held-out items of the project's eval set measured (never trained)"
    )
    skipped: dict[str, int] = Field(default_factory=dict, description="lines skipped, by reason")
    method: Literal["full", "lora"] = Field(
        default="full", description="full fine-tuning, or LoRA adapters merged into the weights"
    )
    lora_rank: int | None = Field(default=None, description="LoRA: the adapters' rank")
    lora_alpha: int | None = Field(default=None, description="LoRA: scale alpha / rank")
    trained_weights: int | None = Field(
        default=None, description="how many weights training updated"
    )
    epochs: int
    lr: float
    batch_size: int
    seed: int
    max_examples: int | None = None
    heldout_fraction: float
    prompt: str = Field(
        description="how it must be prompted: skills without exemplars, inline labels bare"
    )
    train_seconds: float
    final_loss: float
    base_agreement: float | None = Field(
        default=None,
        description="top-1 agreement with the base model's source weights on the fidelity "
        "prompts: how far the tune moved its general behaviour",
    )
    before: dict[str, EvalFigures] = Field(description="the base model, by held-out split")
    after: dict[str, EvalFigures] = Field(description="the tuned model, by held-out split")


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
    embedding_cosine: float | None = Field(
        default=None,
        description="embedders: the lowest cosine between these vectors and the fp32 "
        "source's over the check sentences; None when not checked",
    )
    tune: TuneRecord | None = Field(default=None, description="set on tuned models only")
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


def tuned_without_exemplars(model_dir: Path) -> bool:
    """Whether the model in ``model_dir`` was made by ``edge-agent models tune``: it was
    trained on skill prompts without exemplars (they are in its weights), and must be
    prompted the same way. False when there is no readable manifest (a bare folder)."""
    try:
        return Manifest.read(model_dir).tune is not None
    except (OSError, ValueError):
        return False


def record_files(model_dir: Path) -> list[FileRecord]:
    """Size and sha256 of every file under ``model_dir`` except the manifest."""
    records = []
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(model_dir).as_posix()
        if rel in {MANIFEST_NAME, MANIFEST_NAME + ".tmp"}:
            continue
        records.append(FileRecord(path=rel, size=path.stat().st_size, sha256=sha256_file(path)))
    return records
