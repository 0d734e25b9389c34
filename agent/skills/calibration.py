"""Combine a skill's evidence into one label distribution and a calibrated confidence.

Two sources of evidence per label: the SLM's label distribution (``classify_fixed``)
and the embedding stage's cosine to the label's nearest vector. A
:class:`~edge_slm.contract.SkillCalibrator` mixes them log-linearly and maps the
result to the probability that the chosen label is right (see its docstring).

Fitting (:func:`fit`) runs offline on labelled items that the prompt has not seen:
the two mixing weights by grid search on the gold label's log-likelihood (two
numbers, a few dozen items: a grid is robust where gradient steps wander), then
the confidence as an L2-regularized logistic regression of correctness on the
top share and the agreement flag. Pure numpy: it also runs on a device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge_slm.contract import SkillCalibrator

FloatArray = npt.NDArray[np.float64]
#: Grids of the mixing weights: 0 (off) and log-spaced values.
SLM_GRID = (0.0, *np.geomspace(0.05, 5.0, 24).tolist())
EMBED_GRID = (0.0, *np.geomspace(0.5, 80.0, 24).tolist())
L2 = 1.0  # logistic-regression penalty, on the weights only


@dataclass(frozen=True, slots=True)
class Evidence:
    """One request's evidence: the SLM's, the embedding stage's, or both."""

    slm: Mapping[str, float] | None  # label -> probability (sums to 1)
    sims: Mapping[str, float] | None = None  # label -> cosine

    @property
    def labels(self) -> list[str]:
        source = self.slm if self.slm is not None else self.sims
        if source is None:
            raise ValueError("evidence with neither SLM scores nor similarities")
        return list(source)


@dataclass(frozen=True, slots=True)
class Decision:
    label: str
    confidence: float
    scores: dict[str, float]  # the combined distribution


def _argmax(scores: Mapping[str, float]) -> str:
    return max(scores, key=lambda k: scores[k])


def distribution(ev: Evidence, cal: SkillCalibrator) -> dict[str, float]:
    labels = ev.labels
    z = np.zeros(len(labels))
    if ev.slm is not None:
        z += np.array([cal.slm_weight * math.log(max(ev.slm[k], 1e-12)) for k in labels])
    if ev.sims is not None and cal.embed_weight:
        z += cal.embed_weight * np.array([ev.sims[k] for k in labels])
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    return {k: float(v) for k, v in zip(labels, p, strict=True)}


def features(ev: Evidence, scores: Mapping[str, float]) -> tuple[float, float]:
    """(top share, agreement) of one request."""
    agree = ev.slm is not None and ev.sims is not None and _argmax(ev.slm) == _argmax(ev.sims)
    return max(scores.values()), float(agree)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, x))))


def decide(ev: Evidence, cal: SkillCalibrator | None) -> Decision:
    """The label, its calibrated confidence, and the combined distribution.

    Without a calibrator the SLM's own distribution and top share are returned
    unchanged (the behaviour of a skill that was never fitted).
    """
    if cal is None:
        if ev.slm is None:
            raise ValueError("the embedding stage alone needs a fitted calibrator")
        scores = dict(ev.slm)
        label = _argmax(scores)
        return Decision(label, scores[label], scores)
    scores = distribution(ev, cal)
    top, agree = features(ev, scores)
    confidence = _sigmoid(cal.bias + cal.top_weight * top + cal.agree_weight * agree)
    return Decision(_argmax(scores), confidence, scores)


def ece(confidence: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """Expected calibration error: mean |accuracy - confidence| over equal-width bins,
    weighted by the share of items in each."""
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    if conf.size == 0:
        return float("nan")
    which = np.minimum((conf * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(ok[mask].mean() - conf[mask].mean())
    return float(total)


def auroc(confidence: Sequence[float], correct: Sequence[bool]) -> float:
    """P(confidence of a right answer > that of a wrong one), ties counted half
    (Mann-Whitney); NaN when every answer is right or every one wrong."""
    scores = np.asarray(confidence, dtype=np.float64)
    positive = np.asarray(correct, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks over ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _nll(items: Sequence[tuple[Evidence, str]], cal: SkillCalibrator) -> float:
    return -sum(math.log(max(distribution(ev, cal)[gold], 1e-12)) for ev, gold in items)


def logistic(x: FloatArray, y: FloatArray) -> FloatArray:
    """Weights (intercept first) of an L2-regularized logistic regression, by Newton steps."""
    design = np.column_stack([np.ones(len(x)), x])
    w = np.zeros(design.shape[1])
    penalty = np.diag([0.0] + [L2] * x.shape[1])
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ w, -50, 50)))
        grad = design.T @ (p - y) + penalty @ w
        hess = design.T @ (design * (p * (1 - p))[:, None]) + penalty + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def fit(items: Sequence[tuple[Evidence, str]], *, embedding: bool) -> SkillCalibrator:
    """Fit a calibrator on ``(evidence, gold label)`` pairs.

    ``embedding=False`` fits the SLM alone (``embed_weight`` 0, no agreement term);
    evidence without SLM scores fits the embedding stage alone.
    """
    if not items:
        raise ValueError("no labelled items to fit on")
    slm = items[0][0].slm is not None
    grid = [
        SkillCalibrator(slm_weight=a, embed_weight=b)
        for a in (SLM_GRID if slm else (0.0,))
        for b in (EMBED_GRID if embedding else (0.0,))
        if a or b
    ]
    mix = min(grid, key=lambda cal: _nll(items, cal))
    rows, correct = [], []
    for ev, gold in items:
        scores = distribution(ev, mix)
        top, agree = features(ev, scores)
        rows.append((top, agree) if embedding and slm else (top,))
        correct.append(_argmax(scores) == gold)
    w = logistic(np.array(rows, dtype=np.float64), np.array(correct, dtype=np.float64))
    return mix.model_copy(
        update={
            "bias": float(w[0]),
            "top_weight": float(w[1]),
            "agree_weight": float(w[2]) if embedding and slm else 0.0,
        }
    )
