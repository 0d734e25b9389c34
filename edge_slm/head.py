"""A skill's classify head: multinomial logistic regression over sentence vectors.

Predicting is numpy only (the device's hot path); fitting uses scikit-learn,
imported inside the fitting function only. The confidence is the calibrated
probability that the top label is right: ``sigmoid(a * logit(p_top) + b)``, with
``a, b`` fitted (Platt scaling) on out-of-fold predictions of the training data,
so it means the same for 2 labels as for 64.

A head travels as :class:`edge_slm.contract.skills.SkillHead` (``to_wire`` /
``from_wire``). ``skill_texts`` is the one definition of a skill's own training
texts, shared by the device (its head at load) and the relay (the baseline a
pushed head must beat).
"""

from __future__ import annotations

import base64
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from edge_slm.contract.skills import HeadProvenance, SkillHead, SkillSpec, default_verbalizer

Vectors = npt.NDArray[np.float32]
FOLDS = 5
#: Platt scaling needs at least this many wrong (and right) out-of-fold answers; with
#: fewer the raw top share stands. Its two parameters fitted on a handful of errors
#: flatten the confidence: a 5-label skill with 92 texts (its own and the cloud's
#: paraphrases), 4 wrong out of fold, got a slope of 0.15, every answer at ~0.94, and
#: none escalated (BENCHMARKS.md, "the cloud's paraphrases").
MIN_CALIBRATION_CASES = 5
#: The calibration of a head with none: ``platt(1, 0, p)`` is the raw top share.
RAW = (1.0, 0.0)
#: Inverse regularization: unit-length vectors and few examples per label want a weak prior.
C = 10.0
#: Zero-shot heads: 1 / the softmax temperature over cosines (MiniLM was trained
#: contrastively at a scale of 20), and the calibration of the top share,
#: ``sigmoid(A * logit(p_top) + B + K_WEIGHT * log(K))``, fitted once, offline, on the
#: dev split of the project's voice set with label subsets of every size
#: (``bench/head_stage.py``), so that it means the same for 2 labels as for 12.
SCALE = 20.0
ZERO_SHOT_A = 1.56
ZERO_SHOT_B = -0.38
ZERO_SHOT_K_WEIGHT = 0.30


class HeadRejected(ValueError):
    """A head that does not fit the skill or the encoder it would be used with."""


def skill_texts(spec: SkillSpec, *, exemplars: bool = True) -> tuple[list[str], list[str]]:
    """A skill's own texts and their labels: per label, "verbalizer: description" (or the
    verbalizer alone) and, with ``exemplars``, each exemplar."""
    texts: list[str] = []
    gold: list[str] = []
    for name, label in spec.labels.items():
        words = label.words(name)
        line = f"{words}: {label.description}" if label.description else words
        for text in (line, *(label.exemplars if exemplars else ())):
            texts.append(text)
            gold.append(name)
    return texts, gold


@dataclass(frozen=True, slots=True)
class HeadOutput:
    label: str
    probs: dict[str, float]
    confidence: float


#: The highest confidence a head claims. It is a probability estimated from a few
#: dozen texts, never a certainty (only a skill's rules are): without the cap a
#: saturated sigmoid read 1.0 on the wire (4 decimals), and met a threshold of 1.0,
#: which means "always escalate".
MAX_CONFIDENCE = 0.9999


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def logit(p: float, *, eps: float = 1e-6) -> float:
    """``log(p / (1 - p))`` with ``p`` kept ``eps`` away from 0 and 1."""
    p = min(max(p, eps), 1 - eps)
    return math.log(p / (1 - p))


def platt(a: float, b: float, p: float, *, eps: float = 1e-6) -> float:
    """Platt scaling on the logit, ``sigmoid(a * logit(p) + b)``, with ``p`` kept
    ``eps`` away from 0 and 1: a head's top share, or an ``act`` reply's raw
    confidence (``agent/toolset_fit.py``)."""
    return _sigmoid(a * logit(p, eps=eps) + b)


@dataclass(frozen=True, slots=True)
class Head:
    labels: tuple[str, ...]
    weights: npt.NDArray[np.float32]  # [K, d]
    bias: npt.NDArray[np.float32]  # [K]
    calibration: tuple[float, float] = RAW

    @property
    def dim(self) -> int:
        return int(self.weights.shape[1])

    @property
    def calibrated(self) -> bool:
        """Whether its confidence is calibrated, not the raw top share."""
        return self.calibration != RAW

    def probabilities(self, vectors: Vectors) -> npt.NDArray[np.float64]:
        """Softmax rows for a batch of vectors [n, d]."""
        z = vectors.astype(np.float64) @ self.weights.T.astype(np.float64) + self.bias
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        out: npt.NDArray[np.float64] = e / e.sum(axis=1, keepdims=True)
        return out

    def confidence(self, p_top: float) -> float:
        return min(platt(*self.calibration, p_top), MAX_CONFIDENCE)

    def predict(self, vector: Vectors) -> HeadOutput:
        probs = self.probabilities(vector.reshape(1, -1))[0]
        top = int(probs.argmax())
        return HeadOutput(
            label=self.labels[top],
            probs={label: float(p) for label, p in zip(self.labels, probs, strict=True)},
            confidence=self.confidence(float(probs[top])),
        )

    def to_wire(
        self,
        *,
        skill: str,
        version: int,
        embedder: str,
        provenance: HeadProvenance | None = None,
    ) -> SkillHead:
        raw = self.weights.astype("<f4").tobytes(order="C")
        return SkillHead(
            skill=skill,
            version=version,
            embedder=embedder,
            labels=list(self.labels),
            dim=self.dim,
            weights=base64.b64encode(raw).decode("ascii"),
            bias=[float(b) for b in self.bias],
            calibration=self.calibration,
            provenance=provenance or HeadProvenance(skill_texts=0, cloud_labels=0, held_out=0),
            created_at=time.time(),
        )

    @classmethod
    def from_wire(cls, wire: SkillHead) -> Head:
        raw = base64.b64decode(wire.weights, validate=True)
        weights = np.frombuffer(raw, dtype="<f4").reshape(len(wire.labels), wire.dim)
        if not np.isfinite(weights).all():
            raise HeadRejected("the weights are not all finite")
        return cls(
            labels=tuple(wire.labels),
            weights=weights.astype(np.float32),
            bias=np.asarray(wire.bias, dtype=np.float32),
            calibration=wire.calibration,
        )


def label_texts(labels: Sequence[str]) -> list[str]:
    """A request's own label set's texts: each label's name as words, in order."""
    return [default_verbalizer(label) for label in labels]


def zero_shot(labels: Sequence[str], vectors: Vectors) -> Head:
    """The head a device runs for a label set nobody learned yet: cosine to each label
    name's vector (``vectors``, of :func:`label_texts`) at the encoder's temperature,
    with the zero-shot calibration. The relay builds the same one as the baseline a
    learned head must beat."""
    return Head(
        labels=tuple(labels),
        weights=(vectors * SCALE).astype(np.float32),
        bias=np.zeros(len(labels), dtype=np.float32),
        calibration=(ZERO_SHOT_A, ZERO_SHOT_B + ZERO_SHOT_K_WEIGHT * math.log(len(labels))),
    )


def fit_head(
    vectors: Vectors,
    gold_labels: Sequence[str],
    labels: Sequence[str],
    *,
    seed: int = 0,
    calibrate: bool = True,
) -> Head:
    """Multinomial logistic regression on ``vectors`` (every label in ``labels`` must occur),
    its confidence calibrated on out-of-fold predictions (``calibrate``; without, the raw
    top share: enough where only the label is wanted, at a sixth of the time)."""
    # scikit-learn ships no type information.
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]
    from sklearn.model_selection import (  # type: ignore[import-untyped]
        StratifiedKFold,
        cross_val_predict,
    )

    names = tuple(labels)
    index = {name: i for i, name in enumerate(names)}
    y = np.array([index[g] for g in gold_labels])
    if len(set(y.tolist())) != len(names):
        raise ValueError("every label needs at least one example")
    model = LogisticRegression(C=C, max_iter=2000, random_state=seed)
    with warnings.catch_warnings():
        # A skill of verbalizers alone has one text per label, which scikit-learn
        # suspects is a regression target; here it is a label set by construction.
        warnings.filterwarnings("ignore", "The number of unique classes", UserWarning)
        model.fit(vectors, y)
    weights, bias = model.coef_, model.intercept_
    if len(names) == 2:  # one row for the second label; softmax over [0, w] is the same
        weights = np.vstack([np.zeros_like(weights), weights])
        bias = np.concatenate([[0.0], bias])
    head = Head(labels=names, weights=weights.astype(np.float32), bias=bias.astype(np.float32))
    folds = min(FOLDS, int(np.bincount(y).min()))
    if folds < 2 or not calibrate:
        return head  # too few examples per label to calibrate: the raw top share
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    oof = cross_val_predict(
        LogisticRegression(C=C, max_iter=2000, random_state=seed),
        vectors,
        y,
        cv=cv,
        method="predict_proba",
    )
    calibration = fit_platt(oof.max(axis=1), oof.argmax(axis=1) == y)
    return head if calibration is None else replace(head, calibration=calibration)


def fit_platt(p_top: npt.ArrayLike, right: npt.ArrayLike) -> tuple[float, float] | None:
    """Platt scaling's ``(a, b)`` from top shares and whether each answer was right;
    None with fewer than MIN_CALIBRATION_CASES wrong (or right) answers, or where a
    higher top share did not go with more right answers (``a <= 0``): such a fit would
    turn the ranking over, and mislabelled cases that the head answers confidently
    "wrong" are what gives one."""
    from sklearn.linear_model import LogisticRegression

    hit = np.asarray(right, dtype=bool).astype(int)
    if min(int(hit.sum()), len(hit) - int(hit.sum())) < MIN_CALIBRATION_CASES:
        return None
    feature = np.array([[logit(float(p))] for p in np.asarray(p_top, dtype=np.float64)])
    model = LogisticRegression(C=1e6, max_iter=1000).fit(feature, hit)
    a, b = float(model.coef_[0][0]), float(model.intercept_[0])
    return (a, b) if a > 0 else None


def calibrate_on(head: Head, vectors: Vectors, gold: Sequence[str]) -> Head | None:
    """``head`` with its confidence calibrated on labelled texts it was not fitted on (the
    relay's held-out cases), for a head that could not be calibrated out of fold; None
    with too few wrong (or right) answers there. The labels it answers are unchanged."""
    probs = head.probabilities(vectors)
    answers = [head.labels[i] for i in probs.argmax(axis=1)]
    right = [a == g for a, g in zip(answers, gold, strict=True)]
    calibration = fit_platt(probs.max(axis=1), right)
    return None if calibration is None else replace(head, calibration=calibration)
