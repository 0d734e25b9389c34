"""Classify with a skill: its bands, its head, the SLM's label scores, its fit.

Readings that the skill's bands cover are judged by rule first
(``agent/skills/bands.py``); only what the bands leave open goes on. Then the
cascade (``agent/skills/head_stage.py``): the skill's head (pushed by the relays,
else fitted from the skill's texts) answers when its calibrated P(correct) is at
least ``ACCEPT``, and the SLM is skipped (always, for a skill with ``slm = false``:
the head's answer stands at its own confidence). Otherwise the SLM scores the labels
after the skill's kept prefix (``Engine.classify_fixed``), its fit (with the embedding
stage when made with the loaded embedder, ``agent/skills/calibration.py``) gives
its label and calibrated confidence, and ``head_stage.combine`` merges both. A
skill with ``head = false`` runs the fit's stages alone, as before the head. A
model the skill has no fit for gets the SLM's raw distribution and top share; with a
head, that raw share only moves the head's confidence and never takes its label.

Ad-hoc ``labels`` (no skill) go the same way (``classify_labels``), with the head
the relays learned for that label set (``agent/skills/label_heads.py``), else a
zero-shot head from the label names.

An answer from the bands or a head reports the tokens the model would have read and
the label's own (``Engine.fixed_prompt_size``): the telemetry prices edge answers by
their tokens, and these are cloud calls avoided too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from agent.engine.engine import Classification, Engine, StopWhen
from agent.engine.prompts import Message
from agent.skills import Skill
from agent.skills.bands import judge, judge_text
from agent.skills.calibration import Decision, Evidence, decide
from agent.skills.embedding import Embedder
from agent.skills.head_stage import ACCEPT, combine, skill_head, zero_shot_head
from edge_slm.contract import SensorReading, SkillFit
from edge_slm.head import Head, HeadOutput


def uses_embedding(fit: SkillFit | None, embedder: Embedder | None) -> bool:
    """Whether ``fit`` has a combined calibrator made with this ``embedder``."""
    return (
        fit is not None
        and fit.combined is not None
        and embedder is not None
        and fit.embedder == embedder.name
    )


def decide_skill(
    fit: SkillFit | None,
    sims: Mapping[str, float] | None,
    slm: Callable[[], Mapping[str, float]],
) -> tuple[Decision, bool]:
    """The decision, and whether the SLM ran. ``sims`` is None without the embedding
    stage; ``slm`` runs the model (called only when the cascade does not accept)."""
    if sims is not None and fit is not None and fit.accept is not None and fit.embedding_only:
        first = decide(Evidence(None, sims), fit.embedding_only)
        if first.confidence >= fit.accept:
            return first, False
    calibrator = None
    if fit is not None:
        calibrator = fit.combined if sims is not None and fit.combined else fit.slm_only
    return decide(Evidence(slm(), sims), calibrator), True


def classify_skill(
    engine: Engine,
    skill: Skill,
    text: str,
    *,
    readings: Sequence[SensorReading] = (),
    embedder: Embedder | None = None,
    stop: StopWhen = StopWhen(),  # noqa: B008  (frozen dataclass: never mutated)
    head: tuple[Head, int] | None = None,
) -> Classification:
    """``head``: the skill's head pushed by the relays and its version; without one, the
    head fitted from the skill's own texts (version 0), when the embedder is loaded."""
    start = time.perf_counter()
    # No `sensor` field: a report may state its readings in words (bands.judge_text).
    verdict = judge(skill.spec, readings) if readings else judge_text(skill.spec, text)
    if verdict is not None:
        scores = {label: float(label == verdict.label) for label in skill.labels}
        prompt_tokens, answer_tokens = _unrun_size(engine, skill, text, verdict.label)
        return Classification(
            label=verdict.label,
            confidence=1.0,
            scores=scores,
            prompt_tokens=prompt_tokens,
            scored_tokens=answer_tokens,
            total_s=time.perf_counter() - start,
            basis=verdict.basis,
        )
    first: HeadOutput | None = None
    version = 0
    if embedder is not None and skill.spec.embedding and skill.spec.head:
        used, version = head if head is not None else (skill_head(embedder, skill), 0)
        first = used.predict(embedder.embed([text])[0])
        if first.confidence >= ACCEPT or not skill.spec.slm:
            prompt_tokens, answer_tokens = _unrun_size(engine, skill, text, first.label)
            return Classification(
                label=first.label,
                confidence=first.confidence,
                scores=first.probs,
                prompt_tokens=prompt_tokens,
                scored_tokens=answer_tokens,
                total_s=time.perf_counter() - start,
                basis=f"skill head v{version}",
            )
    fit = skill.fit_for(engine.name)
    sims = None
    if embedder is not None and skill.spec.embedding and uses_embedding(fit, embedder):
        sims = embedder.similarities(skill, text)
    raw: list[Classification] = []

    def run_slm() -> Mapping[str, float]:
        prompt = skill.prompt(exemplars=engine.skill_exemplars)
        scoring = fit.scoring if fit is not None else "full"
        raw.append(engine.classify_fixed(prompt, text, scoring=scoring, stop=stop))
        return raw[0].scores

    decision, _ = decide_skill(fit, sims, run_slm)
    label, confidence = decision.label, decision.confidence
    if first is not None:
        label, confidence = combine(first, label, confidence, calibrated=fit is not None)
    if raw:
        prompt_tokens, scored_tokens = raw[0].prompt_tokens, raw[0].scored_tokens
    else:
        prompt_tokens, scored_tokens = _unrun_size(engine, skill, text, label)
    return Classification(
        label=label,
        confidence=confidence,
        scores=decision.scores,
        prompt_tokens=prompt_tokens,
        scored_tokens=scored_tokens,
        total_s=time.perf_counter() - start,
    )


def classify_labels(
    engine: Engine,
    messages: Sequence[Message],
    labels: Sequence[str],
    text: str,
    *,
    embedder: Embedder | None = None,
    stop: StopWhen = StopWhen(),  # noqa: B008  (frozen dataclass: never mutated)
    head: tuple[Head, int] | None = None,
) -> Classification:
    """A request listing its own labels: a head first (``head``: the one the relays
    learned for this label set and its version; without one, the zero-shot head from
    the label names), the SLM where it is unsure. The SLM has no fit for an ad-hoc label
    set, so its raw top share is no P(correct) (two labels give at least 0.5): as for a
    skill without a fit (``head_stage.combine``), it never takes the head's label, and
    only its disagreement lowers the head's confidence, to ``min(c, 1 - c)``. On HWU64
    ``train.jsonl`` items (``python -m bench.unfitted_slm --ad-hoc``), letting its label
    stand cost 14 points of edge accuracy with 64 labels (11 with a learned head) at the
    same escalation rate and system accuracy."""
    start = time.perf_counter()
    first = None
    if embedder is not None:
        if head is not None and set(head[0].labels) == set(labels):
            used, basis = head[0], f"label-set head v{head[1]}"
        else:
            used, basis = zero_shot_head(embedder, labels), "zero-shot head"
        first = used.predict(embedder.embed([text])[0])
        if first.confidence >= ACCEPT:
            # Priced as if the model had read it, like every edge answer (cost avoided).
            prompt = len(engine.encode_chat(messages))
            answered = [*messages, {"role": "assistant", "content": first.label}]
            return Classification(
                label=first.label,
                confidence=first.confidence,
                scores=first.probs,
                prompt_tokens=prompt,
                scored_tokens=max(1, len(engine.encode_chat(answered)) - prompt),
                total_s=time.perf_counter() - start,
                basis=basis,
            )
    slm = engine.classify(messages, labels, stop=stop)
    if first is None:
        return slm
    agree = slm.label == first.label
    confidence = first.confidence if agree else min(first.confidence, 1 - first.confidence)
    return Classification(
        label=first.label,
        confidence=confidence,
        scores=first.probs,
        prompt_tokens=slm.prompt_tokens,
        scored_tokens=slm.scored_tokens,
        total_s=time.perf_counter() - start,
    )


def _unrun_size(engine: Engine, skill: Skill, text: str, label: str) -> tuple[int, int]:
    """Tokens of an answer the model did not run: priced as if it had (cost avoided)."""
    prompt = skill.prompt(exemplars=engine.skill_exemplars)
    return engine.fixed_prompt_size(prompt, text, label)
