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

Two skills: ``hwu64`` (64 intents, the intent names alone) and ``home_fresh`` (5 labels,
``bench.learning.FRESH_SKILL``). Each with its skill-text head (version 0) and with a
head fitted on the learning stream (``bench.learning``'s, which the items here are not
part of). Requests sure for the head (at or over ``ACCEPT``) are the head's under every
rule; an answer under the classify threshold counts as escalated, the cloud right.

    nice -n 15 python -m bench.unfitted_slm [--items 150]
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
    for head_name, head in heads.items():
        firsts = [head.predict(v) for v in vectors]
        unsure = [f.confidence < ACCEPT for f in firsts]
        rows = {}
        for rule_name, rule in RULES.items():
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
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    engine = _engine("smollm2-135m-instruct", args.threads)
    embedder = _embedder(args.threads)
    results = [measure(name, args.items, engine, embedder) for name in ("home_fresh", "hwu64")]
    cols = ["skill", "head", "unsure", "rule", "edge acc", "AUROC", "escalated", "system acc"]
    rows = []
    for r in results:
        for head_name in ("skill text (v0)", "after the stream"):
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
    print(write_results("unfitted_slm", {"threshold": THRESHOLD, "skills": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
