"""``edge-agent models tune``: fine-tune a catalog model on classify and act examples.

The distillation loop: the relay's export (the cloud model's labels), or any JSONL of
(request, answer) pairs, teaches the edge model; the result is a new, versioned model
in the cache, ``<base>-tuned-<8 hex>`` by default, with a manifest saying where it
came from and how much it gained.

Stages (each timed by :class:`Progress`):

1. data: load and check the JSONL (``tune_data``), split it: a held-out share by
   hash of the request id, and the project's eval-set held-out items never trained;
2. before: the installed base model on the held-out splits (``tune_eval``);
3. convert: ``python -m agent.modelbuild.convert``, the base GGUF -> HF float32 folder;
4. train: ``python -m agent.modelbuild.tune_train``, full fine-tuning or LoRA on CPU;
5. onnx: the onnxruntime-genai builder with the base's catalog recipe (precision,
   extra options), as ``models build`` runs it;
6. fidelity: the built model against the tuned weights, gated like a build; and its
   agreement with the *base* weights, recorded as a measure of drift;
7. after: the tuned model on the same held-out splits;
8. install: manifest (with a :class:`TuneRecord`), atomic rename into the cache.

Training needs the ``build`` extra (torch, transformers), never installed on devices.
The tuned folder is an ordinary model: ``models list`` shows it, the agent selects it
by name (``model.name``), ``models verify``/``rm`` work on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.modelbuild.build import (
    builder_argv,
    builder_version,
    check_build_extra,
    child_env,
    gate_fidelity,
    log_tail,
    run_convert,
    run_logged,
)
from agent.modelbuild.gguf import assemble_gguf
from agent.modelbuild.params import TuneParams
from agent.modelbuild.tune_data import (
    EVAL_DIR,
    Example,
    Loaded,
    Plan,
    TuneDataError,
    load_eval_set,
    load_examples,
    plan,
)
from agent.modelbuild.tune_eval import format_table
from agent.modelbuild.tune_train import PROGRESS
from agent.models.cache import ModelCache, check_name
from agent.models.catalog import CATALOG, RECIPE_VERSION, CatalogEntry, GgufSource, get_entry
from agent.models.errors import (
    BuildFailed,
    DiskFull,
    ModelError,
    enospc_as_disk_full,
)
from agent.models.manifest import (
    EvalFigures,
    Fidelity,
    Manifest,
    SourceRecord,
    TuneRecord,
    record_files,
)
from agent.models.progress import Progress

STAGES = 8
PROMPT_RULE = (
    "skills: system prompt without exemplars; inline labels: the bare prompt; "
    "act: the act prompt with the tool set's exemplars"
)


@dataclass(frozen=True, slots=True)
class TuneResult:
    manifest: Manifest
    table: str
    installed: bool  # False: an identical tune was already installed


def tune_key(base: str, data_sha256: str, params: TuneParams, train: list[str]) -> str:
    """sha256 of everything that decides the tuned weights (``train``: the keys of the
    examples trained on, which the eval set's held-out items also decide); its first 8
    hex name the model."""
    canonical = json.dumps(
        {
            "base": base,
            "data": data_sha256,
            "params": params.key_fields(),
            "recipe": RECIPE_VERSION,
            "train": sorted(train),
        },
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _end_token_id(model_dir: Path) -> int:
    """The end-of-turn token the engine appends to every label (``Engine._end_id``)."""
    eos = json.loads((model_dir / "genai_config.json").read_text())["model"]["eos_token_id"]
    return int(eos[0] if isinstance(eos, list) else eos)


def _run_streamed(
    argv: list[str], *, name: str, log: Path, cwd: Path, cache: ModelCache, progress: Progress
) -> None:
    """Run the training child, showing its progress lines and keeping all in ``log``."""
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=child_env(),
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        assert proc.stdout is not None  # noqa: S101 - stdout=PIPE above
        for line in proc.stdout:
            out.write(line)
            if line.startswith(PROGRESS):
                progress.note("  " + line[len(PROGRESS) :].strip())
        rc = proc.wait()
    if rc == 0:
        return
    kept = cache.root / ".logs" / f"{name}-train.log"
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(log, kept)
    raise BuildFailed(name, "train", f"exit code {rc}; last lines:\n{log_tail(log)}", kept)


def measured_splits(p: Plan) -> dict[str, list[Example]]:
    """The held-out splits measured before and after, act examples apart from classify."""
    out: dict[str, list[Example]] = {}
    for name, items in (("data", p.heldout), ("official", p.official)):
        out[name] = [e for e in items if e.call is None]
        out[f"{name}-act"] = [e for e in items if e.call is not None]
    return out


def _write_examples(path: Path, examples: list[Example]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for ex in examples:
            out.write(json.dumps({"messages": ex.chat(), "answer": ex.target}) + "\n")


def _measure(
    model_dir: Path, splits: dict[str, list[Example]], name: str
) -> dict[str, EvalFigures]:
    from agent.engine.engine import Engine
    from agent.modelbuild.tune_eval import evaluate

    engine = Engine(model_dir, name=name, provider="cpu")
    return {split: evaluate(engine, items) for split, items in splits.items() if items}


def _describe(loaded: Loaded, p: Plan, fraction: float) -> list[str]:
    lines = [
        f"  {len(loaded.examples)} classify and act examples in {loaded.path.name}: "
        f"{len(p.train)} train, {len(p.heldout)} held out ({fraction:.0%} by hash of id)"
    ]
    if p.capped:
        lines.append(f"  {p.capped} training examples left out by --max-examples")
    if p.protected:
        lines.append(f"  {p.protected} are held-out items of the eval set: never trained")
    if p.official:
        lines.append(f"  + {len(p.official)} held-out items of the eval set, measured")
    lines += [f"  skipped {n} lines: {reason}" for reason, n in sorted(loaded.skipped.items())]
    return lines


@dataclass(frozen=True, slots=True)
class _Built:
    """What stages 3-6 leave in the staging folder."""

    model_dir: Path
    gguf_sha256: str | None
    stats: dict[str, Any]
    fidelity: Fidelity
    base_agreement: float


def _load(
    data: Path, params: TuneParams, eval_dir: Path | None, progress: Progress
) -> tuple[Loaded, Plan]:
    with progress.stage("data: load, check and split"):
        loaded = load_examples(data)
        eval_set = load_eval_set(eval_dir) if eval_dir is not None else None
        split = plan(
            loaded.examples,
            heldout_fraction=params.heldout_fraction,
            eval_set=eval_set,
            max_examples=params.max_examples,
            seed=params.seed,
        )
        for line in _describe(loaded, split, params.heldout_fraction):
            progress.note(line)
        if not split.train:
            raise TuneDataError(
                data,
                None,
                "no training examples (every classify and act line is held out or skipped)",
            )
    return loaded, split


def _train_argv(tmp: Path, params: TuneParams, end_id: int) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "agent.modelbuild.tune_train",
        "--hf-in",
        str(tmp / "hf-base"),
        "--examples",
        str(tmp / "train.jsonl"),
        "--hf-out",
        str(tmp / "hf-tuned"),
        "--reference",
        str(tmp / "reference.npz"),
        "--stats",
        str(tmp / "stats.json"),
        "--epochs",
        str(params.epochs),
        "--lr",
        repr(params.lr),
        "--batch-size",
        str(params.batch_size),
        "--seed",
        str(params.seed),
        "--end-token-id",
        str(end_id),
        "--threads",
        str(len(os.sched_getaffinity(0))),
    ]
    if params.method == "lora":
        argv += ["--lora-rank", str(params.lora_rank), "--lora-alpha", str(params.lora_alpha)]
    return argv


def _train_and_build(
    entry: CatalogEntry,
    train: list[Example],
    params: TuneParams,
    *,
    end_id: int,
    name: str,
    tmp: Path,
    cache: ModelCache,
    progress: Progress,
) -> _Built:
    """Stages 3-6: convert the base, train, build the ONNX model, check its fidelity."""
    recipe = entry.recipe
    assert recipe is not None  # noqa: S101 - tune() checked it
    with progress.stage("convert: base GGUF -> HF float32"):
        gguf, gguf_sha = assemble_gguf(entry, tmp)
        run_convert(
            gguf,
            tmp / "hf-base",
            tmp / "reference-base.npz",
            workdir=tmp,
            name=name,
            cache=cache,
            progress=progress,
            needed_bytes=recipe.scratch_bytes,
        )

    method = f"LoRA rank {params.lora_rank}" if params.method == "lora" else "full"
    with progress.stage(f"train: {len(train)} examples, {params.epochs} epochs, {method}"):
        _write_examples(tmp / "train.jsonl", train)
        _run_streamed(
            _train_argv(tmp, params, end_id),
            name=name,
            log=tmp / "train.log",
            cwd=tmp,
            cache=cache,
            progress=progress,
        )
        shutil.rmtree(tmp / "hf-base", ignore_errors=True)
        stats = json.loads((tmp / "stats.json").read_text(encoding="utf-8"))

    out_dir = tmp / "model"
    with progress.stage(f"onnx: builder -p {recipe.precision} -e {recipe.execution_provider}"):
        run_logged(
            builder_argv(entry, tmp / "hf-tuned", out_dir, tmp / "builder-cache"),
            stage="onnx",
            log=tmp / "builder.log",
            needed_bytes=recipe.scratch_bytes,
            name=name,
            cwd=tmp,
            cache=cache,
            progress=progress,
        )
        shutil.rmtree(tmp / "hf-tuned", ignore_errors=True)
        shutil.rmtree(tmp / "builder-cache", ignore_errors=True)

    with progress.stage("fidelity: built model vs tuned weights, and vs the base"):
        from agent.modelbuild.fidelity import measure

        result = measure(out_dir, tmp / "reference.npz")
        drift = measure(out_dir, tmp / "reference-base.npz")
        progress.note(
            f"  top-1 agreement {result.top1_agreement:.3f} with the tuned weights "
            f"(minimum {recipe.min_agreement}), {drift.top1_agreement:.3f} with the base"
        )
        fidelity = gate_fidelity(name, result, recipe.min_agreement)
    return _Built(
        model_dir=out_dir,
        gguf_sha256=gguf_sha,
        stats=stats,
        fidelity=fidelity,
        base_agreement=round(drift.top1_agreement, 4),
    )


def tune(
    base: str,
    data: Path,
    cache: ModelCache,
    *,
    params: TuneParams | None = None,
    name: str | None = None,
    force: bool = False,
    eval_dir: Path | None = EVAL_DIR,
    progress: Progress | None = None,
) -> TuneResult:
    """Tune ``base`` on ``data`` and install the result into ``cache``.

    An installed tune of the same base, data and settings is returned as is unless
    ``force``. Raises :class:`TuneDataError` on bad data, before any training.
    """
    params = params or TuneParams()
    params.check()
    entry = get_entry(base)
    recipe = entry.recipe
    if recipe is None or not isinstance(entry.source, GgufSource):
        raise ModelError(f"{base!r} is a prebuilt download; only models built here can be tuned")
    progress = progress or Progress(STAGES)
    loaded, split = _load(data, params, eval_dir, progress)  # bad data fails first, and fast
    base_dir = cache.require(base)

    key = tune_key(base, loaded.sha256, params, [e.key for e in split.train])
    name = check_name(name or f"{base}-tuned-{key[:8]}")
    if name in CATALOG:
        raise ModelError(f"{name!r} is a catalog model; pick another --name")
    existing = cache.manifest(name)
    if existing is not None and not force:
        if existing.tune is not None and existing.tune.key == key:
            progress.note(f"{name} is already installed with this data and these settings")
            table = format_table(existing.tune.before, existing.tune.after, base=base, tuned=name)
            return TuneResult(existing, table, installed=False)
        raise ModelError(f"{name!r} is already installed; pass --force to replace it")

    check_build_extra()
    cache.root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache.root).free
    if free < recipe.scratch_bytes:
        raise DiskFull(cache.root, recipe.scratch_bytes, free)

    splits = measured_splits(split)
    started = time.monotonic()
    with enospc_as_disk_full(cache.root, recipe.scratch_bytes), cache.staging(name) as tmp:
        with progress.stage(f"before: {base} on the held-out examples"):
            before = _measure(base_dir, splits, base)
        built = _train_and_build(
            entry,
            split.train,
            params,
            end_id=_end_token_id(base_dir),
            name=name,
            tmp=tmp,
            cache=cache,
            progress=progress,
        )
        with progress.stage(f"after: {name} on the held-out examples"):
            after = _measure(built.model_dir, splits, name)

        with progress.stage("install: hash files, write manifest"):
            record = TuneRecord(
                base=base,
                key=key,
                data_file=data.name,
                data_sha256=loaded.sha256,
                examples=len(loaded.examples),
                train_examples=len(split.train),
                heldout_examples=len(split.heldout),
                official_heldout_examples=len(split.official),
                skipped=dict(loaded.skipped),
                **params.record_fields(),
                trained_weights=built.stats.get("trained_weights"),
                prompt=PROMPT_RULE,
                train_seconds=built.stats["seconds"],
                final_loss=built.stats["final_loss"],
                base_agreement=built.base_agreement,
                before=before,
                after=after,
            )
            manifest = Manifest(
                name=name,
                source=SourceRecord(
                    kind="tuned", packages=entry.source.requirements, sha256=built.gguf_sha256
                ),
                recipe_version=RECIPE_VERSION,
                precision=recipe.precision,
                execution_provider=recipe.execution_provider,
                builder=builder_version(),
                build_seconds=round(time.monotonic() - started, 1),
                fidelity=built.fidelity,
                tune=record,
                files=record_files(built.model_dir),
            )
            cache.commit(built.model_dir, manifest)
    return TuneResult(manifest, format_table(before, after, base=base, tuned=name), installed=True)
