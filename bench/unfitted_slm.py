"""A skill with no fit for the edge model: may the SLM's raw top share take the label
from an unsure head?

A freshly written skill has a head (fitted from its own texts) but no calibration of
the SLM (``edge-agent skills fit`` never ran on it), so the SLM's confidence is its raw
top share, not a P(correct). This replays HWU64 ``train.jsonl`` items (never
``test.jsonl``: this is where the rule in ``agent/skills/head_stage.combine`` is
chosen) through the head and the real SLM, and compares, on the requests where the
head is unsure (under ``ACCEPT``):

* ``slm may take the label``: ``combine(..., calibrated=True)``, the rule for a fitted
  SLM applied to the raw share (what the agent did before);
* ``head keeps the label``: ``combine(..., calibrated=False)``, the agent's rule now;
* ``head alone``: the SLM not run at all.

``--ad-hoc``: the same question for requests that list their own labels and name no
skill (``agent/skills/classify.classify_labels``): the zero-shot head of the label names
(and a head learned on the stream, as ``cloud-relay learn`` fits a label set's), the SLM
scoring the labels after the ad-hoc prompt, and the ad-hoc confidence (the head's, or
``min(c, 1 - c)`` when the SLM disagrees): may the SLM's label stand?

Two skills: ``hwu64`` (64 intents, the intent names alone) and ``home_fresh`` (5 labels,
``bench.learning.FRESH_SKILL``). Each with its skill-text head (version 0) and with a
head fitted on the learning stream (``bench.learning``'s, which the items here are not
part of). Requests sure for the head (at or over ``ACCEPT``) are the head's under every
rule; an answer under the classify threshold counts as escalated, the cloud right.

    nice -n 15 python -m bench.unfitted_slm [--items 150] [--ad-hoc]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from agent.config import PolicySettings
from agent.skills import Skill, parse_skill
from agent.skills.calibration import Evidence, decide
from agent.skills.head_stage import ACCEPT, combine, skill_head
from bench._common import table, write_results
from bench.learning import (
    FRESH_SKILL,
    HWU64,
    Dataset,
    home_items,
    hwu64,
    hwu64_home,
    hwu64_skill,
    read_intents,
)
from bench.routing import cut_at
from bench.skills import _embedder, _engine
from edge_slm.contract import Task
from edge_slm.head import Head, HeadOutput, fit_head, skill_texts

THRESHOLD = PolicySettings().thresholds[Task.CLASSIFY]
HEADS = ("skill text (v0)", "after the stream")
Rule = Callable[[HeadOutput, str, float], tuple[str, float]]
RULES: dict[str, Rule] = {
    "slm may take the label": lambda h, s, c: combine(h, s, c, calibrated=True),
    "head keeps the label": lambda h, s, c: combine(h, s, c, calibrated=False),
    "head alone": lambda h, s, c: (h.label, h.confidence),
}


def _cases(name: str) -> tuple[Dataset, Skill, list[tuple[str, str]]]:
    """The skill's learning data, the skill, and train items outside its stream."""
    if name == "hwu64":
        data = hwu64(20, 0)
        skill = Skill.of(name, parse_skill(hwu64_skill(data.labels)), "config")
        pool = read_intents(HWU64 / "train.jsonl")
    else:
        data = hwu64_home(40, 0)
        skill = Skill.of(name, parse_skill(FRESH_SKILL), "config")
        pool = home_items("train")
    streamed = {t for t, _ in data.stream}
    return data, skill, [(t, g) for t, g in pool if t not in streamed]


def measure(name: str, items: int, engine: Any, embedder: Any) -> dict[str, Any]:
    data, skill, pool = _cases(name)
    cases = random.Random(1).sample(pool, min(items, len(pool)))
    texts, gold = skill_texts(skill.spec)
    stream_vectors = embedder.embed([t for t, _ in data.stream])
    heads: dict[str, Head] = {
        "skill text (v0)": skill_head(embedder, skill),
        "after the stream": fit_head(
            np.concatenate([embedder.embed(texts), stream_vectors]),
            [*gold, *(g for _, g in data.stream)],
            skill.labels,
        ),
    }
    prompt = skill.prompt(exemplars=engine.skill_exemplars)
    vectors = embedder.embed([t for t, _ in cases])
    slm_s: list[float] = []
    slm: list[tuple[str, float]] = []
    for text, _ in cases:
        start = time.perf_counter()
        got = engine.classify_fixed(prompt, text, scoring="full")
        slm_s.append(time.perf_counter() - start)
        raw = decide(Evidence(got.scores, None), None)  # the agent's way, with no fit
        slm.append((raw.label, raw.confidence))
    out: dict[str, Any] = {"skill": name, "labels": len(skill.labels), "items": len(cases)}
    out["slm_seconds_mean"] = sum(slm_s) / len(slm_s)
    return out | _score(heads, vectors, slm, cases, RULES)


def _ad_hoc_rule(keep_head: bool) -> Rule:
    """``classify_labels``' merge: the head's confidence in the label when the SLM
    agrees, ``min(c, 1 - c)`` when not; the label the SLM's, or the head's."""

    def rule(h: HeadOutput, s: str, _c: float) -> tuple[str, float]:
        low = h.confidence if s == h.label else min(h.confidence, 1 - h.confidence)
        return (h.label if keep_head else s), low

    return rule


AD_HOC_RULES: dict[str, Rule] = {
    "slm takes the label": _ad_hoc_rule(keep_head=False),
    "head keeps the label": _ad_hoc_rule(keep_head=True),
    "head alone": lambda h, s, c: (h.label, h.confidence),
}


def measure_ad_hoc(name: str, items: int, engine: Any, embedder: Any) -> dict[str, Any]:
    """``measure`` for requests listing the skill's labels themselves (no skill)."""
    from agent.engine.prompts import build_messages
    from agent.skills.head_stage import zero_shot_head
    from edge_slm.contract import Request
    from edge_slm.head import label_texts

    data, skill, pool = _cases(name)
    labels = list(skill.labels)
    cases = random.Random(1).sample(pool, min(items, len(pool)))
    names = embedder.embed(label_texts(labels))
    heads: dict[str, Head] = {
        "zero-shot (v0)": zero_shot_head(embedder, labels),
        "after the stream": fit_head(
            np.concatenate([names, embedder.embed([t for t, _ in data.stream])]),
            [*labels, *(g for _, g in data.stream)],
            labels,
        ),
    }
    vectors = embedder.embed([t for t, _ in cases])
    slm_s: list[float] = []
    slm: list[tuple[str, float]] = []
    for text, _ in cases:
        request = Request.model_validate(
            {"v": 1, "id": "x", "task": "classify", "labels": labels, "text": text}
        )
        start = time.perf_counter()
        got = engine.classify(build_messages(request), labels)
        slm_s.append(time.perf_counter() - start)
        slm.append((got.label, got.confidence))
    out: dict[str, Any] = {"skill": name, "labels": len(labels), "items": len(cases)}
    out["slm_seconds_mean"] = sum(slm_s) / len(slm_s)
    out |= _score(heads, vectors, slm, cases, AD_HOC_RULES)
    return out


def _score(
    heads: dict[str, Head],
    vectors: Any,
    slm: list[tuple[str, float]],
    cases: list[tuple[str, str]],
    rules: dict[str, Rule],
) -> dict[str, Any]:
    """Per head: its unsure share and each rule's figures (sure answers are the head's)."""
    out: dict[str, Any] = {}
    for head_name, head in heads.items():
        firsts = [head.predict(v) for v in vectors]
        unsure = [f.confidence < ACCEPT for f in firsts]
        rows = {}
        for rule_name, rule in rules.items():
            answers = [
                rule(f, s, c) if u else (f.label, f.confidence)
                for f, (s, c), u in zip(firsts, slm, unsure, strict=True)
            ]
            right = [a == g for (a, _), (_, g) in zip(answers, cases, strict=True)]
            cut = cut_at(right, [c for _, c in answers], THRESHOLD)
            rows[rule_name] = {
                "edge_accuracy": sum(right) / len(right),
                "auroc": cut.auroc,
                "escalated": cut.escalated,
                "system_accuracy": cut.system_accuracy,
            }
        out[head_name] = {"head_unsure": sum(unsure) / len(unsure), "rules": rows}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.unfitted_slm", description=__doc__)
    parser.add_argument("--items", type=int, default=150, help="train items per skill")
    parser.add_argument(
        "--ad-hoc", action="store_true", help="requests listing the labels, with no skill"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    engine = _engine("smollm2-135m-instruct", args.threads)
    embedder = _embedder(args.threads)
    run = measure_ad_hoc if args.ad_hoc else measure
    results = [run(name, args.items, engine, embedder) for name in ("home_fresh", "hwu64")]
    heads = ("zero-shot (v0)", "after the stream") if args.ad_hoc else HEADS
    cols = ["skill", "head", "unsure", "rule", "edge acc", "AUROC", "escalated", "system acc"]
    rows = []
    for r in results:
        for head_name in heads:
            part = r[head_name]
            for rule_name, m in part["rules"].items():
                rows.append(
                    [
                        f"{r['skill']} ({r['labels']})",
                        head_name,
                        part["head_unsure"],
                        rule_name,
                        m["edge_accuracy"],
                        m["auroc"],
                        m["escalated"],
                        m["system_accuracy"],
                    ]
                )
    print(table(cols, rows))
    for r in results:
        print(f"{r['skill']}: SLM scoring {r['slm_seconds_mean']:.2f} s per request")
    name = "unfitted_slm_ad_hoc" if args.ad_hoc else "unfitted_slm"
    print(write_results(name, {"threshold": THRESHOLD, "skills": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
