"""Fit a skill's calibration for one edge model on labelled data, and store it.

``edge-agent skills fit`` runs the real engine (and the embedder) on every item,
then fits two calibrators (``agent/skills/calibration.py``): SLM alone, and SLM
plus embedding. Items whose text is one of the skill's exemplars are left out:
the prompt shows them with their answer, so they would teach the fit that the
model is always right. The expected calibration error before (the SLM's raw top
share) and after is estimated by k-fold cross-validation on the same items, so
the "after" figure is never measured on data the fit saw.

The fit is stored in the skill's TOML under ``[fits."<model>"]``: an existing
block for that model is replaced, the rest of the file (comments included) kept.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel

from agent.engine.engine import Engine
from agent.skills import Skill
from agent.skills.calibration import Evidence, decide, ece, fit
from agent.skills.embedding import Embedder
from edge_slm.contract import Scoring, SkillCalibrator, SkillFit

FOLDS = 5
#: The accuracy the embedding-first cascade may give up, cross-validated, to skip the SLM.
MAX_CASCADE_LOSS = 0.02


class Labelled(Protocol):
    """A labelled request (``agent.modelbuild.tune_data.Example`` is one)."""

    @property
    def user(self) -> str: ...  # the request's user turn, as the prompt shows it

    @property
    def label(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Observed:
    evidence: Evidence  # with sims when an embedder ran
    gold: str


@dataclass(frozen=True, slots=True)
class FitReport:
    fit: SkillFit
    used: int
    skipped_exemplars: int
    skipped_unknown: int
    accuracy_before: float
    accuracy_after: float
    seconds: float


def observe(
    engine: Engine,
    skill: Skill,
    examples: Sequence[Labelled],
    embedder: Embedder | None,
    scoring: Scoring = "full",
) -> tuple[list[Observed], int, int]:
    """Evidence for every usable example; also the counts of skipped exemplars/unknown labels."""
    shown = {e for label in skill.spec.labels.values() for e in label.exemplars}
    prompt = skill.prompt(exemplars=engine.skill_exemplars)
    out: list[Observed] = []
    exemplars = unknown = 0
    for ex in examples:
        if ex.label not in skill.spec.labels:
            unknown += 1
            continue
        if ex.user in shown:
            exemplars += 1
            continue
        scores = engine.classify_fixed(prompt, ex.user, scoring=scoring).scores
        sims = embedder.similarities(skill, ex.user) if embedder else None
        out.append(Observed(Evidence(scores, sims), ex.label))
    return out, exemplars, unknown


Way = Literal["slm", "embedding", "combined"]


def _evidence(o: Observed, way: Way) -> Evidence:
    ev = o.evidence
    return {
        "slm": Evidence(ev.slm),
        "embedding": Evidence(None, ev.sims),
        "combined": ev,
    }[way]


def cross_validated(
    items: Sequence[Observed], way: Way, *, folds: int = FOLDS
) -> list[tuple[float, bool]]:
    """(confidence, correct) per item, each predicted by a fit that did not see it."""
    out: list[tuple[float, bool]] = [(0.0, False)] * len(items)
    pairs = [(_evidence(o, way), o.gold) for o in items]
    for k in range(min(folds, len(items))):
        train = [p for i, p in enumerate(pairs) if i % folds != k]
        cal = fit(train, embedding=way != "slm")
        for i in range(k, len(items), folds):
            d = decide(pairs[i][0], cal)
            out[i] = (d.confidence, d.label == pairs[i][1])
    return out


def choose_accept(
    embedding: Sequence[tuple[float, bool]],
    combined: Sequence[tuple[float, bool]],
    *,
    max_loss: float = MAX_CASCADE_LOSS,
) -> float | None:
    """The lowest embedding confidence at which answering from the embedding stage
    alone (skipping the SLM) costs at most ``max_loss`` accuracy against the combined
    answer, on cross-validated predictions; None when no threshold skips anything."""
    n = len(embedding)
    if not n:
        return None
    target = sum(ok for _, ok in combined) / n - max_loss
    best: float | None = None
    for t in sorted({round(c, 4) for c, _ in embedding}, reverse=True):
        acc = sum(e[1] if e[0] >= t else c[1] for e, c in zip(embedding, combined, strict=True))
        if acc / n + 1e-9 < target:
            break
        best = t
    return best


def _ece(pairs: Sequence[tuple[float, bool]]) -> float:
    return ece([c for c, _ in pairs], [ok for _, ok in pairs])


def _accuracy(pairs: Sequence[tuple[float, bool]]) -> float:
    return sum(ok for _, ok in pairs) / len(pairs)


def fit_observed(
    items: Sequence[Observed], embedder: str | None, scoring: Scoring = "full"
) -> tuple[SkillFit, float, float]:
    """The fit of observed items, with the cross-validated accuracy before and after.

    With an ``embedder`` (the items carry similarities), also the embedding stage
    alone and the cascade threshold ``accept``. ``scoring``: the rule the items' SLM
    scores were computed with, recorded in the fit.
    """
    if len(items) < 2 * FOLDS:
        raise ValueError(f"{len(items)} usable examples; need at least {2 * FOLDS}")
    before = [decide(Evidence(o.evidence.slm), None) for o in items]
    raw = [(d.confidence, d.label == o.gold) for d, o in zip(before, items, strict=True)]
    slm = [(_evidence(o, "slm"), o.gold) for o in items]
    slm_only = fit(slm, embedding=False)
    if (why := one_sided(slm, slm_only)) is not None:
        raise ValueError(f"the model {why}; fit on data with some of each")
    result = SkillFit(
        scoring=scoring, slm_only=slm_only, items=len(items), ece_before=round(_ece(raw), 4)
    )
    after = cross_validated(items, "slm")
    if embedder is not None:
        both = [(o.evidence, o.gold) for o in items]
        combined = fit(both, embedding=True)
        result = result.model_copy(
            update={
                "embedder": embedder,
                "embedding_only": fit(
                    [(_evidence(o, "embedding"), o.gold) for o in items], embedding=True
                ),
            }
        )
        if one_sided(both, combined) is None:
            after = cross_validated(items, "combined")
            accept = choose_accept(cross_validated(items, "embedding"), after)
            result = result.model_copy(update={"combined": combined, "accept": accept})
        # else: no combined calibrator, so the agent runs the SLM alone with `slm_only`
    return (
        result.model_copy(update={"ece_after": round(_ece(after), 4)}),
        _accuracy(raw),
        _accuracy(after),
    )


def one_sided(items: Sequence[tuple[Evidence, str]], cal: SkillCalibrator) -> str | None:
    """Why ``cal`` cannot rank: its answers to ``items`` are all right or all wrong.

    A calibrator learns which answers to doubt from both kinds; fitted on one kind it
    gives every request the same confidence, which never (or always) escalates."""
    right = sum(decide(ev, cal).label == gold for ev, gold in items)
    if 0 < right < len(items):
        return None
    return f"answers {'all' if right else 'none'} of the {len(items)} examples right"


def fit_skill(
    engine: Engine,
    skill: Skill,
    examples: Sequence[Labelled],
    embedder: Embedder | None,
    scoring: Scoring = "full",
) -> FitReport:
    start = time.monotonic()
    if not skill.spec.embedding:
        embedder = None
    items, exemplars, unknown = observe(engine, skill, examples, embedder, scoring)
    result, before, after = fit_observed(items, embedder.name if embedder else None, scoring)
    return FitReport(
        fit=result,
        used=len(items),
        skipped_exemplars=exemplars,
        skipped_unknown=unknown,
        accuracy_before=before,
        accuracy_after=after,
        seconds=time.monotonic() - start,
    )


def _toml_value(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        return repr(round(value, 6))
    return str(value)


def render_fit(model: str, result: BaseModel) -> str:
    """The ``[fits."<model>"]`` tables of one fit (a skill's or a tool set's), as TOML text."""
    key = f"fits.{_toml_value(model)}"
    data = result.model_dump(exclude_none=True)
    lines = [f"[{key}]"]
    tables = {}
    for name, value in data.items():
        if isinstance(value, dict):
            tables[name] = value
        else:
            lines.append(f"{name} = {_toml_value(value)}")
    for name, table in tables.items():
        lines += ["", f"[{key}.{name}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def write_fit(path: Path, model: str, result: BaseModel) -> None:
    """Replace (or add) the model's fit in the skill (or tool set) file at ``path``."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    header = re.compile(r"^\[(.+)\]\s*$")
    mine = f"fits.{_toml_value(model)}"
    kept: list[str] = []
    dropping = False
    for line in text.splitlines():
        m = header.match(line)
        if m:
            dropping = m.group(1) == mine or m.group(1).startswith(mine + ".")
        if not dropping:
            kept.append(line)
    body = "\n".join(kept).rstrip("\n")
    block = render_fit(model, result)
    path.write_text((body + "\n\n" if body else "") + block, encoding="utf-8")
