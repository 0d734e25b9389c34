"""Free text per portfolio model: which SLM each board profile ships for ``answer``.

Classify goes to the skill head first, so a profile's SLM matters mostly for free text.
This runs the question family of ``tests/data/eval`` (52 short factual and procedural
questions, ``task: answer``) through :class:`Engine` with the product's prompts, for each
installed portfolio model, and reports per model: accuracy (``bench.eval_data``'s rule),
the AUROC of its confidence, what the product's ``answer`` threshold escalates and the
system accuracy then (the cloud taken as right), the p50 time per answer, and the
model's size on disk. Both splits are shown; nothing is fitted or tuned here.

It runs every model afresh and leaves ``bench.routing``'s per-item cache as it is.

    edge-agent models build qwen2.5-coder-0.5b-instruct --install-source   # ~3 min
    edge-agent models build qwen2.5-coder-1.5b-instruct --install-source   # ~6 min
    nice -n 15 python -m bench.free_text [--models a,b] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from agent.config import PolicySettings
from agent.models import ModelCache, default_cache_dir
from bench._common import table, write_results
from bench.eval_data import load_family, split_of
from bench.routing import cut_at, run_model
from edge_slm.contract import Task

MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma list of catalog names")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    threshold = PolicySettings().thresholds[Task.ANSWER]
    cache = ModelCache(default_cache_dir())
    items = load_family("question")
    results: dict[str, Any] = {}
    rows = []
    for name in args.models.split(","):
        manifest = cache.manifest(name)
        if manifest is None:
            print(f"{name}: not installed, skipped (`edge-agent models build {name}`)")
            continue
        outs = run_model(name, items, reuse=False, threads=args.threads, store=False)
        for which in ("heldout", "all"):
            picked = [
                o
                for i, o in zip(items, outs, strict=True)
                if which == "all" or split_of(i.id) == which
            ]
            right = [bool(o["correct"]) for o in picked]
            cut = cut_at(right, [float(o["confidence"]) for o in picked], threshold)
            summary = {
                "n": len(picked),
                "accuracy": sum(right) / len(picked),
                "auroc": cut.auroc,
                "escalated": cut.escalated,
                "kept_accuracy": cut.kept_accuracy,
                "system_accuracy": cut.system_accuracy,
                "p50_s": statistics.median(float(o["s"]) for o in picked),
                "disk_mb": manifest.total_size / 1e6,
            }
            results.setdefault(name, {})[which] = summary
            rows.append([name, which, *summary.values()])
    cols = ["model", "split", "n", "accuracy", "AUROC", "escalated", "kept acc", "system acc"]
    cols += ["p50 s", "disk MB"]
    print(table(cols, rows))
    print(write_results("free_text", {"threshold": threshold, "models": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
