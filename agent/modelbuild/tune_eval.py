"""Before/after figures of ``edge-agent models tune``: accuracy, AUROC, ECE.

Each held-out example is classified the way the agent prompts a tuned model (a
skill's system prompt without exemplars through ``Engine.classify_fixed``, or the
bare inline-labels prompt through ``Engine.classify``), by the base model and by the
tuned one, so the two columns differ only in the weights. An act example is answered
under its tools' schema with its act prompt kept prefilled (``generate_structured``),
as the agent answers act; it is right when the call is exactly the taught one, and its
confidence is the raw one (the weakest required field; the name's for ``none``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from agent.models.manifest import EvalFigures
from agent.skills.calibration import auroc, ece
from edge_slm.console import table

if TYPE_CHECKING:
    from agent.engine.engine import Engine, FixedPrompt
    from agent.modelbuild.tune_data import Example

#: Split names, in the order the table shows them (act examples are measured apart).
SPLITS = {
    "data": "data held-out",
    "official": "eval set held-out",
    "data-act": "data held-out, act",
    "official-act": "eval set held-out, act",
}


def figures(confidence: Sequence[float], correct: Sequence[bool]) -> EvalFigures:
    n = len(correct)
    return EvalFigures(
        examples=n,
        accuracy=round(sum(correct) / n, 4) if n else math.nan,
        auroc=None if math.isnan(a := auroc(confidence, correct)) else round(a, 4),
        ece=round(ece(confidence, correct), 4),
    )


def _fixed_prompt(example: Example) -> FixedPrompt:
    from agent.engine.engine import FixedPrompt

    canonical = json.dumps([list(example.fixed), dict(example.choices)], sort_keys=True)
    return FixedPrompt(
        name=f"tune:{example.prompt_name}",
        key=hashlib.sha256(canonical.encode()).hexdigest()[:16],
        messages=example.fixed,
        choices=example.choices,
        calibrate=example.calibrate,
    )


def _act(engine: Engine, ex: Example) -> tuple[float, bool]:
    """Act on one example: the raw confidence of the call, and whether it is the taught one."""
    from agent.actions import required_fields
    from agent.engine.engine import FixedPrompt
    from agent.engine.guided import weakest
    from agent.toolset_fit import MAX_TOKENS
    from edge_slm.contract import tool_call_schema

    tools = list(ex.tools)
    schema = tool_call_schema(tools)
    canonical = json.dumps([list(ex.fixed), schema], sort_keys=True)  # changes with the schema
    prompt = FixedPrompt(
        name=ex.prompt_name,
        key=hashlib.sha256(canonical.encode()).hexdigest()[:16],
        messages=ex.fixed,
        choices={},
    )
    result = engine.generate_structured(schema, fixed=prompt, user=ex.user, max_tokens=MAX_TOKENS)
    value = result.value if isinstance(result.value, dict) else {}
    tool = next((t for t in tools if t.name == value.get("name")), None)
    required = required_fields(tool) if tool is not None else ["name"]
    return weakest(result.field_confidence, required), value == ex.call


def evaluate(engine: Engine, examples: Sequence[Example]) -> EvalFigures:
    """Classify (or act on) every example with ``engine``; its figures against the
    examples' labels (or calls)."""
    confidence: list[float] = []
    correct: list[bool] = []
    prompts: dict[str, FixedPrompt] = {}
    for ex in examples:
        if ex.call is not None:
            conf, right = _act(engine, ex)
            confidence.append(conf)
            correct.append(right)
            continue
        if ex.prompt_name == "inline":
            result = engine.classify(ex.chat(), list(ex.choices))
        else:
            prompt = prompts.get(ex.prompt_name) or prompts.setdefault(
                ex.prompt_name, _fixed_prompt(ex)
            )
            result = engine.classify_fixed(prompt, ex.user)
        confidence.append(result.confidence)
        correct.append(result.label == ex.label)
    return figures(confidence, correct)


def _num(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.3f}"


def format_table(
    before: Mapping[str, EvalFigures], after: Mapping[str, EvalFigures], *, base: str, tuned: str
) -> str:
    """The before/after table, one row per (split, model)."""
    rows = [("HELD-OUT SPLIT", "N", "MODEL", "ACCURACY", "AUROC", "ECE")]
    for split, title in SPLITS.items():
        for model, figs in ((base, before), (tuned, after)):
            f = figs.get(split)
            if f is None:
                continue
            rows.append(
                (title, str(f.examples), model, _num(f.accuracy), _num(f.auroc), _num(f.ece))
            )
    if len(rows) == 1:
        return "no held-out examples: nothing to compare (raise --heldout-fraction)"
    return table(rows[0], rows[1:])
