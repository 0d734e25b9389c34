"""Confidence from the model's own token distribution. Pure numpy, no runtime.

Free text (``answer``, ``extract``, ``summarize``): three signals per generated
token, read from the logits *before* the token is chosen:

* ``p_geo``   geometric mean of the chosen tokens' probabilities, i.e.
  ``exp(mean log p)``: overall how expected the answer was to the model;
* ``p_min``   probability of the least likely chosen token: one shaky token
  (a number, a name) can make an otherwise fluent answer wrong;
* ``margin``  mean of ``p(top1) - p(top2)``: whether greedy decoding won
  clearly or by a hair.

``confidence = 0.5 * p_geo + 0.2 * p_min + 0.3 * margin``, clamped to [0, 1].
All three lie in [0, 1], so the blend does too; the weights are priors until
per-device calibration replaces them.

Classification: every label's sequence log-likelihood under the model,
normalized over the label set with a softmax; the confidence is the best
label's share.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

W_GEO = 0.5
W_MIN = 0.2
W_MARGIN = 0.3


@dataclass(frozen=True, slots=True)
class TokenStat:
    logprob: float  # log p of the token that was chosen
    margin: float  # p(top1) - p(top2) at that step


def log_softmax(logits: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    shifted = x - x.max()
    result: npt.NDArray[np.float64] = shifted - math.log(float(np.exp(shifted).sum()))
    return result


def token_stat(logits: npt.NDArray[np.floating], chosen: int) -> TokenStat:
    """Stats of ``chosen`` under one step's logits (any shape holding one vocab row)."""
    logp = log_softmax(logits)
    # argpartition is O(vocab); a full argsort is slow on 150k-token vocabularies.
    top2 = np.argpartition(logp, -2)[-2:]
    p1, p2 = sorted((math.exp(float(logp[i])) for i in top2), reverse=True)
    return TokenStat(logprob=float(logp[chosen]), margin=p1 - p2)


def text_confidence(stats: Sequence[TokenStat]) -> float:
    if not stats:
        return 0.0
    logprobs = [s.logprob for s in stats]
    p_geo = math.exp(sum(logprobs) / len(logprobs))
    p_min = math.exp(min(logprobs))
    margin = sum(s.margin for s in stats) / len(stats)
    return min(1.0, max(0.0, W_GEO * p_geo + W_MIN * p_min + W_MARGIN * margin))


def label_distribution(label_logprobs: Mapping[str, float]) -> dict[str, float]:
    """Softmax of per-label sequence log-likelihoods."""
    if not label_logprobs:
        raise ValueError("no labels to normalize")
    top = max(label_logprobs.values())
    weights = {label: math.exp(lp - top) for label, lp in label_logprobs.items()}
    total = sum(weights.values())
    return {label: w / total for label, w in weights.items()}
