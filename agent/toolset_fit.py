"""Calibrate a tool set's ``act`` confidence for one edge model: observe, fit, apply.

The raw confidence of an ``act`` reply (its weakest required field) ranks calls
usefully but is no probability: a 135M model is often sure of a wrong room. A
:class:`~edge_slm.contract.structured.ToolSetFit` maps it to P(the call is exactly
right) with Platt scaling on its logit, one slope and one intercept: with a few
dozen calls, two numbers are what the data can hold. The logistic regression,
ECE and AUROC are the skills' (``agent/skills/calibration.py``); the fit is
stored in the set's TOML like a skill's (``agent/skills/fitting.py``).

Only tool calls are fitted and calibrated: ``none`` and an invalid reply keep
confidence 0, which escalates whatever the calibration says.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.engine.engine import Engine, StopWhen
from agent.skills.calibration import auroc, ece, logistic
from agent.skills.fitting import FOLDS
from edge_slm.contract import Request, decode
from edge_slm.contract.structured import PlattScaling, ToolSetFit, ToolSetSpec
from edge_slm.head import logit, platt

#: Raw confidences are clipped this far from 0 and 1 before the logit (a weakest field
#: of exactly 1.0 is common: the grammar left one token).
EPS = 1e-4
#: Room for the act reply's compact JSON (as ``bench.act_eval``).
MAX_TOKENS = 64

#: A raw confidence and whether that call was exactly right.
Pair = tuple[float, bool]
#: An act request and its gold call (None: no tool fits).
Labelled = tuple[Request, dict[str, Any] | None]


def load_calls(path: Path) -> list[Labelled]:
    """The eval format of act: one ``{"request": ..., "gold": {"call": ...}}`` per line."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(decode(Request, r["request"]), r["gold"]["call"]) for r in rows]


def calibrate(raw: float, fit: ToolSetFit) -> float:
    """P(exact call) for a raw act confidence."""
    return platt(fit.calibration.a, fit.calibration.b, raw, eps=EPS)


def _weights(pairs: Sequence[Pair]) -> tuple[float, float]:
    x = np.array([[logit(raw, eps=EPS)] for raw, _ in pairs], dtype=np.float64)
    y = np.array([float(ok) for _, ok in pairs], dtype=np.float64)
    w = logistic(x, y)
    return float(w[1]), float(w[0])


def cross_validated(pairs: Sequence[Pair], folds: int = FOLDS) -> list[Pair]:
    """(calibrated confidence, correct) per item, each from a fit that did not see it."""
    out: list[Pair] = [(0.0, False)] * len(pairs)
    for k in range(min(folds, len(pairs))):
        a, b = _weights([p for i, p in enumerate(pairs) if i % folds != k])
        for i in range(k, len(pairs), folds):
            out[i] = (platt(a, b, pairs[i][0], eps=EPS), pairs[i][1])
    return out


def fit_pairs(pairs: Sequence[Pair], folds: int = FOLDS) -> ToolSetFit:
    """The fit of ``(raw confidence, exactly right)`` pairs, with its held-out figures.

    Refused (``ValueError``) with fewer than ``2 * folds`` pairs, when every call is
    right or every one wrong (nothing to learn which to doubt), or when a higher raw
    confidence means a worse call (the calibration would reverse the ranking).
    """
    if len(pairs) < 2 * folds:
        raise ValueError(f"{len(pairs)} tool calls; need at least {2 * folds}")
    right = sum(ok for _, ok in pairs)
    if right in (0, len(pairs)):
        raise ValueError(
            f"the model made {'all' if right else 'none'} of the {len(pairs)} calls exactly "
            "right; fit on data with some of each"
        )
    a, b = _weights(pairs)
    if a <= 0:
        raise ValueError("the raw confidence does not rank the calls (fitted slope <= 0)")
    raws, oks = [raw for raw, _ in pairs], [ok for _, ok in pairs]
    after = cross_validated(pairs, folds)
    return ToolSetFit(
        calibration=PlattScaling(a=a, b=b),
        items=len(pairs),
        auroc=round(auroc(raws, oks), 4),
        ece_before=round(ece(raws, oks), 4),
        ece_after=round(ece([c for c, _ in after], oks), 4),
    )


def observe(
    engine: Engine,
    name: str,
    spec: ToolSetSpec,
    items: Sequence[Labelled],
) -> tuple[list[Pair], int]:
    """Run ``act`` with the set on every item: (raw confidence, exact) of each tool call,
    and how many items were left out as the set's own exemplars (the prompt shows
    their answer, so they would teach the fit that the model is always right)."""
    from agent.actions import answer_structured  # agent.actions imports this module

    raw_set = spec.model_copy(update={"fits": {}})  # the raw confidence, even when refitting
    shown = {e.text for e in spec.exemplars}
    pairs: list[Pair] = []
    skipped = 0
    for request, gold in items:
        if request.text in shown:
            skipped += 1
            continue
        asked = request.model_copy(update={"tool_set": name, "tools": list(spec.tools)})
        reply = answer_structured(
            engine, asked, max_tokens=MAX_TOKENS, stop=StopWhen(), tool_set=raw_set
        )
        if reply.tool_call is None:
            continue
        call = {"name": reply.tool_call.name, "arguments": reply.tool_call.arguments}
        pairs.append((reply.confidence or 0.0, call == gold))
    return pairs, skipped
