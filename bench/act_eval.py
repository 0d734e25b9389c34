"""``act`` on the edge model over the home commands (``tests/data/eval/home_actions.jsonl``).

    python -m bench.act_eval [--model NAME] [--split dev|heldout] [--threads 2]

Reports the valid rate (the call validates against the tool set's schema, or is
``none``), tool accuracy, exact-arguments accuracy, the AUROC of the call confidence
for exact calls, and p50 latency with the tool set's prompt prefilled once (the first
request, which prefills it, is left out of the latency). Splits come from
``bench.eval_data.split_of``; nothing here tunes anything, so both may be reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from agent.actions import TOOL_SETS, answer_structured
from agent.engine.engine import Engine, StopWhen
from agent.models import DEFAULT_MODEL, ModelCache, default_cache_dir
from agent.skills.calibration import auroc
from bench.eval_data import EVAL_DIR, split_of
from edge_slm.contract import Request, decode, tool_call_schema, validation_errors

DATA = EVAL_DIR / "home_actions.jsonl"


def load(path: Path = DATA) -> list[tuple[Request, dict[str, Any] | None]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(decode(Request, r["request"]), r["gold"]["call"]) for r in rows]


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
    items = [i for i in load() if args.split == "all" or split_of(i[0].id) == args.split]
    valid = tool = exact = 0
    latencies: list[float] = []
    confidences: list[float] = []
    corrects: list[bool] = []
    for n, (asked, gold) in enumerate(items):
        request = asked.model_copy(update={"tools": list(home.tools)})
        start = time.perf_counter()
        reply = answer_structured(engine, request, max_tokens=64, stop=StopWhen())
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
                "auroc": round(auroc(confidences, corrects), 3),
                "p50_ms": round(statistics.median(latencies) * 1000, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
