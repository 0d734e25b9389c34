"""``act`` on the edge model over the home commands (``tests/data/eval/home_actions.jsonl``).

    python -m bench.act_eval [--model NAME] [--split dev|heldout] [--threads 2]

Reports the valid rate (the call validates against the tool set's schema, or is
``none``), tool accuracy, exact-arguments accuracy, and p50 latency with the tool
set's prompt prefilled once (the first request, which prefills it, is left out of the
latency). For the confidence of exact calls: ECE and AUROC of the raw confidence (the
weakest required field) and of the calibrated one (the tool set's fit for the model,
``edge-agent toolsets fit``; the raw one without a fit), and the system exact match
when the least confident 10%, 25% and 40% are escalated to a perfect cloud (counted
right). Splits come from ``bench.eval_data.split_of``; the fit is made on ``dev``
only, so ``heldout`` is the honest figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence

from agent.actions import TOOL_SETS, answer_structured, required_fields
from agent.engine.engine import Engine, StopWhen
from agent.engine.guided import weakest
from agent.models import DEFAULT_MODEL, ModelCache, default_cache_dir
from agent.skills.calibration import auroc, ece
from agent.toolset_fit import MAX_TOKENS, load_calls
from bench.eval_data import EVAL_DIR, split_of
from edge_slm.contract import Response, ToolSetSpec, tool_call_schema, validation_errors

DATA = EVAL_DIR / "home_actions.jsonl"
#: Shares of the least confident requests escalated to a perfect cloud.
ESCALATED = (0.10, 0.25, 0.40)


def escalated_exact(confidences: Sequence[float], corrects: Sequence[bool], share: float) -> float:
    """System exact match when the least confident ``share`` goes to a perfect cloud
    (counted right); ties are broken by file order."""
    n = len(confidences)
    sent = set(sorted(range(n), key=lambda i: confidences[i])[: round(share * n)])
    return sum(i in sent or corrects[i] for i in range(n)) / n


def raw_confidence(reply: Response, tool_set: ToolSetSpec) -> float:
    """The uncalibrated confidence of an act reply: its weakest required field."""
    if reply.tool_call is None or reply.field_confidence is None:
        return reply.confidence or 0.0
    tool = next(t for t in tool_set.tools if t.name == reply.tool_call.name)
    return weakest(reply.field_confidence, required_fields(tool))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.act_eval")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--split", choices=["dev", "heldout", "all"], default="dev")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    engine = Engine(
        ModelCache(default_cache_dir()).require(args.model), name=args.model, threads=args.threads
    )
    home = TOOL_SETS.get("home")
    assert home is not None
    schema = tool_call_schema(list(home.tools))
    items = [i for i in load_calls(DATA) if args.split == "all" or split_of(i[0].id) == args.split]
    valid = tool = exact = 0
    latencies: list[float] = []
    confidences: list[float] = []
    raws: list[float] = []
    corrects: list[bool] = []
    for n, (asked, gold) in enumerate(items):
        request = asked.model_copy(update={"tools": list(home.tools)})
        start = time.perf_counter()
        reply = answer_structured(engine, request, max_tokens=MAX_TOKENS, stop=StopWhen())
        if n:
            latencies.append(time.perf_counter() - start)
        call = (
            {"name": reply.tool_call.name, "arguments": reply.tool_call.arguments}
            if reply.tool_call
            else None
        )
        valid += call is None or not validation_errors(schema, call)
        tool += (call or {}).get("name") == (gold or {}).get("name")
        right = call == gold
        exact += right
        confidences.append(reply.confidence or 0.0)
        raws.append(raw_confidence(reply, home))
        corrects.append(right)
    total = len(items)
    print(
        json.dumps(
            {
                "model": args.model,
                "split": args.split,
                "items": total,
                "valid": f"{valid}/{total}",
                "tool_accuracy": round(tool / total, 3),
                "exact_arguments": round(exact / total, 3),
                "fitted": args.model in home.fits,
                "ece_raw": round(ece(raws, corrects), 3),
                "ece_calibrated": round(ece(confidences, corrects), 3),
                "auroc_raw": round(auroc(raws, corrects), 3),
                "auroc_calibrated": round(auroc(confidences, corrects), 3),
                **{
                    f"exact_{share:.0%}_to_perfect_cloud": round(
                        escalated_exact(confidences, corrects, share), 3
                    )
                    for share in ESCALATED
                },
                "p50_ms": round(statistics.median(latencies) * 1000, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
