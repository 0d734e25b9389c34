"""``act`` on the edge model over the home commands (``tests/data/eval/home_actions.jsonl``).

    python -m bench.act_eval [--model NAME] [--split dev|heldout] [--threads 2] [--llama]

Reports the valid rate (the call validates against the tool set's schema, or is
``none``), tool accuracy, exact-arguments accuracy, and p50 latency with the tool
set's prompt prefilled once (the first request, which prefills it, is left out of the
latency). For the confidence of exact calls: ECE and AUROC of the raw confidence (the
weakest required field) and of the calibrated one (the tool set's fit for the model,
``edge-agent toolsets fit``; the raw one without a fit), and the system exact match
when the least confident 10%, 25% and 40% are escalated to a perfect cloud (counted
right). It also routes every reply with the agent's own ``Router`` at the default
policy (act 0.6, high-risk tools 0.9): the share kept on the edge, the system exact
match when the rest goes to a perfect cloud, and the high-risk calls that would run on
the edge although wrong (the issue's target: 0). Splits come from
``bench.eval_data.split_of``; the fit is made on ``dev``
only, so ``heldout`` is the honest figure.

``--llama`` adds the baseline side by side in the same run: llama.cpp
(llama-cpp-python, the ``bench`` extra) on the model's own source GGUF, constrained by
its JSON-schema grammar (``LlamaGrammar.from_json_schema``) of the same tool-call
schema, fed the same prompt token ids (our chat template), greedy, at the same threads.
llama-cpp-python keeps the longest common prompt prefix in its KV cache between calls,
so it too prefills the tool-set prompt once. The two engines alternate which goes first
on each item. It reports valid rate, tool and exact accuracy and p50 for both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from agent.actions import (
    NO_TOOL_REASON,
    TOOL_SETS,
    act_prompt,
    answer_structured,
    required_fields,
)
from agent.config import CloudSettings, PolicySettings
from agent.engine.engine import Engine, StopWhen
from agent.engine.guided import weakest
from agent.engine.prompts import Message, user_content
from agent.jobs import Decision
from agent.models import DEFAULT_MODEL, ModelCache, default_cache_dir
from agent.policy.router import Router
from agent.skills.calibration import auroc, ece
from agent.toolset_fit import MAX_TOKENS, load_calls
from bench.eval_data import EVAL_DIR, split_of
from edge_slm.contract import (
    NO_TOOL,
    Request,
    Response,
    ToolSetSpec,
    tool_call_schema,
    validation_errors,
)

DATA = EVAL_DIR / "home_actions.jsonl"
#: Shares of the least confident requests escalated to a perfect cloud.
ESCALATED = (0.10, 0.25, 0.40)


class Scores(NamedTuple):
    valid: int
    tool: int
    exact: int


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


class LlamaActs:
    """llama.cpp answering the same act prompts under its JSON-schema grammar."""

    def __init__(self, model: str, schema: dict[str, Any], threads: int, workdir: Path) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_grammar import LlamaGrammar

        from agent.modelbuild.gguf import assemble_gguf
        from agent.models import get_entry

        gguf, _sha = assemble_gguf(get_entry(model), workdir)
        self.llm: Any = Llama(  # Any: llama_cpp is typed only partly, and absent in CI
            model_path=str(gguf),
            n_ctx=4096,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        self.grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)

    def call(self, ids: list[int], seconds: list[float]) -> dict[str, Any] | None:
        """The parsed call (None when the output is not a JSON object); appends the
        seconds it took to ``seconds``."""
        start = time.perf_counter()
        out = self.llm.create_completion(
            prompt=ids,
            grammar=self.grammar,
            max_tokens=MAX_TOKENS,
            temperature=0.0,
            top_k=1,
            repeat_penalty=1.0,
        )
        seconds.append(time.perf_counter() - start)
        try:
            value = json.loads(out["choices"][0]["text"])
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, dict) else None


def _scores(calls: Sequence[dict[str, Any] | None], golds: Sequence[Any], schema: Any) -> Scores:
    """Valid (validates against the schema, ``none`` included), right tool, exact call."""
    valid = tool = exact = 0
    for call, gold in zip(calls, golds, strict=True):
        valid += call is not None and not validation_errors(schema, call)
        tool += (call or {}).get("name") == (gold or {}).get("name", NO_TOOL)
        exact += _as_gold(call) == gold
    return Scores(valid, tool, exact)


def _as_gold(call: dict[str, Any] | None) -> dict[str, Any] | None:
    """A call as the data writes it: ``none`` (no tool fits) is null."""
    return None if call is None or call.get("name") == NO_TOOL else call


def _edge_call(reply: Response) -> dict[str, Any] | None:
    """Our reply as the raw call it decoded: the call, ``none``, or None (no valid call)."""
    if reply.tool_call is not None:
        return {"name": reply.tool_call.name, "arguments": reply.tool_call.arguments}
    return {"name": NO_TOOL} if reply.reason == NO_TOOL_REASON else None


def _routed(router: Router, request: Request, reply: Response) -> bool:
    """Whether the agent would keep ``reply`` on the edge (not escalate it)."""
    before = Decision(escalate=False, allowed=True, reason=None, text="")
    return not router.after(request, reply, before).escalate


def _summary(scores: Scores, total: int, latencies: Sequence[float]) -> dict[str, Any]:
    return {
        "valid": f"{scores.valid}/{total}",
        "tool_accuracy": round(scores.tool / total, 3),
        "exact_arguments": round(scores.exact / total, 3),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.act_eval")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--split", choices=["dev", "heldout", "all"], default="dev")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--llama", action="store_true", help="also run llama.cpp's JSON-schema grammar baseline"
    )
    args = parser.parse_args(argv)
    engine = Engine(
        ModelCache(default_cache_dir()).require(args.model), name=args.model, threads=args.threads
    )
    home = TOOL_SETS.get("home")
    assert home is not None
    schema = tool_call_schema(list(home.tools))
    items = [i for i in load_calls(DATA) if args.split == "all" or split_of(i[0].id) == args.split]
    with tempfile.TemporaryDirectory(prefix="act-eval-") as tmp:
        llama = LlamaActs(args.model, schema, args.threads, Path(tmp)) if args.llama else None
        prompt = act_prompt(list(home.tools), home, "home")
        ours: list[dict[str, Any] | None] = []
        theirs: list[dict[str, Any] | None] = []
        latencies: list[float] = []
        llama_latencies: list[float] = []
        confidences: list[float] = []
        raws: list[float] = []
        kept: list[bool] = []
        high_risk = {t.name for t in home.tools if t.risk == "high"}
        router = Router(PolicySettings(), CloudSettings(), budget_left=lambda: True)
        for n, (asked, _gold) in enumerate(items):
            request = asked.model_copy(update={"tools": list(home.tools)})
            turn: Message = {"role": "user", "content": user_content(asked)}
            ids = engine.encode_chat([*prompt.messages, turn]) if llama is not None else []
            if llama is not None and n % 2:  # alternate which engine goes first
                theirs.append(llama.call(ids, llama_latencies))
            start = time.perf_counter()
            reply = answer_structured(engine, request, max_tokens=MAX_TOKENS, stop=StopWhen())
            latencies.append(time.perf_counter() - start)
            if llama is not None and not n % 2:
                theirs.append(llama.call(ids, llama_latencies))
            ours.append(_edge_call(reply))
            kept.append(_routed(router, request, reply))
            confidences.append(reply.confidence or 0.0)
            raws.append(raw_confidence(reply, home))
    golds = [gold for _, gold in items]
    scores = _scores(ours, golds, schema)
    corrects = [_as_gold(c) == g for c, g in zip(ours, golds, strict=True)]
    total = len(items)
    # The first request of each engine prefills the tool-set prompt: left out of the p50.
    result: dict[str, Any] = {
        "model": args.model,
        "split": args.split,
        "items": total,
        **_summary(scores, total, latencies[1:]),
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
    }
    wrong_kept = [k and not c for k, c in zip(kept, corrects, strict=True)]
    result |= {
        "kept_on_edge": round(sum(kept) / total, 3),
        "exact_at_default_policy_to_perfect_cloud": round(
            sum(c or not k for k, c in zip(kept, corrects, strict=True)) / total, 3
        ),
        "high_risk_wrong_on_edge": sum(
            w and (call or {}).get("name") in high_risk
            for w, call in zip(wrong_kept, ours, strict=True)
        ),
    }
    if llama is not None:
        result["llama_cpp"] = _summary(_scores(theirs, golds, schema), total, llama_latencies[1:])
        result["p50_ratio_ours_over_llama_cpp"] = round(
            statistics.median(latencies[1:]) / statistics.median(llama_latencies[1:]), 3
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
