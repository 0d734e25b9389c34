"""Free-text sensor reports on the default path: accuracy, confidence AUROC, escalation.

The ``report`` family of ``tests/data/eval`` (``sensor_reports.jsonl``) holds sensor
reports whose readings are written in the words ("Attic temperature has climbed to
31 °C", "Smoke detected in the hallway"), with no ``sensor`` field. Each is run as
the agent runs a request naming the ``sensor_state`` skill: ``classify_skill`` with
the default model and its shipped fit, the request's readings (none) and its text.
An answer whose confidence is under the agent's classify threshold escalates; the
cloud is taken as right (system accuracy). Gold marks reports that state a danger in
words (``gold.danger``): the target is that none of them is answered ``normal`` at
or above the threshold.

    nice -n 15 python -m bench.sensor_reports --split heldout
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from agent.config import PolicySettings
from agent.engine.prompts import user_content
from bench._common import percentile, table, write_results
from bench.eval_data import load_family, split
from bench.routing import cut_at
from edge_slm.contract import Task

SKILL = "sensor_state"


def run(split_name: str, threads: int, limit: int) -> dict[str, Any]:
    from agent.engine.engine import Engine
    from agent.models import DEFAULT_MODEL, ModelCache, default_cache_dir
    from agent.skills import SkillRegistry
    from agent.skills.classify import classify_skill

    items = split(load_family("report"), split_name)  # type: ignore[arg-type]
    items = items[: limit or None]
    skill = SkillRegistry().get(SKILL)
    assert skill is not None
    engine = Engine(
        ModelCache(default_cache_dir()).require(DEFAULT_MODEL),
        name=DEFAULT_MODEL,
        provider="cpu",
        threads=threads,
    )
    threshold = PolicySettings().thresholds[Task.CLASSIFY]
    rows: list[dict[str, Any]] = []
    for item in items:
        start = time.perf_counter()
        c = classify_skill(
            engine, skill, user_content(item.request), readings=item.request.readings
        )
        ms = (time.perf_counter() - start) * 1000
        rows.append(
            {
                "id": item.id,
                "gold": item.gold["label"],
                "danger": bool(item.gold.get("danger")),
                "label": c.label,
                "confidence": round(c.confidence, 4),
                "by_rule": c.basis is not None,
                "ms": round(ms, 2),
            }
        )
    return summarize(rows, threshold) | {"split": split_name, "model": DEFAULT_MODEL}


def summarize(rows: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    n = len(rows)
    correct = [r["label"] == r["gold"] for r in rows]
    cut = cut_at(correct, [r["confidence"] for r in rows], threshold)
    danger = [r for r in rows if r["danger"]]
    unsafe = [r["id"] for r in danger if r["label"] == "normal" and r["confidence"] >= threshold]
    return {
        "items": n,
        "threshold": threshold,
        "accuracy": sum(correct) / n,
        "auroc": cut.auroc,
        "escalated": cut.escalated,
        "edge_accuracy_kept": cut.kept_accuracy,
        "system_accuracy": cut.system_accuracy,
        "by_rule": sum(r["by_rule"] for r in rows) / n,
        "danger_items": len(danger),
        "danger_answered_normal_confidently": unsafe,
        "p50_ms": percentile([r["ms"] for r in rows], 50),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sensor_reports", description=__doc__)
    parser.add_argument("--split", choices=["dev", "heldout"], default="heldout")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0, help="first N items (smoke)")
    parser.add_argument("--name", default="sensor_reports", help="results file stem")
    args = parser.parse_args(argv)
    r = run(args.split, args.threads, args.limit)
    cols = ["split", "items", "accuracy", "AUROC", "escalated", "system acc", "by rule", "p50 ms"]
    print(
        table(
            cols,
            [
                [
                    r["split"],
                    r["items"],
                    r["accuracy"],
                    r["auroc"],
                    r["escalated"],
                    r["system_accuracy"],
                    r["by_rule"],
                    r["p50_ms"],
                ]
            ],
        )
    )
    print(
        f"danger reports: {r['danger_items']}; answered normal at confidence >= "
        f"{r['threshold']}: {r['danger_answered_normal_confidently'] or 'none'}"
    )
    print(write_results(args.name, r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
