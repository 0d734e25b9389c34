"""Before/after figures of ``edge-agent models tune``: accuracy, AUROC, ECE.

Each held-out example is classified the way the agent prompts a tuned model (a
skill's system prompt without exemplars through ``Engine.classify_fixed``, or the
bare inline-labels prompt through ``Engine.classify``), by the base model and by the
tuned one, so the two columns differ only in the weights.
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

#: Split names, in the order the table shows them.
SPLITS = {"data": "data held-out", "official": "eval set held-out"}


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


def evaluate(engine: Engine, examples: Sequence[Example]) -> EvalFigures:
    """Classify every example with ``engine``; its figures against the examples' labels."""
    confidence: list[float] = []
    correct: list[bool] = []
    prompts: dict[str, FixedPrompt] = {}
    for ex in examples:
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
