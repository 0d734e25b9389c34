"""Skill heads (edge_slm/head.py) without a model: fit and predict, the wire round trip,
the confidence's calibration on held-out data for 2 and 8 labels, the cascade's
combination rule, and typed refusals."""

from __future__ import annotations

import base64
import json
import threading
import warnings
from collections.abc import Sequence

import numpy as np
import pytest

from agent.config import PolicySettings
from agent.engine.engine import Classification
from agent.skills import Skill, SkillRegistry, head_stage
from agent.skills.classify import classify_skill
from agent.skills.head_stage import ACCEPT, combine
from edge_slm.contract import SkillHead, Task, UnsupportedVersion, WireError, decode
from edge_slm.contract.skills import HeadProvenance, SkillSpec
from edge_slm.head import (
    MAX_CONFIDENCE,
    MIN_CALIBRATION_CASES,
    RAW,
    Head,
    HeadOutput,
    HeadRejected,
    calibrate_on,
    fit_head,
    fit_platt,
)
from edge_slm.rounding import confidence as round_confidence

DIM = 24


def _data(
    labels: list[str], per_label: int, *, noise: float, seed: int
) -> tuple[np.ndarray, list[str]]:
    """Unit vectors around one fixed centre per label (the same centres for every seed)."""
    centres = np.random.default_rng(1234).normal(size=(len(labels), DIM))
    rng = np.random.default_rng(seed)
    rows, gold = [], []
    for i, label in enumerate(labels):
        x = centres[i] + rng.normal(scale=noise, size=(per_label, DIM))
        rows.append(x)
        gold += [label] * per_label
    vectors = np.concatenate(rows)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32), gold


def _ece(conf: np.ndarray, right: np.ndarray, bins: int = 10) -> float:
    edges = np.minimum((conf * bins).astype(int), bins - 1)
    return float(
        sum(
            (edges == b).mean() * abs(conf[edges == b].mean() - right[edges == b].mean())
            for b in range(bins)
            if (edges == b).any()
        )
    )


def _auroc(conf: np.ndarray, right: np.ndarray) -> float:
    pos, neg = conf[right], conf[~right]
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg).mean())


def test_fit_predict_and_the_wire_round_trip() -> None:
    labels = ["lights_on", "lights_off", "play_music"]
    x, gold = _data(labels, 12, noise=0.6, seed=0)
    head = fit_head(x, gold, labels)
    assert head.labels == tuple(labels)
    assert head.weights.shape == (3, DIM)
    provenance = HeadProvenance(skill_texts=36, cloud_labels=0, held_out=0, paraphrases=80)
    wire = head.to_wire(skill="home_intents", version=3, embedder="minilm", provenance=provenance)
    assert wire.provenance == provenance
    back = Head.from_wire(decode(SkillHead, json.dumps(wire.model_dump(mode="json")).encode()))
    probe, probe_gold = _data(labels, 5, noise=0.6, seed=9)
    for v, g in zip(probe, probe_gold, strict=True):
        a, b = head.predict(v), back.predict(v)
        assert a.label == b.label == g  # separable enough to be right on clean probes
        assert a.probs == pytest.approx(b.probs, abs=1e-6)
        assert a.confidence == pytest.approx(b.confidence, abs=1e-6)
        assert sum(a.probs.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("k", [2, 8])
def test_the_confidence_is_a_calibrated_probability_of_being_right(k: int) -> None:
    """Fitted on a small set, checked on a large held-out one: the confidence tracks the
    accuracy (small ECE), ranks right above wrong, and for two labels it goes under
    the classify threshold when unsure (a raw top share never drops below 0.5)."""
    labels = [f"l{i}" for i in range(k)]
    noise = 3.0 if k == 2 else 2.0  # 80-90% accuracy either way
    x, gold = _data(labels, 40, noise=noise, seed=0)
    head = fit_head(x, gold, labels)
    test, test_gold = _data(labels, 300, noise=noise, seed=1)
    outs = [head.predict(v) for v in test]
    conf = np.array([o.confidence for o in outs])
    right = np.array([o.label == g for o, g in zip(outs, test_gold, strict=True)])
    assert 0.6 < right.mean() < 0.95  # the case is neither trivial nor hopeless
    assert _ece(conf, right) < 0.06
    assert abs(conf.mean() - right.mean()) < 0.05
    assert _auroc(conf, right) > 0.75
    if k == 2:
        assert (conf < 0.6).mean() > 0.03  # unsure two-label answers can escalate


def test_the_cascade_combination() -> None:
    head = HeadOutput("a", {"a": 0.6, "b": 0.4}, 0.6)
    assert combine(head, "a", 0.7) == ("a", pytest.approx(1 - 0.4 * 0.3))  # agreement raises
    label, conf = combine(head, "b", 0.7)  # disagreement: the more confident, discounted
    assert label == "b"
    assert conf == pytest.approx(0.7 * 0.4)
    assert conf < 0.6
    label, conf = combine(head, "b", 0.3)
    assert label == "a"
    assert conf == pytest.approx(0.6 * 0.7)
    # An SLM with no fit for the skill: its raw share moves the confidence, not the label.
    assert combine(head, "b", 0.7, calibrated=False) == ("a", pytest.approx(0.6 * 0.4))
    assert combine(head, "a", 0.7, calibrated=False) == ("a", pytest.approx(1 - 0.4 * 0.3))


class _RawSlm:
    """A model the skill has no fit for: it says ``b`` with a raw top share of 0.9."""

    name = "m"
    skill_exemplars = True
    calls = 0

    def classify_fixed(self, *args: object, **kwargs: object) -> Classification:
        self.calls += 1
        return Classification("b", 0.9, {"a": 0.1, "b": 0.9}, 50, 1, 0.0)


class _OneVector:
    name = "test-encoder"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.tile(np.array([0.3, 0.1], dtype=np.float32), (len(texts), 1))


def test_an_unfitted_slm_does_not_take_the_label_from_an_unsure_head() -> None:
    head = Head(labels=("a", "b"), weights=np.eye(2, dtype=np.float32), bias=np.zeros(2))
    assert 0.5 < head.predict(np.array([0.3, 0.1])).confidence < ACCEPT  # unsure: the SLM runs
    skill = Skill.of("s", SkillSpec.model_validate({"labels": {"a": {}, "b": {}}}), "config")
    slm = _RawSlm()
    got = classify_skill(slm, skill, "x", embedder=_OneVector(), head=(head, 1))  # type: ignore[arg-type]
    assert slm.calls == 1
    assert got.label == "a"
    assert got.confidence < PolicySettings().thresholds[Task.CLASSIFY]  # the cloud gets it


def test_a_head_is_never_certain_so_a_threshold_of_one_always_escalates() -> None:
    """A saturated head (the zero-shot one on "play some jazz" read 1.0) stays below 1.0
    on the wire, and so does the cascade's combination of two confident stages."""
    labels = ("lights_on", "play_music")
    head = Head(
        labels=labels,
        weights=np.array([[50.0, 0.0], [0.0, 50.0]], dtype=np.float32),
        bias=np.zeros(2, dtype=np.float32),
        calibration=(1.56, 0.0),
    )
    out = head.predict(np.array([0.0, 1.0], dtype=np.float32))
    assert out.label == "play_music"
    assert out.confidence == MAX_CONFIDENCE
    assert round_confidence(out.confidence) < 1.0
    _, combined = combine(out, "play_music", 0.9999)
    assert round_confidence(combined) < 1.0


def test_typed_refusals() -> None:
    labels = ["lights_on", "lights_off"]
    x, gold = _data(labels, 6, noise=0.5, seed=0)
    wire = fit_head(x, gold, labels).to_wire(skill="home_intents", version=1, embedder="m")
    raw = wire.model_dump(mode="json")
    with pytest.raises(UnsupportedVersion):
        decode(SkillHead, {**raw, "v": 2})
    with pytest.raises(WireError):  # weights of the wrong size for K x dim
        decode(SkillHead, {**raw, "dim": DIM + 1})
    with pytest.raises(WireError):
        decode(SkillHead, {**raw, "bias": [0.0]})
    nan = np.full((2, DIM), np.nan, dtype="<f4").tobytes()
    broken = SkillHead.model_validate({**raw, "weights": base64.b64encode(nan).decode()})
    with pytest.raises(HeadRejected):
        Head.from_wire(broken)
    with pytest.raises(ValueError, match="every label"):
        fit_head(x[:6], gold[:6], labels)  # only lights_on examples


def test_the_registry_takes_a_head_live_and_refuses_one_that_does_not_fit() -> None:
    registry = SkillRegistry()
    skill = registry.get("home_intents")
    assert skill is not None
    x, gold = _data(skill.labels, 3, noise=0.5, seed=0)
    head = fit_head(x, gold, skill.labels)
    assert registry.head_versions()["home_intents"] == 0  # the skill-text head
    registry.set_head("home_intents", head, 2)
    assert registry.head_versions()["home_intents"] == 2
    found = registry.head("home_intents")
    assert found is not None
    assert found[1] == 2
    with pytest.raises(HeadRejected):  # not newer
        registry.set_head("home_intents", head, 2)
    two = ["lights_on", "lights_off"]
    y, ygold = _data(two, 3, noise=0.5, seed=0)
    with pytest.raises(HeadRejected):  # labels are not the skill's
        registry.set_head("home_intents", fit_head(y, ygold, two), 3)
    with pytest.raises(HeadRejected):
        registry.set_head("no_such_skill", head, 3)


class _CountingEncoder:
    """Random unit vectors, one encoder run per call; sets ``stop`` after ``stop_after``."""

    def __init__(self, name: str, stop: threading.Event | None = None, stop_after: int = 0):
        self.name, self.runs, self._stop, self._stop_after = name, 0, stop, stop_after
        self._rng = np.random.default_rng(0)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.runs += 1
        if self._stop is not None and self.runs >= self._stop_after:
            self._stop.set()  # a SIGTERM arriving while this batch runs
        x = self._rng.normal(size=(len(texts), DIM))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_warming_the_heads_gives_up_at_the_next_batch_once_stopped() -> None:
    """A shutdown waits for one encoder run, not for every skill's texts (the join that
    keeps the process from aborting would otherwise take minutes on a slow board)."""
    skills = [s for s in SkillRegistry().all() if s.spec.embedding and s.spec.head]
    assert skills
    stop = threading.Event()
    stopped = _CountingEncoder("warm-stopped", stop, stop_after=1)
    assert head_stage.warm(skills, stopped, stop=stop) == 0  # type: ignore[arg-type]
    assert stopped.runs == 1
    whole = _CountingEncoder("warm-whole")
    assert head_stage.warm(skills, whole, stop=threading.Event()) == len(skills)  # type: ignore[arg-type]
    batches = [-(-len(head_stage.skill_texts(s.spec)[0]) // head_stage.BATCH) for s in skills]
    assert whole.runs == sum(batches)
    assert max(batches) > 1  # so the stopped run really gave up inside a skill


def test_too_few_wrong_answers_out_of_fold_leave_the_raw_top_share() -> None:
    """Platt's two parameters on a handful of errors flatten the confidence (every answer
    alike, none escalating): with fewer than MIN_CALIBRATION_CASES wrong out of fold the
    head keeps the raw top share; with enough, it is calibrated."""
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]
    from sklearn.model_selection import (  # type: ignore[import-untyped]
        StratifiedKFold,
        cross_val_predict,
    )

    from edge_slm.head import FOLDS, C

    labels = ["a", "b", "c", "d", "e"]

    def wrong_out_of_fold(x: np.ndarray, gold: list[str]) -> int:
        y = np.array([labels.index(g) for g in gold])
        cv = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=0)
        model = LogisticRegression(C=C, max_iter=2000, random_state=0)
        oof = cross_val_predict(model, x, y, cv=cv, method="predict_proba")
        return int((oof.argmax(axis=1) != y).sum())

    easy = _data(labels, 18, noise=1.5, seed=3)
    assert 0 < wrong_out_of_fold(*easy) < MIN_CALIBRATION_CASES
    assert fit_head(*easy, labels).calibration == (1.0, 0.0)
    hard = _data(labels, 18, noise=2.0, seed=3)
    assert wrong_out_of_fold(*hard) >= MIN_CALIBRATION_CASES
    assert fit_head(*hard, labels).calibration != (1.0, 0.0)


def test_a_head_that_cannot_calibrate_out_of_fold_is_calibrated_on_held_out_texts() -> None:
    """One text per label (a label set's names) leaves nothing to calibrate on out of
    fold: the raw top share, over 8 labels mostly low. Calibrated on labelled texts it
    was not fitted on, the same head answers the same labels, and its confidence tracks
    its accuracy on fresh texts and ranks right above wrong."""
    labels = [f"l{i}" for i in range(8)]
    names, names_gold = _data(labels, 1, noise=0.1, seed=0)
    raw = fit_head(names, names_gold, labels)
    assert raw.calibration == RAW
    assert not raw.calibrated
    held, held_gold = _data(labels, 15, noise=2.0, seed=1)
    head = calibrate_on(raw, held, held_gold)
    assert head is not None
    assert head.calibrated
    test, test_gold = _data(labels, 300, noise=2.0, seed=2)
    outs = [head.predict(v) for v in test]
    raws = [raw.predict(v) for v in test]
    assert [o.label for o in outs] == [o.label for o in raws]
    conf = np.array([o.confidence for o in outs])
    right = np.array([o.label == g for o, g in zip(outs, test_gold, strict=True)])
    assert 0.5 < right.mean() < 0.95  # the case is neither trivial nor hopeless
    assert abs(conf.mean() - right.mean()) < 0.1
    assert abs(np.array([o.confidence for o in raws]).mean() - right.mean()) > 0.2
    assert _auroc(conf, right) > 0.7


def test_a_calibration_is_refused_on_too_few_errors_or_a_ranking_it_would_turn_over() -> None:
    """Platt scaling needs MIN_CALIBRATION_CASES wrong and right answers, and a slope
    above 0: where the surer answers were the wrong ones (mislabelled cases answered
    confidently), a fit would turn the ranking over, so there is none."""
    shares = np.linspace(0.2, 0.9, 40)
    assert fit_platt(shares, shares > 0.5) is not None
    noisy = fit_platt(shares, (shares > 0.5) ^ (np.arange(40) % 5 == 0))  # some flipped
    assert noisy is not None
    assert noisy[0] > 0
    few = np.arange(40) < MIN_CALIBRATION_CASES - 1
    assert fit_platt(shares, ~few) is None  # four wrong
    assert fit_platt(shares, few) is None  # four right
    assert fit_platt(shares, shares < 0.5) is None  # surer, more often wrong
    labels = ["a", "b"]
    x, gold = _data(labels, 1, noise=0.1, seed=0)
    raw = fit_head(x, gold, labels)
    held, held_gold = _data(labels, 10, noise=0.5, seed=1)
    assert calibrate_on(raw, held, held_gold) is None  # all right: nothing to learn from


def test_a_skill_of_one_text_per_label_fits_without_a_warning() -> None:
    """A skill of verbalizers alone (the HWU64 skill of intent names) has one text per
    label; scikit-learn's regression-target warning is expected there and kept out of
    the agent's log, and the head still answers each name's own vector."""
    labels = [f"intent_{i}" for i in range(32)]
    x, gold = _data(labels, 1, noise=0.1, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        head = fit_head(x, gold, labels)
    assert [head.predict(v).label for v in x] == gold
