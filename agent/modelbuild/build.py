"""Build a catalog model: GGUF -> HF float32 folder -> onnxruntime-genai -> cache.

Stages (each timed by :class:`Progress`):

1. source: locate the PyPI-carried GGUF (concatenating parts), check size,
   magic and sha256;
2. convert: ``python -m agent.modelbuild.convert`` dequantizes it into a HF folder
   and saves the source model's reference logits for the fidelity check;
3. onnx: ``python -m onnxruntime_genai.models.builder -i HF -o OUT -p PREC -e cpu
   -c CACHE``. No ``-m``: the builder then reads config and tokenizer from the
   folder and never touches the hub;
4. fidelity: teacher-forced comparison with the reference (``fidelity.py``);
   below the entry's ``min_agreement`` the build fails and nothing is installed;
5. install: hash every file, write ``manifest.json``, atomic rename.

The builder's ``genai_config.json`` is left as written (one intra-op thread);
the agent overlays ``intra_op_num_threads`` at load time, so the folder stays
portable between devices with different core counts.

Subprocess output goes to a log inside the staging folder; on failure it is
kept under ``<cache>/.logs/`` and its tail is put in the error.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import agent
from agent.modelbuild.gguf import assemble_gguf
from agent.models.cache import ModelCache
from agent.models.catalog import RECIPE_VERSION, CatalogEntry, GgufSource, get_entry
from agent.models.errors import (
    BuildExtraMissing,
    BuildFailed,
    DiskFull,
    FidelityTooLow,
    ModelError,
    enospc_as_disk_full,
)
from agent.models.manifest import Fidelity, Manifest, SourceRecord, record_files
from agent.models.progress import Progress

if TYPE_CHECKING:
    from agent.modelbuild.fidelity import FidelityResult

BUILD_MODULES = ("torch", "transformers", "gguf", "accelerate", "onnx", "onnx_ir")
BUILDER_MODULE = "onnxruntime_genai.models.builder"
LOG_TAIL_LINES = 40
STAGES = 5


def check_build_extra() -> None:
    missing = [m for m in BUILD_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise BuildExtraMissing(missing)


def log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    # The conversion runs `-m agent.modelbuild.convert`: make this source tree
    # importable even when the package is not installed.
    repo_root = str(Path(next(iter(agent.__path__))).parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH")) if p)
    return env


def run_logged(
    argv: list[str],
    *,
    name: str,
    stage: str,
    log: Path,
    cwd: Path,
    cache: ModelCache,
    needed_bytes: int,
    progress: Progress,
) -> None:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=child_env()
        )
        while True:
            try:
                rc = proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                progress.tick()
    if rc == 0:
        return
    kept = cache.root / ".logs" / f"{name}-{stage}.log"
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(log, kept)
    tail = log_tail(log)
    if "No space left on device" in tail:
        raise DiskFull(cache.root, needed_bytes, shutil.disk_usage(cache.root).free)
    raise BuildFailed(name, stage, f"exit code {rc}; last lines:\n{tail}", kept)


def run_convert(
    gguf: Path,
    hf_out: Path,
    reference: Path,
    *,
    workdir: Path,
    name: str,
    cache: ModelCache,
    progress: Progress,
    needed_bytes: int,
) -> None:
    """``python -m agent.modelbuild.convert``: GGUF -> HF float32 folder + reference logits.

    A GGUF inside ``workdir`` (a multi-part source concatenated there) is deleted
    afterwards: the HF folder replaces it.
    """
    run_logged(
        [
            sys.executable,
            "-m",
            "agent.modelbuild.convert",
            "--gguf",
            str(gguf),
            "--hf-out",
            str(hf_out),
            "--reference",
            str(reference),
        ],
        stage="convert",
        log=workdir / "convert.log",
        cwd=workdir,
        progress=progress,
        name=name,
        cache=cache,
        needed_bytes=needed_bytes,
    )
    if gguf.is_relative_to(workdir):
        gguf.unlink()


def gate_fidelity(name: str, result: FidelityResult, min_agreement: float) -> Fidelity:
    """The manifest's record of a fidelity measurement; raises :class:`FidelityTooLow`
    when the built model agrees with its source weights less than ``min_agreement``."""
    if result.top1_agreement < min_agreement:
        raise FidelityTooLow(name, result.top1_agreement, min_agreement, result.mean_kl)
    return Fidelity(
        prompts=result.prompts,
        tokens=result.tokens,
        top1_agreement=round(result.top1_agreement, 4),
        mean_kl=round(result.mean_kl, 6),
        min_agreement=min_agreement,
    )


def builder_version() -> str:
    try:
        return f"onnxruntime-genai {metadata.version('onnxruntime-genai')}"
    except metadata.PackageNotFoundError:
        return "onnxruntime-genai (unknown version)"


def builder_argv(entry: CatalogEntry, hf_dir: Path, out_dir: Path, cache_dir: Path) -> list[str]:
    """The builder command line for an entry (kept pure for tests)."""
    recipe = entry.recipe
    if recipe is None:
        raise ModelError(f"{entry.name!r} has no build recipe")
    argv = [
        sys.executable,
        "-m",
        BUILDER_MODULE,
        "-i",
        str(hf_dir),
        "-o",
        str(out_dir),
        "-p",
        recipe.precision,
        "-e",
        recipe.execution_provider,
        "-c",
        str(cache_dir),
    ]
    if recipe.extra_options:
        argv += ["--extra_options", *(f"{k}={v}" for k, v in recipe.extra_options.items())]
    return argv


def build(
    name: str,
    cache: ModelCache,
    *,
    progress: Progress | None = None,
    force: bool = False,
) -> Manifest:
    """Build ``name`` into ``cache`` and return its manifest.

    An installed, current build is returned as is unless ``force``.
    """
    entry = get_entry(name)
    recipe = entry.recipe
    if recipe is None or not isinstance(entry.source, GgufSource):
        raise ModelError(
            f"{name!r} is a prebuilt download; run `edge-agent models download {name}`"
        )
    progress = progress or Progress(STAGES)
    existing = cache.manifest(name)
    if existing is not None and cache.is_current(name) and not force:
        progress.note(f"{name} is already built (recipe {RECIPE_VERSION}); use --force to rebuild")
        return existing

    check_build_extra()
    cache.root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache.root).free
    if free < recipe.scratch_bytes:
        raise DiskFull(cache.root, recipe.scratch_bytes, free)

    started = time.monotonic()
    with enospc_as_disk_full(cache.root, recipe.scratch_bytes), cache.staging(name) as tmp:
        with progress.stage("source: locate and check GGUF"):
            gguf, gguf_sha = assemble_gguf(entry, tmp)

        hf_dir, reference = tmp / "hf", tmp / "reference.npz"
        with progress.stage("convert: GGUF -> HF float32 + reference logits"):
            run_convert(
                gguf,
                hf_dir,
                reference,
                workdir=tmp,
                name=name,
                cache=cache,
                progress=progress,
                needed_bytes=recipe.scratch_bytes,
            )

        out_dir, builder_cache = tmp / "model", tmp / "builder-cache"
        with progress.stage(f"onnx: builder -p {recipe.precision} -e {recipe.execution_provider}"):
            run_logged(
                builder_argv(entry, hf_dir, out_dir, builder_cache),
                stage="onnx",
                log=tmp / "builder.log",
                cwd=tmp,
                progress=progress,
                name=name,
                cache=cache,
                needed_bytes=recipe.scratch_bytes,
            )
            # The intermediate HF folder is 4x the parameter count in bytes.
            shutil.rmtree(hf_dir, ignore_errors=True)
            shutil.rmtree(builder_cache, ignore_errors=True)

        with progress.stage("fidelity: teacher-forced vs source weights"):
            from agent.modelbuild.fidelity import measure

            result = measure(out_dir, reference)
            progress.note(
                f"  top-1 agreement {result.top1_agreement:.3f} over {result.tokens} tokens, "
                f"mean KL {result.mean_kl:.4f} (minimum {recipe.min_agreement})"
            )
            fidelity = gate_fidelity(name, result, recipe.min_agreement)

        with progress.stage("install: hash files, write manifest"):
            manifest = Manifest(
                name=name,
                source=SourceRecord(
                    kind="pypi-gguf",
                    packages=entry.source.requirements,
                    sha256=gguf_sha,
                ),
                recipe_version=RECIPE_VERSION,
                precision=recipe.precision,
                execution_provider=recipe.execution_provider,
                builder=builder_version(),
                build_seconds=round(time.monotonic() - started, 1),
                fidelity=fidelity,
                files=record_files(out_dir),
            )
            cache.commit(out_dir, manifest)
    return manifest
