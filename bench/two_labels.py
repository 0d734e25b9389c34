"""Two-label classify on HWU64's test file: does the device escalate when it is unsure?

Before the cascade, a two-label request could never escalate: its confidence was the
SLM's top probability, at least 0.5, above the then 0.37 threshold. Now the agent's
confidence is a calibrated probability of being right (the zero-shot head, cached by
label set, then the SLM where the head is unsure), compared with the classify
threshold (0.6). This runs the agent's own answering code (``agent.answering.answer``,
what its inference worker calls) on ad-hoc two-label requests built from four pairs
of opposite HWU64 intents, and reports per pair and overall: accuracy, AUROC, the
share escalated, the share of *wrong* answers that escalate, and the wrong answers
kept with confidence at or over the threshold. The baseline, measured in the same run,
is the SLM's raw top probability: its accuracy, AUROC and what the old rule escalated.

Nothing is fitted or tuned here: the labels are the app's, the test file is HWU64's
held-out one. Needs the default model and the embedder (``scripts/bootstrap.sh``).

    nice -n 15 python -m bench.two_labels [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from agent.answering import answer
from agent.config import PolicySettings
from agent.engine.engine import StopWhen
from agent.engine.prompts import build_messages
from agent.skills.calibration import auroc
from bench._common import table, write_results
from bench.learning import HWU64, read_intents
from bench.skills import _embedder, _engine
from edge_slm.contract import Request, Task

#: (label, HWU64 intent) pairs: opposite commands an app would list together.
PAIRS = [
    (("lights_on", "iot_hue_lighton"), ("lights_off", "iot_hue_lightoff")),
    (("brighter", "iot_hue_lightup"), ("dimmer", "iot_hue_lightdim")),
    (("volume_up", "audio_volume_up"), ("volume_down", "audio_volume_down")),
    (("plug_on", "iot_wemo_on"), ("plug_off", "iot_wemo_off")),
]
OLD_THRESHOLD = 0.37  # the classify threshold before the cascade


def _items(path: Path) -> dict[str, list[str]]:
    by_intent: dict[str, list[str]] = {}
    for text, intent in read_intents(path):
        by_intent.setdefault(intent, []).append(text)
    return by_intent


def _summary(rows: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    right = [r["right"] for r in rows]
    conf = [r["confidence"] for r in rows]
    wrong = [r for r in rows if not r["right"]]
    raw_right = [r["raw_right"] for r in rows]
    return {
        "n": len(rows),
        "accuracy": sum(right) / len(rows),
        "auroc": auroc(conf, right),
        "escalated": sum(c < threshold for c in conf) / len(rows),
        "wrong": len(wrong),
        "wrong_escalated": (
            sum(r["confidence"] < threshold for r in wrong) / len(wrong) if wrong else None
        ),
        "confident_wrong": sum(r["confidence"] >= threshold for r in wrong),
        "raw_accuracy": sum(raw_right) / len(rows),
        "raw_auroc": auroc([r["raw_confidence"] for r in rows], raw_right),
        "raw_escalated_old_rule": sum(r["raw_confidence"] < OLD_THRESHOLD for r in rows)
        / len(rows),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", type=Path, default=HWU64 / "test.jsonl", help="HWU64 test.jsonl")
    ap.add_argument("--embedder", default="", help="an installed embedder (default: the agent's)")
    args = ap.parse_args(argv)
    threshold = PolicySettings().thresholds[Task.CLASSIFY]
    engine = _engine("smollm2-135m-instruct", args.threads)
    embedder = _embedder(args.threads, args.embedder)
    texts = _items(args.data)
    rows: list[dict[str, Any]] = []
    for (label_a, intent_a), (label_b, intent_b) in PAIRS:
        labels = [label_a, label_b]
        for label, intent in ((label_a, intent_a), (label_b, intent_b)):
            for text in texts.get(intent, []):
                request = Request.model_validate(
                    {"v": 1, "text": text, "task": "classify", "labels": labels}
                )
                start = time.perf_counter()
                reply = answer(engine, request, max_tokens=8, stop=StopWhen(), embedder=embedder)
                ms = (time.perf_counter() - start) * 1000
                raw = engine.classify(build_messages(request), labels)
                rows.append(
                    {
                        "pair": f"{label_a}/{label_b}",
                        "text": text,
                        "gold": label,
                        "label": reply.label,
                        "confidence": float(reply.confidence or 0.0),
                        "right": reply.label == label,
                        "raw_confidence": raw.confidence,
                        "raw_right": raw.label == label,
                        "ms": ms,
                    }
                )
    pairs = dict.fromkeys(r["pair"] for r in rows)  # in PAIRS order, those with items
    summaries = {p: _summary([r for r in rows if r["pair"] == p], threshold) for p in pairs}
    summaries["all"] = _summary(rows, threshold)
    cols = ["pair", "n", "accuracy", "AUROC", "escalated", "wrong", "wrong escalated"]
    cols += ["confident wrong", "raw acc", "raw AUROC", "raw escalated (old rule)"]
    keys = ["n", "accuracy", "auroc", "escalated", "wrong", "wrong_escalated"]
    keys += ["confident_wrong", "raw_accuracy", "raw_auroc", "raw_escalated_old_rule"]
    print(table(cols, [[p, *(s[k] for k in keys)] for p, s in summaries.items()]))
    result = {"threshold": threshold, "old_threshold": OLD_THRESHOLD, "summaries": summaries}
    name = "two_labels" + (f"_{args.embedder}" if args.embedder else "")
    print(write_results(name, {**result, "embedder": embedder.name, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
