"""Skill calibration: mixing SLM and embedding evidence, fitting it, storing the fit."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from agent.engine.engine import FixedPrompt
from agent.skills import Skill, SkillRegistry, builtin_path, parse_skill
from agent.skills.calibration import Evidence, decide, distribution, ece, fit
from agent.skills.classify import classify_skill, decide_skill, uses_embedding
from agent.skills.fitting import (
    Observed,
    choose_accept,
    cross_validated,
    fit_observed,
    render_fit,
    write_fit,
)
from edge_slm.contract import SkillCalibrator, SkillFit, SkillSpec

LABELS = ["a", "b", "c", "d"]


def _softmax(z: np.ndarray) -> dict[str, float]:
    p = np.exp(z - z.max())
    return dict(zip(LABELS, (p / p.sum()).tolist(), strict=True))


def _synthetic(
    n: int, seed: int, *, slm_temp: float, slm_skill: float, sim_skill: float
) -> list[tuple[Evidence, str]]:
    """Items whose SLM logits lean to the gold label by ``slm_skill`` (then sharpened by
    1/slm_temp: over-confident when < 1) and whose cosines lean by ``sim_skill``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        gold = int(rng.integers(len(LABELS)))
        logits = rng.normal(size=len(LABELS))
        logits[gold] += slm_skill
        cos = rng.normal(0.4, 0.08, size=len(LABELS))
        cos[gold] += sim_skill
        sims = dict(zip(LABELS, cos.tolist(), strict=True))
        out.append((Evidence(_softmax(logits / slm_temp), sims), LABELS[gold]))
    return out


def _score(items: list[tuple[Evidence, str]], cal: SkillCalibrator | None) -> tuple[float, float]:
    decisions = [decide(ev, cal) for ev, _ in items]
    ok = [d.label == gold for d, (_, gold) in zip(decisions, items, strict=True)]
    return float(np.mean(ok)), ece([d.confidence for d in decisions], ok)


def test_without_a_fit_the_slm_distribution_is_returned_unchanged() -> None:
    ev = Evidence({"a": 0.7, "b": 0.2, "c": 0.1}, {"a": 0.1, "b": 0.9, "c": 0.0})
    d = decide(ev, None)
    assert (d.label, d.confidence, d.scores) == ("a", 0.7, {"a": 0.7, "b": 0.2, "c": 0.1})


def test_ece_of_calibrated_and_overconfident_predictions() -> None:
    assert ece([0.75] * 4, [True, True, True, False]) == pytest.approx(0.0)
    assert ece([0.95] * 4, [True, False, True, False]) == pytest.approx(0.45)
    assert math.isnan(ece([], []))


def test_fitting_an_overconfident_slm_lowers_its_calibration_error() -> None:
    kw = {"slm_temp": 0.25, "slm_skill": 1.2, "sim_skill": 0.0}
    train, test = _synthetic(400, 1, **kw), _synthetic(400, 2, **kw)
    cal = fit([(Evidence(ev.slm), gold) for ev, gold in train], embedding=False)
    assert cal.embed_weight == 0
    assert cal.agree_weight == 0
    assert cal.slm_weight < 0.6  # undoes the 4x sharpening
    slm_only = [(Evidence(ev.slm), gold) for ev, gold in test]
    raw_acc, raw_ece = _score(slm_only, None)
    acc, fitted_ece = _score(slm_only, cal)
    assert acc == pytest.approx(raw_acc)  # a temperature never changes the argmax
    assert raw_ece > 0.2
    assert fitted_ece < raw_ece / 3


def test_informative_embeddings_raise_accuracy_when_combined() -> None:
    kw = {"slm_temp": 1.0, "slm_skill": 0.8, "sim_skill": 0.15}
    train, test = _synthetic(300, 3, **kw), _synthetic(300, 4, **kw)
    slm = fit([(Evidence(ev.slm), g) for ev, g in train], embedding=False)
    both = fit(train, embedding=True)
    assert both.embed_weight > 0
    slm_acc, _ = _score([(Evidence(ev.slm), g) for ev, g in test], slm)
    both_acc, both_ece = _score(test, both)
    assert both_acc > slm_acc + 0.1
    assert both_ece < 0.1


def test_the_embedding_stage_alone_can_be_fitted() -> None:
    synthetic = _synthetic(200, 5, slm_temp=1.0, slm_skill=0.0, sim_skill=0.2)
    items = [(Evidence(None, ev.sims), g) for ev, g in synthetic]
    cal = fit(items, embedding=True)
    assert cal.slm_weight == 0
    assert cal.embed_weight > 0
    assert distribution(items[0][0], cal).keys() == set(LABELS)
    with pytest.raises(ValueError, match="fitted calibrator"):
        decide(items[0][0], None)


def test_cross_validated_predictions_come_from_fits_that_did_not_see_the_item() -> None:
    from agent.skills.fitting import Observed

    # Gold is always "a", but the SLM always says "b": every fold's fit learns that
    # the top label is usually wrong, so no held-out item gets a high confidence.
    items = [Observed(Evidence({"a": 0.2, "b": 0.8}), "a") for _ in range(20)]
    out = cross_validated(items, "slm")
    assert len(out) == 20
    assert not any(ok for _, ok in out)
    assert max(c for c, _ in out) < 0.2


def _fit(weight: float, scoring: Literal["full", "prefix"] = "full") -> SkillFit:
    return SkillFit(
        scoring=scoring,
        embedder="minilm-l6-v2-int8",
        combined=SkillCalibrator(slm_weight=weight, embed_weight=12.5, bias=-1, top_weight=3),
        slm_only=SkillCalibrator(slm_weight=0.8, bias=-0.5, top_weight=2),
        items=46,
        ece_before=0.16,
        ece_after=0.1,
    )


def test_a_fit_is_written_into_the_skill_file_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "home_intents.toml"
    original = builtin_path("home_intents").read_text(encoding="utf-8")
    path.write_text(original, encoding="utf-8")
    write_fit(path, "smollm2-135m-instruct", _fit(1.0))
    write_fit(path, "qwen2.5-coder-0.5b-instruct", _fit(0.5))
    write_fit(path, "smollm2-135m-instruct", _fit(2.0, "prefix"))  # replaces, never duplicates
    text = path.read_text(encoding="utf-8")
    spec = parse_skill(text)
    assert spec.fits["smollm2-135m-instruct"] == _fit(2.0, "prefix")
    assert spec.fits["smollm2-135m-instruct"].scoring == "prefix"
    assert spec.fits["qwen2.5-coder-0.5b-instruct"].scoring == "full"  # the default
    assert spec.fits["qwen2.5-coder-0.5b-instruct"] == _fit(0.5)
    assert text.count('[fits."smollm2-135m-instruct"]') == 1
    assert text.startswith(original.split("[fits.")[0].rstrip())  # comments and labels kept
    stripped = {k: v for k, v in tomllib.loads(text).items() if k != "fits"}
    assert stripped == {k: v for k, v in tomllib.loads(original).items() if k != "fits"}
    assert render_fit("m", _fit(1.0)).startswith('[fits."m"]\n')


def test_refitting_keeps_the_skill_fingerprint_so_kept_prefixes_stay() -> None:
    skill = SkillRegistry().get("home_intents")
    assert skill is not None
    refitted = skill.spec.model_copy(update={"fits": {"m": _fit(3.0)}})
    assert Skill.of(skill.name, refitted, "config").fingerprint == skill.fingerprint


class _Embedder:
    name = "minilm-l6-v2-int8"


def _never() -> dict[str, float]:
    raise AssertionError("the SLM ran although the cascade accepted")


def test_the_combined_calibrator_needs_the_embedder_it_was_fitted_with() -> None:
    fit = _fit(1.0)
    other = _Embedder()
    other.name = "another-encoder"
    assert uses_embedding(fit, _Embedder())  # type: ignore[arg-type]
    assert not uses_embedding(fit, other)  # type: ignore[arg-type]
    assert not uses_embedding(fit, None)
    assert not uses_embedding(None, _Embedder())  # type: ignore[arg-type]
    slm = {"a": 0.9, "b": 0.1}
    # without similarities the slm_only calibrator decides
    d, ran = decide_skill(fit, None, lambda: slm)
    assert ran
    assert d == decide(Evidence(slm), fit.slm_only)
    d, ran = decide_skill(None, None, lambda: slm)
    assert d == decide(Evidence(slm), None)


def test_the_cascade_skips_the_slm_only_when_the_embedding_stage_is_confident() -> None:
    emb = SkillCalibrator(embed_weight=30.0, bias=-3.0, top_weight=5.0)
    fit = _fit(1.0).model_copy(update={"embedding_only": emb, "accept": 0.8})
    clear = {"a": 0.9, "b": 0.2}  # p_top ~1: confidence sigmoid(2) = 0.88 >= 0.8
    d, ran = decide_skill(fit, clear, _never)
    assert not ran
    assert d.label == "a"
    assert d.confidence == pytest.approx(1 / (1 + math.exp(-2.0)), abs=1e-3)
    unclear = {"a": 0.50, "b": 0.49}  # p_top ~0.57: below accept, the SLM decides
    d, ran = decide_skill(fit, unclear, lambda: {"a": 0.1, "b": 0.9})
    assert ran
    assert d == decide(Evidence({"a": 0.1, "b": 0.9}, unclear), fit.combined)


class _SizingEngine:
    """Sizes answers (to price them); scoring labels fails the test."""

    name = "m"
    skill_exemplars = True

    def fixed_prompt_size(self, prompt: FixedPrompt, user: str, label: str) -> tuple[int, int]:
        return 100 + len(user), len(label)

    def classify_fixed(self, *args: object, **kwargs: object) -> None:
        _never()


class _ClearEmbedder(_Embedder):
    def similarities(self, skill: Skill, text: str) -> dict[str, float]:
        return {"a": 0.9, "b": 0.2}


def test_an_answer_the_cascade_gave_is_priced_as_if_the_slm_had_read_it() -> None:
    emb = SkillCalibrator(embed_weight=30.0, bias=-3.0, top_weight=5.0)
    fit = _fit(1.0).model_copy(update={"embedding_only": emb, "accept": 0.8})
    # head off: this is the fit's own embedding stage (the skill head: test_skill_head.py)
    spec = SkillSpec.model_validate(
        {"labels": {"a": {}, "b": {}}, "fits": {"m": fit}, "head": False}
    )
    got = classify_skill(
        _SizingEngine(),  # type: ignore[arg-type]
        Skill.of("s", spec, "config"),
        "turn it on",
        embedder=_ClearEmbedder(),  # type: ignore[arg-type]
    )
    assert got.label == "a"
    assert (got.prompt_tokens, got.scored_tokens) == (110, 1)


def test_the_cascade_threshold_gives_up_at_most_the_allowed_accuracy() -> None:
    # embedding right when confident (>= 0.8), wrong below; combined always right
    embedding = [(0.95, True), (0.9, True), (0.85, True), (0.7, False), (0.6, False)] * 4
    combined = [(0.9, True)] * 20
    assert choose_accept(embedding, combined, max_loss=0.0) == 0.85
    assert choose_accept(embedding, combined, max_loss=0.2) == 0.7
    assert choose_accept([(0.9, False)] * 5, [(0.9, True)] * 5, max_loss=0.02) is None


def _observed(items: list[tuple[Evidence, str]]) -> list[Observed]:
    return [Observed(ev, gold) for ev, gold in items]


def test_a_fit_where_the_model_is_always_right_is_refused() -> None:
    """All right, a calibrator learns a constant confidence: it would never escalate."""
    perfect = _synthetic(30, 7, slm_temp=1.0, slm_skill=9.0, sim_skill=0.3)
    assert all(decide(ev, None).label == gold for ev, gold in perfect)
    with pytest.raises(ValueError, match="answers all of the 30 examples right"):
        fit_observed(_observed(perfect), _Embedder.name)
    hopeless = [(ev, next(x for x in LABELS if x != decide(ev, None).label)) for ev, _ in perfect]
    with pytest.raises(ValueError, match="answers none of the 30 examples right"):
        fit_observed(_observed(hopeless), None)


def test_a_combined_stage_that_is_always_right_is_left_out_of_the_fit() -> None:
    """The SLM alone errs, so it is fitted; mixed with decisive embeddings every answer
    is right, so there is no combined calibrator and the agent runs the SLM alone."""
    items = _synthetic(40, 3, slm_temp=1.0, slm_skill=1.0, sim_skill=3.0)
    fitted, _before, _after = fit_observed(_observed(items), _Embedder.name)
    assert fitted.combined is None
    assert fitted.accept is None
    assert fitted.embedding_only is not None
    assert not uses_embedding(fitted, _Embedder())  # type: ignore[arg-type]
    slm_alone = _score(items, fitted.slm_only)[1]
    assert slm_alone < 0.5  # a real calibrator, not a constant
    ranked = {round(decide(Evidence(ev.slm), fitted.slm_only).confidence, 6) for ev, _ in items}
    assert len(ranked) > 10
