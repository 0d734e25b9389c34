"""Routing quality: is the edge model's confidence good enough to decide what to escalate?

Runs every item of the labelled set in ``tests/data/eval`` through :class:`Engine`
directly (no MQTT) for the edge model and the bigger "cloud" model, then reports each
model's accuracy, the AUROC of edge confidence against edge correctness, and system
accuracy when the least-confident k% of requests go to the cloud (the 0.5B model, and
an oracle that is always right); "ideal_*" rank by who is right, the ceiling for any
confidence signal. Thresholds: per family and per task at 30% escalated, and the
product's defaults (``agent.config.PolicySettings``).

Scoring: classify is correct when the chosen label equals the gold label; answer is
correct when a normalized gold answer occurs as whole words in the normalized output,
or token F1 against a gold answer is >= 0.5 (``bench.eval_data.answer_correct``).

Model outputs are cached per item in ``bench/results/routing_items.<model>.jsonl``;
``--reuse`` skips items already there, so the analysis reruns in a second.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.skills.calibration import auroc
from bench._common import RESULTS_DIR, table, write_results
from bench.eval_data import FAMILIES, EvalItem, is_correct, load_family
from edge_slm.contract import Task

EDGE = "smollm2-135m-instruct"
CLOUD = "qwen2.5-coder-0.5b-instruct"
RATES = (0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
SHOWN = (0, 10, 20, 30, 50, 100)
TARGET = 0.95  # share of all-cloud accuracy the system should keep
ESCALATE = 0.30  # the escalation budget the thresholds are picked for
Row = dict[str, Any]  # one item's cached model output


def _key(item: EvalItem) -> str:
    body = item.request.model_dump_json(exclude={"id"}).encode()
    return f"{item.id}:{hashlib.sha256(body).hexdigest()[:12]}"


def run_model(
    name: str, items: Sequence[EvalItem], *, reuse: bool, threads: int, store: bool = True
) -> list[Row]:
    """Per-item outputs of one model, from the cache where allowed, else from the engine;
    ``store``: write new outputs back to the cache."""
    from agent.engine.engine import Engine
    from agent.engine.prompts import build_messages
    from agent.models import ModelCache, default_cache_dir

    path = RESULTS_DIR / f"routing_items.{name}.jsonl"
    cached: dict[str, Row] = {}  # kept even without --reuse: a --limit run must not drop it
    if path.exists():
        cached = {r["key"]: r for r in map(json.loads, path.read_text().splitlines())}
    todo = [i for i in items if not reuse or _key(i) not in cached]
    if todo:
        model_dir = ModelCache(default_cache_dir()).require(name)
        engine = Engine(model_dir, name=name, provider="cpu", threads=threads)
        for n, item in enumerate(todo, 1):
            messages = build_messages(item.request)
            start = time.perf_counter()
            if item.request.task is Task.CLASSIFY:
                c = engine.classify(messages, item.request.labels or [])
                out: Row = {"label": c.label, "confidence": c.confidence}
            else:
                g = engine.generate(messages, max_tokens=item.request.max_tokens or 48)
                out = {"text": g.text, "confidence": g.confidence}
            out |= {"key": _key(item), "id": item.id, "s": time.perf_counter() - start}
            cached[out["key"]] = out
            if n % 25 == 0 or n == len(todo):
                print(f"  {name}: {n}/{len(todo)}", flush=True)
    if todo and store:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in cached.values()))
    rows = [cached[_key(i)] for i in items]
    for item, row in zip(items, rows, strict=True):  # re-scored every run: rules may change
        row["correct"] = is_correct(item, label=row.get("label"), text=row.get("text"))
    return rows


@dataclass(frozen=True, slots=True)
class Cut:
    """Routing at one confidence threshold: an answer under it escalates, and the cloud
    is taken as right (``agent.policy.router`` escalates the same way)."""

    escalated: float  # share of the answers escalated
    auroc: float  # how well confidence ranks right answers over wrong ones
    kept_accuracy: float  # accuracy of the answers kept on the edge (0 when none is)
    system_accuracy: float  # accuracy when every escalated answer comes back right


def cut_at(correct: Sequence[bool], confidence: Sequence[float], threshold: float) -> Cut:
    escalated = [c < threshold for c in confidence]
    n, kept = len(correct), len(correct) - sum(escalated)
    pairs = list(zip(correct, escalated, strict=True))
    return Cut(
        escalated=sum(escalated) / n,
        auroc=auroc(confidence, correct),
        kept_accuracy=sum(ok for ok, e in pairs if not e) / max(1, kept),
        system_accuracy=sum(ok or e for ok, e in pairs) / n,
    )


def escalation_curve(conf: np.ndarray, edge: np.ndarray, cloud: np.ndarray) -> np.ndarray:
    """System accuracy for k = 0..n escalated, the k least-confident going to the cloud."""
    order = np.argsort(conf, kind="mergesort")
    gain = (cloud[order].astype(int) - edge[order].astype(int)).cumsum()
    return np.concatenate([[edge.sum()], edge.sum() + gain]) / len(conf)


def at_rate(curve: np.ndarray, pct: float) -> float:
    return float(curve[round(pct / 100 * (len(curve) - 1))])


def rate_reaching(curve: np.ndarray, target: float) -> float | None:
    """Smallest escalated fraction whose accuracy reaches ``target``; None if none does."""
    hits = np.flatnonzero(curve >= target - 1e-12)
    return float(hits[0] / (len(curve) - 1)) if len(hits) else None


def analyse(items: Sequence[EvalItem], edge: list[Row], cloud: list[Row]) -> dict[str, Any]:
    conf = np.array([r["confidence"] for r in edge])
    ok_e = np.array([r["correct"] for r in edge])
    ok_c = np.array([r["correct"] for r in cloud])
    oracle = np.ones_like(ok_c)
    # "ideal_*": a router that knows who is right (edge wrong and cloud right go first),
    # the ceiling for any confidence signal with this edge model.
    curves = {
        "model": escalation_curve(conf, ok_e, ok_c),
        "oracle": escalation_curve(conf, ok_e, oracle),
        "ideal_model": escalation_curve(ok_e.astype(float) - ok_c, ok_e, ok_c),
        "ideal_oracle": escalation_curve(ok_e.astype(float), ok_e, oracle),
    }
    all_cloud = {"model": float(ok_c.mean()), "oracle": 1.0}
    all_cloud |= {f"ideal_{c}": v for c, v in all_cloud.items()}
    families = list(dict.fromkeys(i.family for i in items))
    per_family: dict[str, Any] = {}
    for fam in families:
        m = np.array([i.family == fam for i in items])
        fam_curve = escalation_curve(conf[m], ok_e[m], ok_c[m])
        per_family[fam] = {
            "n": int(m.sum()),
            "edge_acc": float(ok_e[m].mean()),
            "cloud_acc": float(ok_c[m].mean()),
            "auroc": auroc(conf[m], ok_e[m]),
            "median_conf": float(np.median(conf[m])),
            "acc_at_30_cloud": at_rate(fam_curve, 30),
            "rate_to_95_cloud": rate_reaching(fam_curve, TARGET * float(ok_c[m].mean())),
            "threshold_30": float(np.quantile(conf[m], ESCALATE)),
        }
    tasks = [i.request.task for i in items]
    by_task = {
        t: float(np.quantile(conf[[x is t for x in tasks]], ESCALATE)) for t in dict.fromkeys(tasks)
    }
    from agent.config import PolicySettings  # the product's defaults

    default = PolicySettings().thresholds
    cut = {  # escalate when confidence < threshold, as agent.policy.router does
        "per_family_30": [per_family[i.family]["threshold_30"] for i in items],
        "per_task_30": [by_task[t] for t in tasks],
        "product_defaults": [default.get(t, 0.5) for t in tasks],
    }
    routings = {}
    for name, thr in cut.items():
        esc = conf < np.array(thr)
        routings[name] = {
            "escalated": float(esc.mean()),
            "acc_cloud": float(np.where(esc, ok_c, ok_e).mean()),
            "acc_oracle": float((esc | ok_e).mean()),
        }
    return {
        "n": len(items),
        "edge_acc": float(ok_e.mean()),
        "cloud_acc": float(ok_c.mean()),
        "auroc": auroc(conf, ok_e),
        "per_family": per_family,
        "curve": {c: {str(r): at_rate(v, r) for r in RATES} for c, v in curves.items()},
        "rate_to_95": {c: rate_reaching(v, TARGET * all_cloud[c]) for c, v in curves.items()},
        "acc_at_30": {c: at_rate(v, 30) for c, v in curves.items()},
        "thresholds": {
            "per_task_30": {t.value: v for t, v in by_task.items()},
            "product_defaults": {t.value: v for t, v in default.items()},
        },
        "routings": routings,
        "mean_s": {
            k: float(np.mean([r["s"] for r in v])) for k, v in [("edge", edge), ("cloud", cloud)]
        },
    }


def _pct(x: float | None) -> str:
    return "never" if x is None else f"{100 * x:.1f}%"


FAMILY_COLUMNS = "family|n|edge acc|cloud acc|AUROC|median conf|acc @30%|esc. for 95%|thr @30%"


def _family_row(name: str, v: dict[str, Any]) -> list[object]:
    return [
        name,
        v["n"],
        *map(_pct, (v["edge_acc"], v["cloud_acc"])),
        f"{v['auroc']:.3f}",
        f"{v['median_conf']:.3f}",
        *map(_pct, (v["acc_at_30_cloud"], v["rate_to_95_cloud"])),
        f"{v['threshold_30']:.3f}",
    ]


def report(r: dict[str, Any]) -> str:
    curve = r["curve"]
    lines = [
        f"items {r['n']}: edge accuracy {_pct(r['edge_acc'])}, cloud {_pct(r['cloud_acc'])},"
        f" AUROC(edge confidence vs edge correct) {r['auroc']:.3f}",
        table(FAMILY_COLUMNS.split("|"), [_family_row(f, v) for f, v in r["per_family"].items()]),
        table(
            ["escalated", *(f"cloud = {c}" for c in curve)],
            [[f"{s}%", *(_pct(curve[c][str(s)]) for c in curve)] for s in SHOWN],
        ),
    ]
    for c in curve:
        lines.append(
            f"cloud = {c}: {TARGET:.0%} of all-cloud accuracy at {_pct(r['rate_to_95'][c])}"
            f" escalated; accuracy at 30% escalated {_pct(r['acc_at_30'][c])}"
        )
    thr = ", ".join(f"{t} {v:.3f}" for t, v in r["thresholds"]["per_task_30"].items())
    lines.append(f"per-task thresholds escalating {ESCALATE:.0%}: {thr}")
    for name, v in r["routings"].items():
        lines.append(
            f"thresholds {name}: escalate {_pct(v['escalated'])}; system accuracy"
            f" {_pct(v['acc_cloud'])} (cloud model), {_pct(v['acc_oracle'])} (oracle)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.routing",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--edge", default=EDGE, help="edge model (catalog name)")
    parser.add_argument("--cloud", default=CLOUD, help="bigger 'cloud' model (catalog name)")
    parser.add_argument("--reuse", action="store_true", help="reuse cached per-item outputs")
    parser.add_argument("--limit", type=int, default=0, help="first N items per family (smoke)")
    parser.add_argument("--threads", type=int, default=0, help="engine threads (0: all cores)")
    args = parser.parse_args(argv)
    items = [i for f in FAMILIES for i in load_family(f)[: args.limit or None]]
    edge = run_model(args.edge, items, reuse=args.reuse, threads=args.threads)
    cloud = run_model(args.cloud, items, reuse=args.reuse, threads=args.threads)
    result = analyse(items, edge, cloud)
    print(report(result))
    path = write_results(
        "routing", {"edge": args.edge, "cloud": args.cloud, "limit": args.limit, **result}
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
