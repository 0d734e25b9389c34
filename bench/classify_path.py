"""Classify path vs free generation: voice-command intent latency, same model, same process.

Every voice command of ``tests/data/eval/voice_intents.jsonl`` (12 intents) goes through
one ``agent.engine.Engine`` twice, in alternating order per item, with the product's
prompt (``build_messages``):

* ``classify``: ``Engine.classify`` scores *all 12 labels* (prompt prefilled once, labels
  walked as a token trie with ``rewind_to``), giving a label and a calibrated confidence;
* ``generate``: greedy ``Engine.generate`` of the answer text with ``max_tokens`` = the
  gold label's token count + 1 (room for the end-of-turn token): the cheapest free
  generation that could produce the same answer, which then still needs matching to a
  label and gives no distribution over the others.

Wall time per call (template, tokenizing, prefill, decode or scoring), p50/p99 and the
ratio classify / generate; also how often each picks the gold label (generation counts
when its text, normalized, equals the gold label).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from bench._common import cpu_busy_s, percentile, proc_cpu_s, report, table, wait_for_quiet
from bench.eval_data import load_family


def _norm(text: str) -> str:
    """Lenient: case, spaces, a list dash, quotes, backslash escapes and end punctuation."""
    out = text.strip().lower().replace("\\_", "_").strip("-*`'\".: ")
    return out.replace(" ", "_")


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915 - one linear script
    parser = argparse.ArgumentParser(prog="python -m bench.classify_path", description=__doc__)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="catalog name")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads")
    parser.add_argument("--limit", type=int, default=0, help="first N items only (0 = all)")
    parser.add_argument("--quiet-wait", type=float, default=60, help="seconds to wait for idle")
    args = parser.parse_args(argv)

    from agent.engine.engine import Engine
    from agent.engine.prompts import build_messages
    from agent.models import ModelCache, default_cache_dir

    items = load_family("voice")
    if args.limit:
        items = items[: args.limit]
    engine = Engine(
        ModelCache(default_cache_dir()).require(args.model),
        name=args.model,
        provider="cpu",
        threads=args.threads,
    )
    tok = engine._tokenizer
    warm = build_messages(items[0].request)
    engine.classify(warm, items[0].request.labels or [])
    engine.generate(warm, max_tokens=4)
    wait_for_quiet(args.quiet_wait)
    busy0, own0, t0 = cpu_busy_s(), proc_cpu_s("self"), time.perf_counter()
    times: dict[str, list[float]] = {"classify": [], "generate": []}
    correct = {"classify": 0, "generate": 0}
    scored: list[int] = []
    gen_tokens: list[int] = []
    samples: list[dict[str, str]] = []
    for i, item in enumerate(items):
        messages = build_messages(item.request)
        labels = item.request.labels or []
        gold = item.gold["label"]
        budget = len(tok.encode(gold)) + 1
        for what in ("classify", "generate") if i % 2 == 0 else ("generate", "classify"):
            start = time.perf_counter()
            if what == "classify":
                c = engine.classify(messages, labels)
                elapsed = time.perf_counter() - start
                correct["classify"] += c.label == gold
                scored.append(c.scored_tokens)
            else:
                g = engine.generate(messages, max_tokens=budget)
                elapsed = time.perf_counter() - start
                correct["generate"] += _norm(g.text) == gold
                if len(samples) < 12:
                    samples.append({"text": item.request.text, "gold": gold, "generated": g.text})
                gen_tokens.append(g.completion_tokens)
            times[what].append(elapsed * 1000)
    elapsed_all = time.perf_counter() - t0
    own = proc_cpu_s("self") - own0
    foreign = max(0.0, (cpu_busy_s() - busy0 - own) / elapsed_all)

    n = len(items)
    stats: dict[str, dict[str, Any]] = {
        w: {
            "p50_ms": percentile(v, 50),
            "p99_ms": percentile(v, 99),
            "mean_ms": sum(v) / len(v),
            "accuracy": correct[w] / n,
        }
        for w, v in times.items()
    }
    stats["classify"]["scored_tokens_mean"] = sum(scored) / n
    stats["generate"]["generated_tokens_mean"] = sum(gen_tokens) / n
    ratio = {
        "p50 classify/generate": stats["classify"]["p50_ms"] / stats["generate"]["p50_ms"],
        "p99 classify/generate": stats["classify"]["p99_ms"] / stats["generate"]["p99_ms"],
        "mean classify/generate": stats["classify"]["mean_ms"] / stats["generate"]["mean_ms"],
    }
    print(f"\n{args.model}, {n} voice commands, 12 labels, {args.threads} threads, "
          f"foreign CPU {foreign:.2f} cores\n")  # fmt: skip
    cols = ["p50_ms", "p99_ms", "mean_ms", "accuracy"]
    print(table(["path", *cols], [[w, *[s[c] for c in cols]] for w, s in stats.items()]))
    print("\n" + table(["ratio", "value"], list(ratio.items())))
    data = {
        "model": args.model,
        "threads": args.threads,
        "items": n,
        "labels": len(items[0].request.labels or []),
        "pid": os.getpid(),
        "stats": stats,
        "ratios": ratio,
        "foreign_cpu_share": foreign,
        "generated_samples": samples,
        "times_ms": times,
    }
    return report("classify_path", data)


if __name__ == "__main__":
    sys.exit(main())
