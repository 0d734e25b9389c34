"""`edge-agent models tune` for real: SmolLM2 fine-tuned on 24 dev-split classify items
and 6 act items (tool calls), 1 epoch.

The real conversion, training, onnxruntime-genai builder and fidelity check run in a
temporary cache (the built base model is linked into it), so the user's cache gets
nothing. Takes about 2-4 minutes on 2 cores; needs the `build` extra. LoRA is tuned
only with ``scripts/test.sh --full``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.engine.engine import Engine
from agent.engine.prompts import build_messages
from agent.modelbuild.tune_data import load_examples
from agent.modelbuild.tune_eval import SPLITS
from agent.models import CATALOG, DEFAULT_MODEL, RECIPE_VERSION, ModelCache
from agent.skills import SkillRegistry
from agent.skills.classify import classify_skill
from bench.eval_data import EVAL_DIR, split_of
from edge_slm.contract import Request

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("torch") is None, reason="needs the build extra (torch)"
    ),
]

SKIPPED = "task answer (tune trains classify and act)"


def lines(name: str) -> list[str]:
    return (EVAL_DIR / name).read_text(encoding="utf-8").splitlines()


def rid(line: str) -> str:
    return str(json.loads(line)["request"]["id"])


def cli(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "models", "--cache-dir", str(cache), *args],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )


def base_cache(root: Path, model_dir: Path) -> Path:
    """A model cache holding only the built base model, linked, not copied."""
    cache = root / "cache"
    cache.mkdir()
    (cache / DEFAULT_MODEL).symlink_to(model_dir)
    return cache


def dev(rows: list[str], n: int = 12) -> list[str]:
    """The first ``n`` eval-set lines of the dev split."""
    return [x for x in rows if split_of(rid(x)) == "dev"][:n]


@pytest.fixture(scope="module")
def tuned(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("tune")
    cache = base_cache(root, model_dir)

    voice, sensor = lines("voice_intents.jsonl"), lines("sensor_events.jsonl")
    # A small eval set: its voice held-out items are the official figures.
    eval_dir = root / "eval"
    eval_dir.mkdir()
    (eval_dir / "voice_intents.jsonl").write_text("\n".join(voice[:30]) + "\n")
    official = [rid(x) for x in voice[:30] if split_of(rid(x)) == "heldout"]
    acts = lines("home_actions.jsonl")
    (eval_dir / "home_actions.jsonl").write_text("\n".join(acts[:12]) + "\n")
    official_act = [rid(x) for x in acts[:12] if split_of(rid(x)) == "heldout"]

    dev_voice, dev_sensor = dev(voice), dev(sensor)
    protected = [x for x in voice[:30] if split_of(rid(x)) == "heldout"][:2]
    question = lines("questions.jsonl")[0]
    data = root / "data.jsonl"
    dev_act = dev(acts, 6)
    data.write_text("\n".join([*dev_voice, *dev_sensor, *protected, question, *dev_act]) + "\n")

    args = ["smollm2-135m-instruct", "--data", str(data), "--epochs", "1"]
    args += ["--heldout-fraction", "0.25", "--eval-set", str(eval_dir)]
    run = cli(cache, "tune", *args)
    assert run.returncode == 0, run.stderr[-4000:]
    return {
        "cache": ModelCache(cache),
        "data": data,
        "run": run,
        "args": args,
        "official": official,
        "official_act": official_act,
        "protected": [rid(x) for x in protected],
    }


def installed_name(run: subprocess.CompletedProcess[str]) -> str:
    found = re.search(r"^(smollm2-135m-instruct-tuned-[0-9a-f]{8}): ", run.stdout, re.M)
    assert found, run.stdout
    return found.group(1)


def test_the_before_after_table_is_printed(tuned):
    run = tuned["run"]
    name = installed_name(run)
    table = [line.split() for line in run.stdout.splitlines()]
    assert table[0] == ["HELD-OUT", "SPLIT", "N", "MODEL", "ACCURACY", "AUROC", "ECE"]
    models = {(row[0], row[-4]) for row in table[1:5]}  # (split's first word, model)
    assert models == {
        ("data", DEFAULT_MODEL),
        ("data", name),
        ("eval", DEFAULT_MODEL),
        ("eval", name),
    }
    for row in table[1:5]:
        assert 0.0 <= float(row[-3]) <= 1.0  # accuracy
    act_rows = [row for row in table if row[:4] == ["eval", "set", "held-out,", "act"]]
    assert {row[-4] for row in act_rows} == {DEFAULT_MODEL, name}
    assert f"EDGE_AGENT_MODEL__NAME={name}" in run.stdout
    for stage in ("before:", "convert:", "train:", "onnx:", "fidelity:", "after:", "install:"):
        assert stage in run.stderr


def test_the_manifest_records_base_data_settings_and_figures(tuned):
    cache: ModelCache = tuned["cache"]
    name = installed_name(tuned["run"])
    m = cache.manifest(name)
    assert m is not None
    assert m.tune is not None
    t = m.tune
    recipe = CATALOG[DEFAULT_MODEL].recipe
    assert recipe is not None
    assert m.source.kind == "tuned"
    assert m.source.sha256 == CATALOG[DEFAULT_MODEL].source.sha256  # type: ignore[union-attr]
    assert m.recipe_version == RECIPE_VERSION
    assert m.precision == recipe.precision  # the base's recipe, not a new one
    assert m.fidelity is not None
    assert m.fidelity.top1_agreement >= recipe.min_agreement
    assert t.base == DEFAULT_MODEL
    assert name.endswith(t.key[:8])
    assert t.data_sha256 == hashlib.sha256(tuned["data"].read_bytes()).hexdigest()
    assert t.data_file == "data.jsonl"
    assert t.examples == 32  # 26 classify, 6 act
    assert t.skipped == {SKIPPED: 1}
    assert t.train_examples + t.heldout_examples + len(tuned["protected"]) == 32
    assert t.heldout_examples >= 1
    assert (t.epochs, t.seed, t.heldout_fraction, t.batch_size) == (1, 0, 0.25, 8)
    assert t.train_seconds > 0
    assert t.final_loss > 0
    assert t.base_agreement is not None
    assert 0 < t.base_agreement <= 1
    # act is measured apart: exact calls of the eval set's held-out commands
    assert set(t.before) == set(t.after)
    assert {"data", "official", "official-act"} <= set(t.before) <= set(SPLITS)
    assert t.before["official"].examples == len(tuned["official"])
    assert t.before["official-act"].examples == len(tuned["official_act"])
    assert t.official_heldout_examples == len(tuned["official"]) + len(tuned["official_act"])
    act_heldout = t.after["data-act"].examples if "data-act" in t.after else 0
    assert t.after["data"].examples + act_heldout == t.heldout_examples
    assert cache.verify(name).ok


def test_held_out_items_were_never_trained(tuned):
    examples = load_examples(tuned["data"]).examples
    keys = {e.key for e in examples}
    assert set(tuned["protected"]) <= keys
    run = tuned["run"]
    assert "2 are held-out items of the eval set: never trained" in run.stderr
    t = tuned["cache"].manifest(installed_name(run)).tune
    assert t.train_examples == 32 - t.heldout_examples - 2


def test_the_tuned_model_loads_and_classifies(tuned):
    cache: ModelCache = tuned["cache"]
    name = installed_name(tuned["run"])
    engine = Engine(cache.require(name), name=name, provider="cpu", threads=2)
    request = Request.model_validate(json.loads(lines("voice_intents.jsonl")[0])["request"])
    labels = request.labels or []
    result = engine.classify(build_messages(request), labels)
    assert result.label in labels
    assert 0 < result.confidence <= 1
    assert abs(sum(result.scores.values()) - 1) < 1e-6

    skill = SkillRegistry().get("home_intents")
    assert skill is not None
    # The manifest's tune record tells the engine: skills without their exemplars, the
    # prompt it was trained on (the exemplars are in its weights).
    assert engine.skill_exemplars is False
    agent_way = classify_skill(engine, skill, "it's too dark in here")
    assert agent_way.label in skill.labels
    with_exemplars = engine.classify_fixed(skill.prompt(), "it's too dark in here")
    assert 0 < agent_way.prompt_tokens < with_exemplars.prompt_tokens
    bare = engine.classify_fixed(skill.prompt(exemplars=False), "it's too dark in here")
    assert agent_way.prompt_tokens == bare.prompt_tokens


def test_a_base_model_keeps_the_exemplars(model_dir):
    assert Engine(model_dir, name="base", provider="cpu", threads=2).skill_exemplars is True


def test_it_is_listed_and_a_rerun_reuses_it(tuned):
    cache_root = tuned["cache"].root
    name = installed_name(tuned["run"])
    listing = cli(cache_root, "list")
    assert listing.returncode == 0
    row = next(line.split() for line in listing.stdout.splitlines() if line.startswith(name))
    assert row[1:4] == ["tuned", "int8", "installed"]

    again = cli(cache_root, "tune", *tuned["args"])
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already installed with this data and these settings" in again.stderr
    assert "convert:" not in again.stderr
    assert installed_name(again) == name


@pytest.fixture(scope="module")
def lora_tuned(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """LoRA on 24 dev items, 2 epochs at a high rate: enough to move the merged weights."""
    root = tmp_path_factory.mktemp("lora")
    cache = base_cache(root, model_dir)
    train = dev(lines("voice_intents.jsonl")) + dev(lines("sensor_events.jsonl"))
    data = root / "data.jsonl"
    data.write_text("\n".join(train) + "\n")
    args = ["smollm2-135m-instruct", "--data", str(data), "--method", "lora", "--lora-rank", "8"]
    args += ["--epochs", "2", "--lr", "1e-3", "--heldout-fraction", "0", "--no-eval-set"]
    run = cli(cache, "tune", *args)
    assert run.returncode == 0, run.stderr[-4000:]
    return {"cache": ModelCache(cache), "run": run, "train": train}


def gold_probability(engine: Engine, rows: list[str]) -> float:
    """Mean probability the model gives the gold label of each eval-set line."""
    total = 0.0
    for line in rows:
        row = json.loads(line)
        request = Request.model_validate(row["request"])
        result = engine.classify(build_messages(request), request.labels or [])
        total += result.scores[row["gold"]["label"]]
    return total / len(rows)


# The long form of tuning: the default run tunes fully (above), which covers every stage
# LoRA shares; --full adds LoRA's own merge, 1.5-2 minutes more on 2 cores.
@pytest.mark.slow
def test_lora_merges_trained_adapters_into_the_built_model(lora_tuned, model_dir):
    run = lora_tuned["run"]
    assert "LoRA rank 8" in run.stderr
    name = installed_name(run)
    cache: ModelCache = lora_tuned["cache"]
    m = cache.manifest(name)
    assert m is not None
    assert m.tune is not None
    t = m.tune
    assert (t.method, t.lora_rank, t.lora_alpha, t.lr, t.epochs) == ("lora", 8, 16, 1e-3, 2)
    assert t.trained_weights is not None
    assert 0 < t.trained_weights < 135_000_000 // 20  # adapters, not the model
    assert m.fidelity is not None
    assert m.fidelity.top1_agreement >= CATALOG[DEFAULT_MODEL].recipe.min_agreement  # type: ignore[union-attr]
    assert cache.verify(name).ok

    # The adapters reached the ONNX model: it fits its training data better than the base.
    base = Engine(model_dir, name="base", provider="cpu", threads=2)
    tuned = Engine(cache.require(name), name=name, provider="cpu", threads=2)
    rows = lora_tuned["train"]
    assert gold_probability(tuned, rows) > gold_probability(base, rows) + 0.1
