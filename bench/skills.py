"""Skills on the classify path: prefix-KV reuse latency, and accuracy/AUROC/ECE vs bare.

Two parts, both on the held-out split of ``tests/data/eval`` (``bench.eval_data.split_of``:
never used for the built-in skills' exemplars):

* ``latency`` (default model): the 12-label ``home_intents`` skill on every held-out voice
  command, three ways per item in rotating order, same engine, same process:
  - ``skill+reuse``: ``Engine.classify_fixed`` with the skill's fixed prompt kept
    prefilled; the request appends only its own turn, scores, rewinds;
  - ``skill fresh``: the same tokens prefilled from scratch (``reuse=False``): the cost
    of a few-shot prompt without reuse, the baseline of the ratio;
  - ``bare``: the product's inline-labels prompt (``build_messages``) with ``classify``;
  - ``skill+reuse, prefix``: as ``skill+reuse`` with distinguishing-prefix scoring.
  p50/p95 wall time per call, ratios to ``skill fresh`` and ``bare``, and the largest
  difference between the reuse and fresh label probabilities (they run the same tokens).
* ``accuracy`` (each ``--models``): every held-out voice and sensor item, ``bare`` (inline
  labels, the product's prompt, full-sequence scoring) vs ``skill`` (``home_intents`` /
  ``sensor_state``, prefix reuse, full-sequence scoring, contextual calibration: the
  ``classify_fixed`` defaults the agent uses: calibration as the skill says, on for
  ``home_intents``, off for ``sensor_state``), plus two ablations: the skill with its
  calibration setting flipped, and with distinguishing-prefix scoring (the cheaper rule):
  accuracy, AUROC of confidence vs correctness, expected calibration error (10 bins),
  accuracy with the least confident 25% sent to a perfect cloud, mean ms per request.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from bench._common import (
    cpu_busy_s,
    percentile,
    proc_cpu_s,
    table,
    wait_for_quiet,
    write_results,
)
from bench.eval_data import EvalItem, load_family, split
from bench.routing import at_rate, auroc, ece, escalation_curve

DEFAULT_MODEL = "smollm2-135m-instruct"
MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")
SKILL_OF = {"voice": "home_intents", "sensor": "sensor_state"}
METHODS = ("bare", "skill", "skill, calibration flipped", "skill, prefix scoring")


def _engine(name: str, threads: int) -> Any:
    from agent.engine.engine import Engine
    from agent.models import ModelCache, default_cache_dir

    return Engine(
        ModelCache(default_cache_dir()).require(name), name=name, provider="cpu", threads=threads
    )


def heldout(family: str, limit: int = 0) -> list[EvalItem]:
    return split(load_family(family), "heldout")[: limit or None]


def latency(model: str, threads: int, limit: int, quiet_wait: float) -> dict[str, Any]:
    from agent.engine.prompts import build_messages, user_content
    from agent.skills import SkillRegistry

    items = heldout("voice", limit)
    skill = SkillRegistry().get("home_intents")
    assert skill is not None
    prompt = skill.prompt()
    engine = _engine(model, threads)

    def run(way: str, item: EvalItem) -> Any:
        if way == "bare":
            return engine.classify(build_messages(item.request), item.request.labels or [])
        return engine.classify_fixed(
            prompt,
            user_content(item.request),
            reuse=way != "skill fresh",
            scoring="prefix" if way == "skill+reuse, prefix" else "full",
        )

    ways = ("skill+reuse", "skill fresh", "bare", "skill+reuse, prefix")
    for way in ways:  # warm-up; the first reuse call prefills and keeps the prefix
        run(way, items[0])
    wait_for_quiet(quiet_wait)
    busy0, own0, t0 = cpu_busy_s(), proc_cpu_s("self"), time.perf_counter()
    times: dict[str, list[float]] = {w: [] for w in ways}
    correct = dict.fromkeys(ways, 0)
    diff = 0.0
    prompt_tokens: dict[str, list[int]] = {w: [] for w in ways}
    for i, item in enumerate(items):
        out = {}
        for way in ways[i % len(ways) :] + ways[: i % len(ways)]:  # rotate the order
            start = time.perf_counter()
            c = run(way, item)
            times[way].append((time.perf_counter() - start) * 1000)
            out[way] = c
            correct[way] += c.label == item.gold["label"]
            prompt_tokens[way].append(c.prompt_tokens)
        a, b = out["skill+reuse"].scores, out["skill fresh"].scores
        diff = max(diff, *(abs(a[k] - b[k]) for k in a))
    stats = {
        w: {
            "p50_ms": percentile(v, 50),
            "p95_ms": percentile(v, 95),
            "mean_ms": float(np.mean(v)),
            "accuracy": correct[w] / len(items),
            "prompt_tokens": float(np.mean(prompt_tokens[w])),
        }
        for w, v in times.items()
    }
    ratios = {
        f"{q} {way} / {base}": stats[way][f"{q}_ms"] / stats[base][f"{q}_ms"]
        for way in ("skill+reuse", "skill+reuse, prefix")
        for base in ("skill fresh", "bare")
        for q in ("p50", "p95")
    }
    elapsed = time.perf_counter() - t0
    foreign = max(0.0, (cpu_busy_s() - busy0 - (proc_cpu_s("self") - own0)) / elapsed)
    return {
        "model": model,
        "foreign_cpu_cores": foreign,
        "items": len(items),
        "labels": len(skill.labels),
        "prefix_tokens": engine._prefixes[next(iter(engine._prefixes))].length,
        "stats": stats,
        "ratios": ratios,
        "max_prob_diff_reuse_vs_fresh": diff,
        "times_ms": times,
    }


def _metrics(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    conf = np.array([r["confidence"] for r in rows])
    ok = np.array([r["correct"] for r in rows])
    curve = escalation_curve(conf, ok, np.ones_like(ok))
    return {
        "n": len(rows),
        "accuracy": float(ok.mean()),
        "auroc": auroc(conf, ok),
        "ece": ece(conf, ok),
        "acc_at_25_perfect_cloud": at_rate(curve, 25),
        "mean_ms": float(np.mean([r["ms"] for r in rows])),
    }


def accuracy(models: Sequence[str], threads: int, limit: int) -> dict[str, Any]:
    from agent.engine.prompts import build_messages, user_content
    from agent.skills import SkillRegistry

    registry = SkillRegistry()
    prompts = {}
    for family, name in SKILL_OF.items():
        skill = registry.get(name)
        assert skill is not None
        prompts[family] = skill.prompt()
    items = [i for family in SKILL_OF for i in heldout(family, limit)]
    result: dict[str, Any] = {}
    for model in models:
        engine = _engine(model, threads)
        rows: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
        for n, item in enumerate(items, 1):
            for method, out in rows.items():
                start = time.perf_counter()
                if method == "bare":
                    c = engine.classify(build_messages(item.request), item.request.labels or [])
                else:
                    c = engine.classify_fixed(
                        prompts[item.family],
                        user_content(item.request),
                        scoring="prefix" if method == "skill, prefix scoring" else "full",
                        calibrate=(not prompts[item.family].calibrate)
                        if method == "skill, calibration flipped"
                        else None,
                    )
                out.append(
                    {
                        "family": item.family,
                        "confidence": c.confidence,
                        "correct": c.label == item.gold["label"],
                        "ms": (time.perf_counter() - start) * 1000,
                    }
                )
            if n % 25 == 0 or n == len(items):
                print(f"  {model}: {n}/{len(items)}", flush=True)
        result[model] = {
            method: {
                "all": _metrics(r),
                **{f: _metrics([x for x in r if x["family"] == f]) for f in SKILL_OF},
            }
            for method, r in rows.items()
        }
    return result


def report_latency(r: dict[str, Any]) -> str:
    cols = ["p50_ms", "p95_ms", "mean_ms", "accuracy", "prompt_tokens"]
    return "\n".join(
        [
            f"{r['model']}: {r['items']} held-out voice commands, {r['labels']}-label "
            f"home_intents, fixed prefix {r['prefix_tokens']} tokens, "
            f"foreign CPU {r['foreign_cpu_cores']:.2f} cores",
            table(["path", *cols], [[w, *(s[c] for c in cols)] for w, s in r["stats"].items()]),
            table(["ratio", "value"], [[k, v] for k, v in r["ratios"].items()]),
            f"largest |p(reuse) - p(fresh)| over all labels and items: "
            f"{r['max_prob_diff_reuse_vs_fresh']:.4f}",
        ]
    )


def report_accuracy(r: dict[str, Any]) -> str:
    cols = ["n", "accuracy", "auroc", "ece", "acc_at_25_perfect_cloud", "mean_ms"]
    rows = [
        [model, method, part, *(m[c] for c in cols)]
        for model, methods in r.items()
        for method, parts in methods.items()
        for part, m in parts.items()
    ]
    return table(["model", "method", "items", *cols], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.skills",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("part", choices=["latency", "accuracy", "all"], nargs="?", default="all")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="latency: catalog name")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="accuracy: models")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads")
    parser.add_argument("--limit", type=int, default=0, help="first N held-out items per family")
    parser.add_argument("--quiet-wait", type=float, default=30, help="seconds to wait for idle")
    args = parser.parse_args(argv)
    data: dict[str, Any] = {"threads": args.threads, "limit": args.limit}
    if args.part in ("latency", "all"):
        data["latency"] = latency(args.model, args.threads, args.limit, args.quiet_wait)
        print(report_latency(data["latency"]) + "\n")
    if args.part in ("accuracy", "all"):
        data["accuracy"] = accuracy(args.models, args.threads, args.limit)
        print(report_accuracy(data["accuracy"]) + "\n")
    name = "skills" if args.part == "all" else f"skills_{args.part}"
    print(f"wrote {write_results(name, data)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
