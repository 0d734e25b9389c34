"""The head stage on the dev split of the voice set: the skill-text head alone, the
cascade (head, then the SLM with its fit where the head is unsure), ways to combine
the two, and the zero-shot head's calibration over label subsets of every size.

Dev split only (``bench.eval_data.split_of``): this is where ``ACCEPT``, the
combination rule and the zero-shot constants of ``edge_slm/head.py`` are
chosen. Items whose text is one of the skill's own texts are left out (the head was
fitted on them).

    nice -n 15 python -m bench.head_stage [--slm] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.config import PolicySettings
from bench.eval_data import SKILL_OF, load_family, split
from bench.routing import auroc
from bench.skills import _embedder, _engine
from edge_slm.contract import Task

THRESHOLD = PolicySettings().thresholds[Task.CLASSIFY]


def _ece(conf: list[float], right: list[bool], bins: int = 10) -> float:
    c, r = np.array(conf), np.array(right, dtype=float)
    total = 0.0
    for i in range(bins):
        m = (c >= i / bins) & (c < (i + 1) / bins if i < bins - 1 else c <= 1)
        if m.any():
            total += m.mean() * abs(c[m].mean() - r[m].mean())
    return float(total)


def _summary(conf: list[float], right: list[bool]) -> dict[str, float]:
    return {
        "n": len(right),
        "accuracy": round(float(np.mean(right)), 3),
        "auroc": round(float(auroc(conf, right)), 3),
        "ece": round(_ece(conf, right), 3),
    }


def main() -> None:  # noqa: PLR0912, PLR0915 - one linear report
    from agent.engine.prompts import user_content
    from agent.skills import SkillRegistry
    from agent.skills.classify import decide_skill, uses_embedding
    from agent.skills.head_stage import ACCEPT, skill_head, zero_shot_head
    from edge_slm.head import skill_texts

    ap = argparse.ArgumentParser()
    ap.add_argument("--slm", action="store_true", help="run the SLM too (the cascade)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--json", default="")
    ap.add_argument("--embedder", default="", help="an installed embedder (default: the agent's)")
    args = ap.parse_args()

    embedder = _embedder(1, args.embedder)
    skill = SkillRegistry().get(SKILL_OF["voice"])
    assert skill is not None
    own = {t.lower() for t in skill_texts(skill.spec)[0]}
    items = [
        i for i in split(load_family("voice"), "dev") if user_content(i.request).lower() not in own
    ]
    head = skill_head(embedder, skill)
    texts = [user_content(i.request) for i in items]
    gold = [str(i.gold["label"]) for i in items]
    vectors = embedder.embed(texts)
    outs = [head.predict(v) for v in vectors]
    right = [o.label == g for o, g in zip(outs, gold, strict=True)]
    conf = [o.confidence for o in outs]
    report: dict[str, Any] = {"accept": ACCEPT, "head": _summary(conf, right)}
    taken = [c >= ACCEPT for c in conf]
    report["head"]["share_answered"] = round(float(np.mean(taken)), 3)
    report["head"]["accuracy_answered"] = round(
        float(np.mean([r for r, t in zip(right, taken, strict=True) if t] or [0])), 3
    )

    report["head"]["accept_sweep"] = {
        str(a): {
            "share": round(float(np.mean([c >= a for c in conf])), 3),
            "accuracy": round(
                float(np.mean([r for r, c in zip(right, conf, strict=True) if c >= a] or [0])), 3
            ),
        }
        for a in (0.6, 0.65, 0.7, 0.75, 0.8, 0.85)
    }
    timings = []
    for text in texts:
        t0 = time.perf_counter()
        head.predict(embedder.embed([text])[0])
        timings.append((time.perf_counter() - t0) * 1000)
    report["head"]["p50_ms"] = round(float(np.percentile(timings, 50)), 2)
    report["head"]["p90_ms"] = round(float(np.percentile(timings, 90)), 2)

    # Zero-shot heads over label subsets (2..K) containing the gold label.
    rng = random.Random(0)
    names = skill.labels
    feats, hits, shipped = [], [], []
    for v, g in zip(vectors, gold, strict=True):
        for k in (2, 3, 4, 6, 12):
            subset = [g, *rng.sample([n for n in names if n != g], k - 1)]
            rng.shuffle(subset)
            out = zero_shot_head(embedder, subset).predict(v)
            p = max(out.probs.values())
            feats.append((math.log(p / max(1 - p, 1e-6)), math.log(k)))
            hits.append(out.label == g)
            shipped.append(out.confidence)  # with the constants in use for this encoder
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]

    platt = LogisticRegression(C=1e6).fit(np.array(feats), np.array(hits, dtype=int))
    a, kw = (float(x) for x in platt.coef_[0])
    b = float(platt.intercept_[0])
    zconf = [1 / (1 + math.exp(-(a * f + b + kw * lk))) for f, lk in feats]
    report["zero_shot"] = {"a": round(a, 4), "b": round(b, 4), "k_weight": round(kw, 4)}
    report["zero_shot"] |= _summary(zconf, hits)
    report["zero_shot"]["shipped"] = _summary(shipped, hits)
    two = [(c, h) for c, h, (_, lk) in zip(zconf, hits, feats, strict=True) if lk == math.log(2)]
    report["zero_shot"]["two_labels"] = _summary([c for c, _ in two], [h for _, h in two])

    if args.slm:
        engine = _engine(args.model, threads=1)
        fit = skill.fit_for(engine.name)
        rows = []
        dists: list[dict[str, float]] = []
        for text, g, o in zip(texts, gold, outs, strict=True):
            sims = embedder.similarities(skill, text) if uses_embedding(fit, embedder) else None
            prompt = skill.prompt(exemplars=engine.skill_exemplars)
            scoring = fit.scoring if fit is not None else "full"
            d, _ = decide_skill(
                fit,
                sims,
                lambda p=prompt, t=text, s=scoring: engine.classify_fixed(p, t, scoring=s).scores,
            )
            rows.append((o, d.label, d.confidence, g))
            dists.append(d.scores)
        slm_right = [d == g for _, d, _, g in rows]
        report["slm"] = _summary([c for _, _, c, _ in rows], slm_right)
        for rule in ("max", "product", "head_then_slm", "head_alone", "poe", "head_label"):
            labels, confs = [], []
            for (o, d, c, _), dist in zip(rows, dists, strict=True):
                if o.confidence >= ACCEPT:
                    labels.append(o.label)
                    confs.append(o.confidence)
                elif rule == "max":
                    labels.append(o.label if o.confidence >= c else d)
                    confs.append(max(o.confidence, c))
                elif rule == "product":  # agree: both say so; disagree: the more confident
                    if d == o.label:
                        labels.append(d)
                        confs.append(1 - (1 - c) * (1 - o.confidence))
                    else:
                        labels.append(o.label if o.confidence >= c else d)
                        confs.append(max(o.confidence, c) * (1 - min(o.confidence, c)))
                elif rule == "head_label":  # the head's label; the SLM only routes
                    labels.append(o.label)
                    agree = d == o.label
                    confs.append(
                        1 - (1 - c) * (1 - o.confidence) if agree else o.confidence * (1 - c)
                    )
                elif rule == "head_alone":
                    labels.append(o.label)
                    confs.append(o.confidence)
                elif rule == "poe":  # product of the two distributions; head's confidence
                    joint = {k: o.probs[k] * max(dist.get(k, 0.0), 1e-9) for k in o.probs}
                    best = max(joint, key=joint.__getitem__)
                    labels.append(best)
                    agree = best == o.label
                    confs.append(o.confidence if agree else min(o.confidence, c))
                else:
                    labels.append(d)
                    confs.append(c)
            hits = [lab == g for lab, (_, _, _, g) in zip(labels, rows, strict=True)]
            report[f"cascade_{rule}"] = _summary(confs, hits)
            kept = [h for h, c in zip(hits, confs, strict=True) if c >= THRESHOLD]
            report[f"cascade_{rule}"] |= {
                "escalated": round(1 - len(kept) / len(hits), 3),
                "accuracy_kept": round(float(np.mean(kept or [0])), 3),
                "system_accuracy_perfect_cloud": round(
                    (sum(kept) + len(hits) - len(kept)) / len(hits), 3
                ),
            }
    text_out = json.dumps(report, indent=2)
    print(text_out)
    if args.json:
        Path(args.json).write_text(text_out + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
