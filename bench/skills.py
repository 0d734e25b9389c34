"""Skills on the classify path: prefix-KV reuse latency, and accuracy/AUROC/ECE vs bare.

Two parts, both on the held-out split of ``tests/data/eval`` (``bench.eval_data.split_of``:
never used for the built-in skills' exemplars):

* ``latency`` (default model): the 12-label ``home_intents`` skill on every held-out voice
  command, five ways per item in rotating order, same engine, same process:
  - ``skill+reuse``: ``Engine.classify_fixed`` with the skill's fixed prompt kept
    prefilled; the request appends only its own turn, scores, rewinds;
  - ``skill fresh``: the same tokens prefilled from scratch (``reuse=False``): the cost
    of a few-shot prompt without reuse, the baseline of the ratio;
  - ``bare``: the product's inline-labels prompt (``build_messages``) with ``classify``;
  - ``skill+reuse, prefix``: as ``skill+reuse`` with distinguishing-prefix scoring;
  - ``agent``: ``classify_skill`` as the agent runs it, with the embedder and the skill's
    shipped fit for the model (the cascade skips the SLM when the embedding stage is
    confident; otherwise the embedding stage plus ``skill+reuse``).
  p50/p95 wall time per call, ratios to ``skill fresh`` and ``bare``, and the largest
  difference between the reuse and fresh label probabilities (they run the same tokens).
* ``accuracy`` (each ``--models``, plus ``--tuned`` models): every held-out voice and
  sensor item, by method:
  - ``bare``: the inline-labels prompt (``build_messages``), raw top share;
  - ``skill``: the skill's prompt with prefix reuse (``classify_fixed`` defaults), raw;
  - ``skill, calibrated``: the same scores through the SLM-only calibrator;
  - ``embedding``: the MiniLM stage alone (nearest exemplar per label), calibrated;
  - ``combined``: both, mixed and calibrated;
  - ``agent``: what the agent runs with the shipped settings and a fit: first the skill's
    bands (``sensor_state``: a report whose readings they all cover is answered by rule,
    confidence 1); where the skill uses the embedding stage (``home_intents``), the
    cascade (the embedding stage answers alone when confident enough, the fit's
    ``accept``, else ``combined``); where it does not (``sensor_state``),
    ``skill, calibrated``; ``agent, prefix, no bands`` is the baseline without the bands;
  - ``tuned``: a ``models tune`` model trained on the inline-labels prompt, on that
    prompt, raw. A model tuned on skill-named requests (``--skill-tuned``) gets every
    method above as a model of its own, on the skill prompt without exemplars, with fits
    made only on the dev items its tune held out.
  Calibrators are fitted in-run, per skill, on the dev split minus the prompt's exemplars
  (the code of ``edge-agent skills fit``); the models' scores are kept in
  ``bench/results/skill_observations/`` (``--fresh`` reruns them). Reported: accuracy,
  AUROC of confidence vs correctness, expected calibration error (10 bins), system
  accuracy with the least confident 10/25/40% escalated to a perfect cloud and to the last
  ``--models`` model (the "local cloud", on its skill prompt), classify latency p50/p95
  (``combined`` = SLM + embedding time). Curves go to
  ``bench/results/accuracy_vs_escalation.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.skills.calibration import ece
from bench._common import (
    RESULTS_DIR,
    cpu_busy_s,
    percentile,
    proc_cpu_s,
    table,
    wait_for_quiet,
    write_results,
)
from bench.eval_data import SKILL_OF, EvalItem, load_family, split, split_of
from bench.routing import at_rate, auroc, escalation_curve
from edge_slm.contract import Scoring

if TYPE_CHECKING:
    from agent.models.manifest import TuneRecord

DEFAULT_MODEL = "smollm2-135m-instruct"
MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct")


def _engine(name: str, threads: int) -> Any:
    from agent.engine.engine import Engine
    from agent.models import ModelCache, default_cache_dir

    return Engine(
        ModelCache(default_cache_dir()).require(name), name=name, provider="cpu", threads=threads
    )


def heldout(family: str, limit: int = 0) -> list[EvalItem]:
    return split(load_family(family), "heldout")[: limit or None]


def _embedder(threads: int, name: str = "") -> Any:
    """An installed embedder (the agent's default one unless ``name``)."""
    from agent.models import ModelCache, default_cache_dir
    from agent.models.embedders import DEFAULT_EMBEDDER, installed
    from agent.skills.embedding import Embedder

    name = name or DEFAULT_EMBEDDER
    folder = installed(ModelCache(default_cache_dir()), name)
    if folder is None:
        raise SystemExit(f"install the embedder: edge-agent models build {name} --install-source")
    return Embedder(folder, name=name, threads=threads)


def latency(model: str, threads: int, limit: int, quiet_wait: float) -> dict[str, Any]:
    from agent.engine.prompts import build_messages, user_content
    from agent.skills import SkillRegistry
    from agent.skills.classify import classify_skill

    items = heldout("voice", limit)
    skill = SkillRegistry().get("home_intents")
    assert skill is not None
    prompt = skill.prompt()
    engine = _engine(model, threads)
    embedder = _embedder(threads)

    def run(way: str, item: EvalItem) -> Any:
        if way == "bare":
            return engine.classify(build_messages(item.request), item.request.labels or [])
        if way == "agent":
            text = user_content(item.request)
            return classify_skill(
                engine, skill, text, readings=item.request.readings, embedder=embedder
            )
        return engine.classify_fixed(
            prompt,
            user_content(item.request),
            reuse=way != "skill fresh",
            scoring="prefix" if way == "skill+reuse, prefix" else "full",
        )

    ways = ("skill+reuse", "skill fresh", "bare", "skill+reuse, prefix", "agent")
    for way in ways:  # warm-up; the first reuse call prefills and keeps the prefix
        run(way, items[0])
    wait_for_quiet(quiet_wait)
    busy0, own0, t0 = cpu_busy_s(), proc_cpu_s("self"), time.perf_counter()
    times: dict[str, list[float]] = {w: [] for w in ways}
    correct = dict.fromkeys(ways, 0)
    diff = 0.0
    prompt_tokens: dict[str, list[int]] = {w: [] for w in ways}
    for i, item in enumerate(items):
        out = {}
        for way in ways[i % len(ways) :] + ways[: i % len(ways)]:  # rotate the order
            start = time.perf_counter()
            c = run(way, item)
            times[way].append((time.perf_counter() - start) * 1000)
            out[way] = c
            correct[way] += c.label == item.gold["label"]
            prompt_tokens[way].append(c.prompt_tokens)
        a, b = out["skill+reuse"].scores, out["skill fresh"].scores
        diff = max(diff, *(abs(a[k] - b[k]) for k in a))
    stats = {
        w: {
            "p50_ms": percentile(v, 50),
            "p95_ms": percentile(v, 95),
            "mean_ms": float(np.mean(v)),
            "accuracy": correct[w] / len(items),
            "prompt_tokens": float(np.mean(prompt_tokens[w])),
        }
        for w, v in times.items()
    }
    ratios = {
        f"{q} {way} / {base}": stats[way][f"{q}_ms"] / stats[base][f"{q}_ms"]
        for way in ("skill+reuse", "skill+reuse, prefix", "agent")
        for base in ("skill fresh", "bare")
        for q in ("p50", "p95")
    }
    elapsed = time.perf_counter() - t0
    foreign = max(0.0, (cpu_busy_s() - busy0 - (proc_cpu_s("self") - own0)) / elapsed)
    return {
        "model": model,
        "foreign_cpu_cores": foreign,
        "items": len(items),
        "labels": len(skill.labels),
        "prefix_tokens": engine._prefixes[next(iter(engine._prefixes))].length,
        "stats": stats,
        "ratios": ratios,
        "max_prob_diff_reuse_vs_fresh": diff,
        "times_ms": times,
    }


def _observe(
    model: str,
    threads: int,
    items: Sequence[EvalItem],
    *,
    tuned: bool,
    bare: bool,
    scoring: Scoring = "full",
) -> dict[str, dict[str, Any]]:
    """Per item id: the SLM's skill scores (and bare scores) and their wall times.

    A ``tuned`` model gets the prompt it was tuned on: these items list their labels
    inline, so ``models tune`` trained it on the bare prompt; it runs that, held out only.
    A model tuned on skill-named requests is not ``tuned`` here: it runs the skill prompt
    as the agent gives it, without exemplars (``Engine.skill_exemplars``).
    ``scoring``: the skill prompt's scoring rule (``Engine.classify_fixed``).
    """
    from agent.engine.prompts import build_messages, user_content
    from agent.skills import SkillRegistry

    registry = SkillRegistry()
    engine = _engine(model, threads)
    prompts = {}
    for family, name in SKILL_OF.items():
        skill = registry.get(name)
        assert skill is not None
        prompts[family] = skill.prompt(exemplars=engine.skill_exemplars)  # tuned: without
    for family, prompt in prompts.items():  # prefill the kept prefixes outside the timings
        warm = next(i for i in items if i.family == family)
        if not tuned:
            engine.classify_fixed(prompt, user_content(warm.request), scoring=scoring)
        if bare or tuned:
            engine.classify(build_messages(warm.request), warm.request.labels or [])
    out: dict[str, dict[str, Any]] = {}
    for n, item in enumerate(items, 1):
        row: dict[str, Any] = {}
        if not tuned:
            start = time.perf_counter()
            c = engine.classify_fixed(
                prompts[item.family], user_content(item.request), scoring=scoring
            )
            row |= {"skill": c.scores, "skill_ms": (time.perf_counter() - start) * 1e3}
        if (bare or tuned) and split_of(item.id) == "heldout":
            start = time.perf_counter()
            b = engine.classify(build_messages(item.request), item.request.labels or [])
            row |= {"bare": b.scores, "bare_ms": (time.perf_counter() - start) * 1e3}
        out[item.id] = row
        if n % 25 == 0 or n == len(items):
            print(f"  {model}: {n}/{len(items)}", flush=True)
    return out


OBS_DIR = RESULTS_DIR / "skill_observations"


def _model_identity(model: str) -> Any:
    """What a model is, independent of one build: its catalog entry and the recipe version
    (a rebuild from the same source by the same recipe is the same model, within the
    fidelity gate; the int8/int4 files are not byte-identical between builds). A tuned
    model's name carries the hash of its base, data, settings and recipe."""
    from agent.models import CATALOG, RECIPE_VERSION

    entry = CATALOG.get(model)
    if entry is None:
        return model
    return {"catalog": entry.model_dump(mode="json"), "recipe": RECIPE_VERSION}


def _observe_cached(
    model: str,
    threads: int,
    items: Sequence[EvalItem],
    *,
    tuned: bool,
    bare: bool,
    fresh: bool,
    scoring: Scoring = "full",
) -> dict[str, dict[str, Any]]:
    """``_observe``, kept in ``bench/results/skill_observations/<model>.json`` (with
    ``scoring="prefix"``: ``<model>.prefix.json``) under a key of everything that decides
    the scores (the model, eval items, skill prompts), so a re-analysis (new methods,
    fits) does not rerun the models, and a model need not be installed to be reported."""
    from agent.skills import SkillRegistry

    registry = SkillRegistry()
    parts: dict[str, Any] = {
        "model": _model_identity(model),
        "items": [i.request.model_dump(mode="json") for i in items],
        "skills": [registry.get(n).fingerprint for n in SKILL_OF.values()],  # type: ignore[union-attr]
        "tuned": tuned,
        "bare": bare,
    }
    if scoring != "full":
        parts["scoring"] = scoring
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    suffix = "" if scoring == "full" else f".{scoring}"
    path = OBS_DIR / f"{model}{suffix}.json"
    if not fresh and path.is_file():
        kept = json.loads(path.read_text(encoding="utf-8"))
        if kept.get("key") == key:
            print(f"  {model}: observations from {path.name}", flush=True)
            return dict(kept["items"])
    out = _observe(model, threads, items, tuned=tuned, bare=bare, scoring=scoring)
    OBS_DIR.mkdir(parents=True, exist_ok=True)
    kept = {"key": key, "items": out}
    tune = _installed_tune(model)
    if tune is not None:  # which dev items it never trained on, for a later re-analysis
        kept["tune_heldout_fraction"] = tune.heldout_fraction
    path.write_text(json.dumps(kept), encoding="utf-8")
    return out


def _similarities(items: Sequence[EvalItem], threads: int) -> dict[str, dict[str, Any]]:
    from agent.engine.prompts import user_content
    from agent.skills import SkillRegistry

    embedder = _embedder(threads)
    registry = SkillRegistry()
    for name in SKILL_OF.values():  # encode the label vectors outside the timings
        skill = registry.get(name)
        assert skill is not None
        embedder.similarities(skill, "warm-up")
    out = {}
    for item in items:
        skill = registry.get(SKILL_OF[item.family])
        assert skill is not None
        start = time.perf_counter()
        sims = embedder.similarities(skill, user_content(item.request))
        out[item.id] = {"sims": sims, "ms": (time.perf_counter() - start) * 1e3}
    return out


def _exemplar_ids(items: Sequence[EvalItem]) -> set[str]:
    from agent.engine.prompts import user_content
    from agent.skills import SkillRegistry

    registry = SkillRegistry()
    shown = set()
    for name in SKILL_OF.values():
        skill = registry.get(name)
        assert skill is not None
        shown |= {e for label in skill.spec.labels.values() for e in label.exemplars}
    return {i.id for i in items if user_content(i.request) in shown}


def _predictions(
    obs: dict[str, dict[str, Any]],
    sims: dict[str, dict[str, Any]],
    items: Sequence[EvalItem],
    exemplars: set[str],
    *,
    tuned: bool,
    prefix: dict[str, dict[str, Any]] | None = None,
    fit_only: set[str] | None = None,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Per method, one row per held-out item (label, confidence, correct, ms); and the fits.

    Each skill is fitted with the product's code (``fit_observed``, as ``edge-agent
    skills fit`` does) on the dev split minus the items its prompt shows as exemplars.
    With ``prefix`` (the same model's observations with distinguishing-prefix scoring),
    two more methods: ``skill, prefix`` (raw) and ``agent, prefix`` (the agent's path
    with a fit made on prefix scores, i.e. a fit with ``scoring = "prefix"``).
    """
    from agent.models.embedders import DEFAULT_EMBEDDER
    from agent.skills import SkillRegistry
    from agent.skills.calibration import Evidence, decide
    from agent.skills.fitting import Observed, fit_observed

    registry = SkillRegistry()
    trained_on: set[str] = set()  # families fitted on items a tune trained on

    def fitted(
        source: dict[str, dict[str, Any]], scoring: Scoring = "full"
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """With the embedder for every skill (the ablation rows), and as each skill says
        (the agent's row: `sensor_state` turns the embedding stage off)."""

        def dev(family: str) -> list[Observed]:
            chosen, contaminated = _fit_items(items, family, exemplars, fit_only)
            if contaminated:
                trained_on.add(family)
            return [
                Observed(Evidence(source[i.id]["skill"], sims[i.id]["sims"]), i.gold["label"])
                for i in chosen
            ]

        fits = {f: fit_observed(dev(f), DEFAULT_EMBEDDER, scoring)[0] for f in SKILL_OF}
        shipped = {
            family: fits[family]
            if registry.get(name).spec.embedding  # type: ignore[union-attr]
            else fit_observed(dev(family), None, scoring)[0]
            for family, name in SKILL_OF.items()
        }
        return fits, shipped

    fits: dict[str, Any] = {}
    shipped: dict[str, Any] = {}
    prefix_shipped: dict[str, Any] = {}
    if not tuned:  # a tuned model was trained on dev items: no fit on them
        fits, shipped = fitted(obs)
        if prefix is not None:
            prefix_shipped = fitted(prefix, "prefix")[1]
    rows: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        if split_of(item.id) != "heldout":
            continue
        o, s = obs[item.id], sims[item.id]
        fit = fits.get(item.family)
        ways: dict[str, tuple[Any, float]] = {}
        if tuned:
            ways["tuned"] = (decide(Evidence(o["bare"]), None), o["bare_ms"])
        else:
            if "bare" in o:
                ways["bare"] = (decide(Evidence(o["bare"]), None), o["bare_ms"])
            ways["skill"] = (decide(Evidence(o["skill"]), None), o["skill_ms"])
            ways["skill, calibrated"] = (decide(Evidence(o["skill"]), fit.slm_only), o["skill_ms"])
            ways["embedding"] = (decide(Evidence(None, s["sims"]), fit.embedding_only), s["ms"])
            ways["combined"] = (  # no combined calibrator: the SLM alone, as the agent does
                decide(Evidence(o["skill"], s["sims"]), fit.combined)
                if fit.combined
                else decide(Evidence(o["skill"]), fit.slm_only),
                o["skill_ms"] + s["ms"],
            )
            agent_sources = {"agent": (o, shipped)}
            if prefix is not None:
                agent_sources["agent, prefix"] = (prefix[item.id], prefix_shipped)
            ways |= _agent_ways(item, registry.get(SKILL_OF[item.family]), s, agent_sources)
            if prefix is not None:
                p = prefix[item.id]
                ways["skill, prefix"] = (decide(Evidence(p["skill"]), None), p["skill_ms"])
        for method, (d, ms) in ways.items():
            rows.setdefault(method, []).append(
                {
                    "id": item.id,
                    "family": item.family,
                    "confidence": d.confidence,
                    "correct": d.label == item.gold["label"],
                    "ms": ms,
                }
            )
    out = {f: fit.model_dump() for f, fit in shipped.items()}
    out |= {f"{f}, prefix": fit.model_dump() for f, fit in prefix_shipped.items()}
    out |= {"fitted_on_trained_items": sorted(trained_on)} if trained_on else {}
    return rows, out


def _fit_items(
    items: Sequence[EvalItem], family: str, exemplars: set[str], fit_only: set[str] | None
) -> tuple[list[EvalItem], bool]:
    """The dev items a skill is fitted on (never its exemplars), and whether they include
    items a tune trained on: with ``fit_only``, only those, unless fewer than a fit needs."""
    from agent.skills.fitting import FOLDS

    chosen = [
        i for i in items if i.family == family and split_of(i.id) == "dev" and i.id not in exemplars
    ]
    if fit_only is None:
        return chosen, False
    held = [i for i in chosen if i.id in fit_only]
    if len(held) >= 2 * FOLDS:  # what `edge-agent skills fit` needs
        return held, False
    return chosen, True  # too few the tune held out: all of dev, and the output says so


def _agent_ways(
    item: EvalItem,
    skill: Any,
    sims: dict[str, Any],
    sources: dict[str, tuple[dict[str, Any], dict[str, Any]]],
) -> dict[str, tuple[Any, float]]:
    """The agent's path per method (observations, shipped fits), as ``classify_skill``
    runs it: the skill's bands first, then the cascade; for each ``..., prefix`` method
    also ``..., no bands``, the same path without the bands (the baseline)."""
    from agent.skills.bands import judge
    from agent.skills.calibration import Decision
    from agent.skills.classify import decide_skill

    assert skill is not None
    start = time.perf_counter()
    verdict = judge(skill.spec, item.request.readings)
    ruled = None
    if verdict is not None:  # answered before any model runs
        hot = {k: float(k == verdict.label) for k in skill.labels}
        ruled = (Decision(verdict.label, 1.0, hot), (time.perf_counter() - start) * 1000)
    ways: dict[str, tuple[Any, float]] = {}
    for method, (obs, fits) in sources.items():

        def slm(o: dict[str, Any] = obs) -> Any:
            return o["skill"]

        agent = fits[item.family]
        sim = sims["sims"] if agent.combined else None  # as `uses_embedding` decides
        d, ran = decide_skill(agent, sim, slm)
        ms = (sims["ms"] if sim else 0.0) + (obs["skill_ms"] if ran else 0.0)
        ways[method] = ruled or (d, ms)
        if method.endswith("prefix"):
            ways[f"{method}, no bands"] = (d, ms)
    return ways


RATES = (10, 25, 40)


def _metrics(rows: Sequence[dict[str, Any]], cloud: dict[str, bool] | None) -> dict[str, Any]:
    conf = np.array([r["confidence"] for r in rows])
    ok = np.array([r["correct"] for r in rows])
    ms = [r["ms"] for r in rows]
    perfect = escalation_curve(conf, ok, np.ones_like(ok))
    out: dict[str, Any] = {
        "n": len(rows),
        "accuracy": float(ok.mean()),
        "auroc": auroc(conf, ok),
        "ece": ece(conf, ok),
        **{f"acc_at_{r}_perfect": at_rate(perfect, r) for r in RATES},
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "curve_perfect": perfect.tolist(),
    }
    if cloud is not None:
        big = np.array([cloud[r["id"]] for r in rows])
        local = escalation_curve(conf, ok, big)
        out |= {f"acc_at_{r}_local_cloud": at_rate(local, r) for r in RATES}
        out["all_cloud_local"] = float(big.mean())
        out["curve_local_cloud"] = local.tolist()
    return out


def accuracy(
    models: Sequence[str],
    threads: int,
    limit: int,
    tuned: Sequence[str],
    *,
    bare: bool,
    fresh: bool,
    prefix_models: Sequence[str] = (),
    skill_tuned: Sequence[str] = (),
) -> dict[str, Any]:
    """Every method of every model on the held-out split; the last model is the local cloud.

    ``prefix_models`` are also observed with distinguishing-prefix scoring. ``skill_tuned``
    models (tuned on requests naming the skills) get every method of a base model, on the
    skill prompt the engine gives them (without exemplars), with fits made only on the
    dev items their tune held out."""
    items = [i for family in SKILL_OF for i in load_family(family)]
    if limit:
        items = [i for family in SKILL_OF for i in [x for x in items if x.family == family][:limit]]
    exemplars = _exemplar_ids(items)
    sims = _similarities(items, threads)
    preds: dict[str, dict[str, list[dict[str, Any]]]] = {}
    fits: dict[str, Any] = {}
    for model in [*models, *skill_tuned, *tuned]:
        obs = _observe_cached(
            model,
            threads,
            items,
            tuned=model in tuned,
            bare=bare and model not in tuned and model not in skill_tuned,
            fresh=fresh,
        )
        prefix = None
        if (model in prefix_models or model in skill_tuned) and model not in tuned:
            prefix = _observe_cached(
                model, threads, items, tuned=False, bare=False, fresh=fresh, scoring="prefix"
            )
        preds[model], fits[model] = _predictions(
            obs,
            sims,
            items,
            exemplars,
            tuned=model in tuned,
            prefix=prefix,
            fit_only=_tune_held_out(model, items) if model in skill_tuned else None,
        )
    cloud_model = models[-1]
    # The local cloud is the biggest model on the skill prompt; calibration does not
    # change its labels, and the embedding stage would make it the edge's twin.
    cloud = {r["id"]: bool(r["correct"]) for r in preds[cloud_model]["skill"]}
    result: dict[str, Any] = {"cloud_model": cloud_model, "fits": fits, "models": {}}
    for name in tuned:  # a tuned model's rows go with its base model's, as method "tuned"
        base = _tuned_base(name)
        if base in preds:
            preds[base]["tuned"] = preds.pop(name)["tuned"]
    for model, methods in preds.items():
        result["models"][model] = {
            method: {
                "all": _metrics(rows, None if model == cloud_model else cloud),
                **{
                    f: _metrics(
                        [x for x in rows if x["family"] == f],
                        None if model == cloud_model else cloud,
                    )
                    for f in SKILL_OF
                },
            }
            for method, rows in methods.items()
        }
    return result


def _installed_tune(name: str) -> TuneRecord | None:
    from agent.models import ModelCache, default_cache_dir

    manifest = ModelCache(default_cache_dir()).manifest(name)
    return manifest.tune if manifest is not None else None


def _tune_held_out(name: str, items: Sequence[EvalItem]) -> set[str]:
    """The dev items a tuned model's training never saw (its `--heldout-fraction`): from
    its manifest, else from its kept observations, so it need not be installed."""
    from agent.modelbuild.tune_data import held_out

    tune = _installed_tune(name)
    if tune is not None:
        fraction = tune.heldout_fraction
    else:
        kept = OBS_DIR / f"{name}.json"
        record = json.loads(kept.read_text(encoding="utf-8")) if kept.is_file() else {}
        if "tune_heldout_fraction" not in record:
            raise SystemExit(
                f"{name}: neither an installed `models tune` model nor kept observations"
            )
        fraction = float(record["tune_heldout_fraction"])
    return {i.id for i in items if split_of(i.id) == "dev" and held_out(i.id, fraction)}


def _tuned_base(name: str) -> str:
    tune = _installed_tune(name)
    if tune is not None:
        return tune.base
    return re.sub(r"-tuned-[0-9a-f]{8}$", "", name)  # `models tune` names it so


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(result["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for method, parts in result["models"][model].items():
            curve = np.array(parts["all"]["curve_perfect"])
            x = np.linspace(0, 100, len(curve))
            ax.plot(x, curve, label=method)
        ax.axvline(25, color="grey", lw=0.8, ls=":")
        ax.set(
            title=model,
            xlabel="escalated to a perfect cloud (%)",
            ylabel="system accuracy",
            ylim=(0, 1.02),
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(
        "Held-out voice + sensor items: accuracy vs escalation rate (least confident first)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report_latency(r: dict[str, Any]) -> str:
    cols = ["p50_ms", "p95_ms", "mean_ms", "accuracy", "prompt_tokens"]
    return "\n".join(
        [
            f"{r['model']}: {r['items']} held-out voice commands, {r['labels']}-label "
            f"home_intents, fixed prefix {r['prefix_tokens']} tokens, "
            f"foreign CPU {r['foreign_cpu_cores']:.2f} cores",
            table(["path", *cols], [[w, *(s[c] for c in cols)] for w, s in r["stats"].items()]),
            table(["ratio", "value"], [[k, v] for k, v in r["ratios"].items()]),
            f"largest |p(reuse) - p(fresh)| over all labels and items: "
            f"{r['max_prob_diff_reuse_vs_fresh']:.4f}",
        ]
    )


def report_accuracy(r: dict[str, Any]) -> str:
    quality = ["n", "accuracy", "auroc", "ece", "p50_ms", "p95_ms"]
    system = [f"acc_at_{x}_{cloud}" for cloud in ("perfect", "local_cloud") for x in RATES]

    def rows(cols: list[str], parts: Sequence[str]) -> list[list[Any]]:
        return [
            [model, method, part, *(methods[method][part].get(c, "") for c in cols)]
            for model, methods in r["models"].items()
            for method in methods
            for part in parts
        ]

    return "\n\n".join(
        [
            table(["model", "method", "items", *quality], rows(quality, ["all", *SKILL_OF])),
            f"system accuracy, least confident escalated; local cloud: {r['cloud_model']} "
            "(skill prompt)",
            table(["model", "method", "items", *system], rows(system, ["all"])),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.skills",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("part", choices=["latency", "accuracy", "all"], nargs="?", default="all")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="latency: catalog name")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="accuracy: models")
    parser.add_argument(
        "--tuned", nargs="*", default=[], help="accuracy: tuned models (`edge-agent models tune`)"
    )
    parser.add_argument(
        "--skill-tuned",
        nargs="*",
        default=[],
        help="accuracy: models tuned on requests naming the skills (`bench.eval_data dev "
        "--skills`), measured like base models on the skill prompt, fitted on the dev "
        "items their tune held out",
    )
    parser.add_argument("--no-bare", action="store_true", help="accuracy: skip the bare prompt")
    parser.add_argument(
        "--fresh", action="store_true", help="accuracy: rerun the models, ignore kept observations"
    )
    parser.add_argument(
        "--prefix-models",
        nargs="*",
        default=[DEFAULT_MODEL],
        help="accuracy: models also scored with distinguishing-prefix scoring (the methods "
        "`skill, prefix` and `agent, prefix`)",
    )
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads")
    parser.add_argument("--limit", type=int, default=0, help="first N held-out items per family")
    parser.add_argument("--quiet-wait", type=float, default=30, help="seconds to wait for idle")
    args = parser.parse_args(argv)
    data: dict[str, Any] = {"threads": args.threads, "limit": args.limit}
    if args.part in ("latency", "all"):
        data["latency"] = latency(args.model, args.threads, args.limit, args.quiet_wait)
        print(report_latency(data["latency"]) + "\n")
    if args.part in ("accuracy", "all"):
        data["accuracy"] = accuracy(
            args.models,
            args.threads,
            args.limit,
            args.tuned,
            bare=not args.no_bare,
            fresh=args.fresh,
            prefix_models=args.prefix_models,
            skill_tuned=args.skill_tuned,
        )
        print(report_accuracy(data["accuracy"]) + "\n")
        print(f"wrote {plot(data['accuracy'], RESULTS_DIR / 'accuracy_vs_escalation.png')}")
    name = "skills" if args.part == "all" else f"skills_{args.part}"
    print(f"wrote {write_results(name, data)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
