"""`edge-agent models tune`: data parsing, splits, targets, packing, figures. No model."""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest

from agent.actions import TOOL_SETS, act_prompt
from agent.engine.prompts import build_messages
from agent.modelbuild.params import TuneParams
from agent.modelbuild.tune import measured_splits, tune_key
from agent.modelbuild.tune_data import (
    EVAL_DIR,
    TuneDataError,
    eval_split_of,
    held_out,
    load_eval_set,
    load_examples,
    plan,
)
from agent.modelbuild.tune_eval import figures, format_table
from agent.models.cache import ModelCache
from agent.models.catalog import RECIPE_VERSION
from agent.models.cli import add_models_commands
from agent.models.manifest import EvalFigures, Manifest, SourceRecord, TuneRecord
from agent.skills import SkillRegistry
from bench.eval_data import load_all, split_of

VOICE_LABELS = ["lights_on", "lights_off", "play_music"]
SENSOR = {"name": "kitchen/co2", "value": 2600, "unit": "ppm"}


def write(tmp_path: Path, *rows: object, name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows),
        encoding="utf-8",
    )
    return path


def request(rid: str, text: str = "switch the light on", **extra: object) -> dict[str, object]:
    return {"v": 1, "id": rid, "task": "classify", "text": text, "labels": VOICE_LABELS} | extra


def act_request(rid: str, text: str = "set the hall to 20", **extra: object) -> dict[str, object]:
    return {"v": 1, "id": rid, "task": "act", "kind": "voice", "text": text} | extra


def relay(rid: str, *, label: str | None = "lights_on", **extra: object) -> dict[str, object]:
    return {
        "device_id": "dev-1",
        "request_id": rid,
        "received_at": 1.0,
        "kind": "voice",
        "task": "classify",
        "text": "lights please",
        "labels": VOICE_LABELS,
        "sensor": None,
        "reason": "low_confidence",
        "outcome": "ok",
        "cloud": {"answer": label, "label": label, "confidence": 0.9, "model": "big"},
        "edge": {"answer": "play_music", "label": "play_music", "confidence": 0.4},
        "agreement": False,
    } | extra


# -- the three forms ----------------------------------------------------------


def test_eval_form_uses_the_gold_label_and_the_bare_prompt(tmp_path):
    req = request("e1")
    loaded = load_examples(write(tmp_path, {"request": req, "gold": {"label": "lights_on"}}))
    (ex,) = loaded.examples
    assert (ex.form, ex.key, ex.label, ex.line) == ("eval", "e1", "lights_on", 1)
    assert ex.prompt_name == "inline"
    # inline labels: the product's prompt, and the label's own name is what is scored
    assert ex.chat() == build_messages(ex.request)
    assert ex.target == "lights_on"
    assert len(loaded.sha256) == 64


def test_pair_form_accepts_a_label_name_or_its_words(tmp_path):
    loaded = load_examples(
        write(
            tmp_path,
            {"request": request("p1"), "answer": "lights_off"},
            {"request": request("p2"), "answer": " Lights_On. "},
            {
                "request": {
                    "v": 1,
                    "id": "p3",
                    "task": "classify",
                    "text": "louder",
                    "skill": "home_intents",
                },
                "answer": "turn the volume up",
            },
        )
    )
    assert [e.label for e in loaded.examples] == ["lights_off", "lights_on", "volume_up"]


def test_skill_examples_are_prompted_without_exemplars_and_target_the_verbalizer(tmp_path):
    skill = SkillRegistry().get("home_intents")
    assert skill is not None
    loaded = load_examples(
        write(
            tmp_path,
            {
                "request": {
                    "v": 1,
                    "id": "s1",
                    "task": "classify",
                    "text": "too dark in here",
                    "skill": "home_intents",
                },
                "answer": "lights_on",
            },
        )
    )
    (ex,) = loaded.examples
    assert ex.prompt_name == "home_intents"
    assert list(ex.fixed) == skill.messages(exemplars=False)
    assert [t["role"] for t in ex.chat()] == ["system", "user"]  # no exemplar turns
    assert ex.target == skill.verbalizers["lights_on"] == "turn the lights on"
    assert ex.calibrate == skill.spec.calibrate


def test_relay_export_uses_the_cloud_teacher(tmp_path):
    loaded = load_examples(
        write(
            tmp_path,
            relay("r1"),
            relay("r2", cloud={"answer": "Play music.", "label": None}),  # matched by words
            relay("r3", label="lights_off", sensor=[SENSOR]),
        )
    )
    assert [e.label for e in loaded.examples] == ["lights_on", "play_music", "lights_off"]
    assert [e.key for e in loaded.examples] == ["dev-1/r1", "dev-1/r2", "dev-1/r3"]
    assert loaded.examples[0].form == "relay"
    assert "kitchen/co2" in loaded.examples[2].user  # readings reach the user turn


def log_row(**changes: object) -> Any:
    """A relay log row as the store reads it: a classify escalation the cloud answered."""
    from dataclasses import replace

    from cloud_relay.store.base import LogRow
    from edge_slm.contract import Outcome

    row = LogRow(
        device_id="dev-9",
        request_id="req-1",
        relay_id="relay-a",
        received_at=1.0,
        task="classify",
        kind="sensor",
        reason="low_confidence",
        edge_answer="normal",
        edge_label="normal",
        edge_confidence=0.4,
        redactions={},
        llm_start=1.1,
        answered_at=1.5,
        outcome=Outcome.OK,
        llm_model="big",
        tokens_in=10,
        tokens_out=1,
        cost_usd=0.0,
        attempts=1,
        cloud_answer="critical",
        cloud_label="critical",
        cloud_confidence=0.9,
        agreement=False,
        error=None,
        latency_ms=400.0,
        reply=None,
        text="Garage report",
        labels=["normal", "warning", "critical"],
        sensor=[SENSOR],
    )
    return replace(row, **changes)


def test_a_real_relay_export_line_parses(tmp_path):
    from cloud_relay.render import export_record

    (ex,) = load_examples(write(tmp_path, json.dumps(export_record(log_row())))).examples
    assert (ex.key, ex.label, ex.form) == ("dev-9/req-1", "critical", "relay")
    assert ex.request.readings[0].name == "kitchen/co2"


def test_lines_that_teach_nothing_are_skipped_and_counted(tmp_path):
    loaded = load_examples(
        write(
            tmp_path,
            relay("r1", outcome="llm_error", cloud={"answer": None, "label": None}),
            relay("r2", label="garage_door"),  # the teacher answered outside the labels
            relay("r3", task="answer", labels=None),
            {
                "request": {"v": 1, "id": "q1", "text": "capital of France?"},
                "gold": {"answers": ["paris"]},
            },
            "",
            relay("r4"),
        )
    )
    assert [e.key for e in loaded.examples] == ["dev-1/r4"]
    assert loaded.skipped == {
        "relay outcome llm_error": 1,
        "cloud answer is none of the labels": 1,
        "task answer (tune trains classify and act)": 2,
    }


def test_an_act_export_line_teaches_the_clouds_call_and_extract_is_skipped(tmp_path):
    """An act line of the export (store migration 6 keeps its tools and the cloud's call)
    is an example whose target is the call as compact JSON, prompted as the agent
    prompts act; an extract line is skipped by task."""
    from cloud_relay.render import export_record

    schema = {"type": "object", "properties": {"celsius": {"type": "number"}}}
    tool = {"type": "function", "function": {"name": "set_temperature", "parameters": schema}}
    call = {"name": "set_temperature", "arguments": {"celsius": 21}}
    act = log_row(request_id="a1", task="act", labels=None, tools=[tool], cloud_tool_call=call)
    extract = log_row(request_id="x1", task="extract", labels=None, json_schema=schema)
    lines = [json.dumps(export_record(r)) for r in (act, extract)]
    loaded = load_examples(write(tmp_path, *lines, relay("r4")))
    assert [e.key for e in loaded.examples] == ["dev-9/a1", "dev-1/r4"]
    assert loaded.skipped == {"task extract (tune trains classify and act)": 1}
    taught = loaded.examples[0]
    assert taught.call == call
    assert taught.target == '{"name":"set_temperature","arguments":{"celsius":21}}'
    assert taught.prompt_name == "act:inline"  # tools of no registered set
    assert "set_temperature(celsius)" in taught.fixed[0]["content"]
    assert taught.chat()[-1] == {"role": "user", "content": taught.user}


def test_act_lines_name_their_tool_set_and_may_teach_no_tool(tmp_path):
    home = TOOL_SETS.get("home")
    assert home is not None
    tools = [t.model_dump(mode="json", exclude_none=True) for t in home.tools]
    named = {"request": act_request("e1", tool_set="home"), "gold": {"call": None}}
    pair = {
        "request": act_request("p1", tools=tools),
        "answer": {"name": "set_temperature", "arguments": {"room": "hall", "celsius": 20}},
    }
    loaded = load_examples(write(tmp_path, named, pair))
    none, call = loaded.examples
    assert none.target == '{"name":"none"}'
    assert none.label == "none"
    # the same prompt as the agent's: the set's instructions, tools and exemplars
    assert none.fixed == act_prompt(list(home.tools), home, "home").messages
    assert call.prompt_name == "act:home"  # found by its tools
    assert call.fixed == none.fixed


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ({"gold": {"call": {"name": "fly", "arguments": {}}}}, "is not valid"),
        ({"gold": {"label": "x"}}, "an act line's gold must be"),
    ],
)
def test_an_act_line_with_a_call_the_tools_refuse_is_malformed(tmp_path, line, needle):
    row = {"request": act_request("e1", tool_set="home"), **line}
    with pytest.raises(TuneDataError, match=needle):
        load_examples(write(tmp_path, row))


def test_a_relay_call_the_tools_refuse_is_skipped(tmp_path):
    home = TOOL_SETS.get("home")
    assert home is not None
    tools = [t.model_dump(mode="json", exclude_none=True) for t in home.tools]
    row = {**relay("a9", task="act", labels=None, tools=tools)}
    row["cloud"] = {"tool_call": {"name": "fly", "arguments": {}}, "answer": None}
    loaded = load_examples(write(tmp_path, row))
    assert loaded.examples == []
    assert loaded.skipped == {"cloud call does not validate against the tools": 1}


# -- rejection with file:line --------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ("{not json", "Expecting property name"),
        ("[1, 2]", "expected a JSON object"),
        ('{"text": "hi"}', "unrecognized line"),
        (
            json.dumps({"request": {"v": 1, "id": "x", "task": "classify"}, "answer": "a"}),
            "invalid request",
        ),
        (
            json.dumps({"request": request("x"), "gold": {"label": "garage"}}),
            "gold label 'garage' is none of the labels",
        ),
        (
            json.dumps({"request": request("x"), "answer": "dim the lights"}),
            "none of the labels: lights_on, lights_off, play_music",
        ),
        (
            json.dumps(
                {
                    "request": {
                        "v": 1,
                        "id": "x",
                        "task": "classify",
                        "text": "hi",
                        "skill": "no_such_skill",
                    },
                    "answer": "a",
                }
            ),
            "unknown skill 'no_such_skill'",
        ),
        (json.dumps(relay("x", cloud="lights_on")), "'cloud' must be an object"),
    ],
)
def test_a_bad_line_is_rejected_with_file_and_line(tmp_path, bad, needle):
    good = json.dumps({"request": request("ok"), "answer": "lights_on"})
    path = write(tmp_path, good, "", bad)
    with pytest.raises(TuneDataError) as info:
        load_examples(path)
    assert str(info.value).startswith(f"{path}:3: ")
    assert needle in str(info.value)
    assert info.value.line == 3


def test_a_duplicate_id_is_rejected_naming_both_lines(tmp_path):
    row = {"request": request("same"), "answer": "lights_on"}
    path = write(tmp_path, row, row)
    with pytest.raises(
        TuneDataError,
        match=r"data\.jsonl:2: duplicate request id 'same' "
        r"\(first at line 1\)",
    ):
        load_examples(path)


def test_unreadable_files_are_data_errors(tmp_path):
    with pytest.raises(TuneDataError, match="cannot read"):
        load_examples(tmp_path / "missing.jsonl")
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(TuneDataError, match="not UTF-8"):
        load_examples(bad)


def models_cli(*argv: str) -> int:
    """``edge-agent models ARGV`` in-process; its exit code."""
    parser = argparse.ArgumentParser()
    add_models_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["models", *argv])
    return int(args.func(args))


def test_the_cli_exits_2_on_bad_data_before_touching_a_model(tmp_path, capsys):
    path = write(tmp_path, {"request": request("x"), "answer": "dim the lights"})
    cache = ["--cache-dir", str(tmp_path / "empty-cache")]
    assert models_cli(*cache, "tune", "smollm2-135m-instruct", "--data", str(path)) == 2
    err = capsys.readouterr().err
    assert f"error: {path}:1: answer 'dim the lights' is none of the labels: lights_on," in err
    assert not (tmp_path / "empty-cache").exists()


def test_the_cli_rejects_bad_settings(tmp_path, capsys):
    path = write(tmp_path, {"request": request("x"), "answer": "lights_on"})
    argv = ["tune", "smollm2-135m-instruct", "--data", str(path), "--heldout-fraction", "1.5"]
    assert models_cli(*argv) == 2
    assert "--heldout-fraction must be in [0, 1)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--lora-rank", "8"], "--lora-rank and --lora-alpha need --method lora"),
        (["--method", "lora", "--lora-rank", "0"], "--lora-rank must be at least 1"),
        (["--method", "lora", "--lora-alpha", "0"], "--lora-alpha must be positive"),
    ],
)
def test_the_cli_rejects_bad_lora_settings(tmp_path, capsys, extra, needle):
    path = write(tmp_path, {"request": request("x"), "answer": "lights_on"})
    argv = ["--cache-dir", str(tmp_path / "cache"), "tune", "smollm2-135m-instruct"]
    assert models_cli(*argv, "--data", str(path), *extra) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


# -- splits --------------------------------------------------------------------


def test_the_official_split_rule_is_the_bench_rule():
    ids = [item.id for item in load_all()]
    assert [eval_split_of(i) for i in ids] == [split_of(i) for i in ids]


def test_held_out_is_a_stable_hash_of_the_key():
    keys = [f"req-{i}" for i in range(2000)]
    share = sum(held_out(k, 0.2) for k in keys) / len(keys)
    assert 0.17 < share < 0.23
    assert [held_out(k, 0.2) for k in keys] == [held_out(k, 0.2) for k in keys]
    assert not any(held_out(k, 0.0) for k in keys)
    # a bigger fraction only adds held-out items: nothing held out becomes trained
    assert all(held_out(k, 0.5) for k in keys if held_out(k, 0.2))


def eval_lines(family_file: str) -> list[str]:
    return (EVAL_DIR / family_file).read_text(encoding="utf-8").splitlines()


def test_training_never_sees_held_out_items(tmp_path):
    # the whole voice family, both official splits, given as training data
    path = write(tmp_path, *eval_lines("voice_intents.jsonl"))
    examples = load_examples(path).examples
    eval_set = load_eval_set(EVAL_DIR)
    assert eval_set is not None
    p = plan(examples, heldout_fraction=0.2, eval_set=eval_set, seed=3)
    train = {e.key for e in p.train}
    heldout = {e.key for e in p.heldout}
    official = {e.key for e in p.official}
    assert train
    assert heldout
    assert official
    assert not train & heldout
    assert not train & official
    assert all(split_of(k) == "dev" for k in train)
    assert official == {e.key for e in examples if split_of(e.key) == "heldout"}
    assert p.protected == len(official)
    assert len(train) + len(heldout) + p.protected == len(examples)
    assert {e.key.split("-")[0] for e in p.official} == {"voice"}  # only the data's family


def test_an_eval_held_out_request_is_protected_by_its_text_too(tmp_path):
    eval_set = load_eval_set(EVAL_DIR)
    assert eval_set is not None
    item = eval_set.heldout(["voice_intents"])[0]
    # the same utterance arriving through the relay under another id
    row = relay("random-id", text=item.request.text, labels=item.request.labels, kind="voice")
    row["cloud"] = {"label": item.label, "answer": item.label}
    examples = load_examples(write(tmp_path, row)).examples
    p = plan(examples, heldout_fraction=0.0, eval_set=eval_set)
    assert p.train == []
    assert p.protected == 1
    assert {e.key for e in p.official} == {e.key for e in eval_set.heldout(["voice_intents"])}


def test_official_items_are_measured_in_the_prompt_the_data_trains(tmp_path):
    """Data naming a skill trains the skill's prompt, so the eval set's held-out items of
    that family (which list their labels inline) are measured with that prompt too."""
    lines = []
    for raw in eval_lines("voice_intents.jsonl"):
        item = json.loads(raw)
        del item["request"]["labels"]
        item["request"]["skill"] = "home_intents"
        lines.append(item)
    examples = load_examples(write(tmp_path, *lines)).examples
    eval_set = load_eval_set(EVAL_DIR)
    assert eval_set is not None
    p = plan(examples, heldout_fraction=0.2, eval_set=eval_set)
    skill = SkillRegistry().get("home_intents")
    assert skill is not None
    assert p.official
    for e in p.official:
        assert e.prompt_name == "home_intents"
        assert e.request.skill == "home_intents"
        assert e.fixed == tuple(skill.messages(exemplars=False))
        assert e.choices == skill.verbalizers
        assert e.target == skill.verbalizers[e.label]
    # inline data keeps the inline prompt
    inline = plan(
        load_examples(write(tmp_path, *eval_lines("voice_intents.jsonl"), name="i.jsonl")).examples,
        heldout_fraction=0.2,
        eval_set=eval_set,
    )
    assert {e.prompt_name for e in inline.official} == {"inline"}


def test_data_outside_the_eval_set_gets_no_official_figures(tmp_path):
    rows = [
        {"request": request(f"x{i}", text=f"utterance {i}"), "answer": "lights_on"}
        for i in range(50)
    ]
    examples = load_examples(write(tmp_path, *rows)).examples
    p = plan(examples, heldout_fraction=0.3, eval_set=load_eval_set(EVAL_DIR))
    assert p.official == []
    assert p.protected == 0
    assert len(p.train) + len(p.heldout) == 50
    assert 5 <= len(p.heldout) <= 25


def test_max_examples_is_a_seeded_sample_of_the_training_split(tmp_path):
    rows = [
        {"request": request(f"x{i}", text=f"utterance {i}"), "answer": "lights_on"}
        for i in range(60)
    ]
    examples = load_examples(write(tmp_path, *rows)).examples

    def train(seed: int) -> list[str]:
        p = plan(examples, heldout_fraction=0.2, eval_set=None, max_examples=10, seed=seed)
        assert p.capped == len(examples) - len(p.heldout) - 10
        return [e.key for e in p.train]

    assert len(train(1)) == 10
    assert train(1) == train(1)
    assert train(1) != train(2)
    heldout = {e.key for e in plan(examples, heldout_fraction=0.2, eval_set=None).heldout}
    assert not set(train(1)) & heldout


def test_the_model_name_follows_data_settings_and_the_trained_set():
    base, data = "smollm2-135m-instruct", "0" * 64
    a = tune_key(base, data, TuneParams(), ["x", "y"])
    assert a == tune_key(base, data, TuneParams(), ["y", "x"])
    assert a != tune_key(base, "1" * 64, TuneParams(), ["x", "y"])
    assert a != tune_key(base, data, TuneParams(epochs=1), ["x", "y"])
    assert a != tune_key(base, data, TuneParams(), ["x"])  # e.g. the eval set protected "y"


def test_a_full_tune_keeps_its_name_and_lora_settings_name_a_lora_tune():
    base, data = "smollm2-135m-instruct", "0" * 64
    # The key of a full tune before LoRA existed: installed tunes keep their names.
    before_lora = {
        "base": base,
        "data": data,
        "params": {
            "epochs": 3,
            "lr": 5e-5,
            "batch_size": 8,
            "seed": 0,
            "max_examples": None,
            "heldout_fraction": 0.2,
        },
        "recipe": RECIPE_VERSION,
        "train": ["x"],
    }
    canonical = json.dumps(before_lora, sort_keys=True).encode()
    full = tune_key(base, data, TuneParams(), ["x"])
    assert full == hashlib.sha256(canonical).hexdigest()
    assert full == tune_key(base, data, TuneParams(lora_rank=4), ["x"])  # unused by full

    lora = tune_key(base, data, TuneParams(method="lora"), ["x"])
    assert lora != full
    assert lora != tune_key(base, data, TuneParams(method="lora", lora_rank=8), ["x"])
    assert lora != tune_key(base, data, TuneParams(method="lora", lora_alpha=8), ["x"])


# -- figures and manifest --------------------------------------------------------


def test_figures_leave_auroc_out_when_it_is_undefined():
    assert figures([0.2, 0.9], [True, True]).auroc is None  # no wrong answer to rank
    f = figures([0.9, 0.8, 0.3], [True, True, False])
    assert (f.examples, f.accuracy, f.auroc) == (3, 0.6667, 1.0)


def test_the_table_shows_both_models_per_split():
    before = {"data": EvalFigures(examples=4, accuracy=0.25, auroc=None, ece=0.3)}
    after = {"data": EvalFigures(examples=4, accuracy=0.75, auroc=0.5, ece=0.1)}
    lines = format_table(before, after, base="base-m", tuned="tuned-m").splitlines()
    assert lines[0].split() == ["HELD-OUT", "SPLIT", "N", "MODEL", "ACCURACY", "AUROC", "ECE"]
    assert lines[1].split() == ["data", "held-out", "4", "base-m", "0.250", "-", "0.300"]
    assert lines[2].split() == ["data", "held-out", "4", "tuned-m", "0.750", "0.500", "0.100"]


def test_act_examples_are_measured_apart_from_classify(tmp_path):
    call = {"name": "set_temperature", "arguments": {"room": "hall", "celsius": 20}}
    labelled = [{"request": request(f"c{i}"), "gold": {"label": "lights_on"}} for i in range(6)]
    acts = [
        {"request": act_request(f"a{i}", tool_set="home"), "gold": {"call": call}} for i in range(6)
    ]
    rows = labelled + acts
    examples = load_examples(write(tmp_path, *rows)).examples
    p = plan(examples, heldout_fraction=0.5, eval_set=None)
    splits = measured_splits(p)
    assert set(splits) == {"data", "official", "data-act", "official-act"}
    assert all(e.call is None for e in splits["data"])
    assert all(e.call == call for e in splits["data-act"])
    assert len(splits["data"]) + len(splits["data-act"]) == len(p.heldout) > 0
    figs = {"data-act": EvalFigures(examples=3, accuracy=1 / 3, auroc=None, ece=0.2)}
    lines = format_table(figs, figs, base="b", tuned="t").splitlines()
    assert lines[1].split()[:5] == ["data", "held-out,", "act", "3", "b"]


def test_a_tuned_manifest_round_trips_and_is_a_current_model(tmp_path):
    figs = {"data": EvalFigures(examples=4, accuracy=0.5, auroc=0.5, ece=0.1)}
    record = TuneRecord(
        base="smollm2-135m-instruct",
        key="k" * 64,
        data_file="d.jsonl",
        data_sha256="0" * 64,
        examples=10,
        train_examples=8,
        heldout_examples=2,
        official_heldout_examples=0,
        epochs=1,
        lr=1e-5,
        batch_size=8,
        seed=0,
        heldout_fraction=0.2,
        prompt="p",
        train_seconds=1.0,
        final_loss=0.1,
        before=figs,
        after=figs,
    )
    cache = ModelCache(tmp_path)
    folder = tmp_path / "smollm2-135m-instruct-tuned-abcd1234"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"x")
    from agent.models.manifest import record_files

    Manifest(
        name=folder.name,
        source=SourceRecord(kind="tuned"),
        recipe_version="0",
        tune=record,
        files=record_files(folder),
    ).write(folder)
    read = cache.manifest(folder.name)
    assert read is not None
    assert read.tune == record
    # not in the catalog, yet selectable by name: what the agent's model.name resolves
    assert cache.require(folder.name) == folder


# -- packing -------------------------------------------------------------------------


def tiny_llama() -> Any:
    """A randomly initialised 2-layer Llama (seeded), small enough for a unit test."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return transformers.AutoModelForCausalLM.from_config(cfg)


def test_shared_prefix_packing_equals_separate_sequences():
    torch = pytest.importorskip("torch")
    from agent.modelbuild.tune_train import Tokenized, batches, pack

    model = tiny_llama().eval()
    shared = [5, 6, 7, 8, 9, 10]
    batch = [
        Tokenized("g", [*shared, 11, 12], [20, 21, 2]),
        Tokenized("g", [*shared, 13], [22, 2]),
        Tokenized("g", [*shared, 14, 15, 16], [23, 2]),
    ]
    ids, positions, allowed, where, targets = pack(batch)
    assert len(ids) < sum(len(s.prompt) + len(s.answer) for s in batch)
    with torch.no_grad():
        hidden = model.model(
            input_ids=torch.tensor([ids]),
            attention_mask=allowed[None, None],
            position_ids=torch.tensor([positions]),
        ).last_hidden_state[0]
        packed = torch.log_softmax(model.lm_head(hidden[torch.tensor(where)]), -1)
        packed_lp = packed[torch.arange(len(targets)), torch.tensor(targets)]
        separate = []
        for s in batch:
            logits = model(input_ids=torch.tensor([s.prompt + s.answer])).logits[0]
            lp = torch.log_softmax(logits, -1)
            separate += [lp[len(s.prompt) - 1 + j, t] for j, t in enumerate(s.answer)]
    assert targets == [t for s in batch for t in s.answer]
    assert torch.allclose(packed_lp, torch.stack(separate), atol=1e-5)

    groups = batches([Tokenized(g, [1, 2], [3]) for g in "aaaaabbb"], 2, random.Random(0))
    assert sorted(len(b) for b in groups) == [1, 1, 2, 2, 2]
    assert all(len({s.group for s in b}) == 1 for b in groups)


def test_lora_trains_only_adapters_and_merges_into_a_plain_model():
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from agent.modelbuild.tune_train import Lora, Tokenized, _batch_loss, _with_adapters

    model = tiny_llama()
    probe = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        before = model(input_ids=probe).logits
    total = sum(p.numel() for p in model.parameters())

    peft_model = _with_adapters(model, Lora(rank=4, alpha=8), seed=0)
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained
    assert sum(p.numel() for p in trained) < total // 5
    with torch.no_grad():  # B starts at zero: the adapters change nothing yet
        assert torch.allclose(model(input_ids=probe).logits, before)

    batch = [Tokenized("g", [5, 6, 7, 8], [20, 2]), Tokenized("g", [5, 6, 7, 9], [21, 2])]
    optimizer = torch.optim.AdamW(trained, lr=1e-2)
    losses = []
    for _ in range(5):
        loss, tokens = _batch_loss(model, batch)
        assert tokens == 3 + 2 * 3  # the shared prefix once, then each own token and answer
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    with torch.no_grad():
        adapted = model(input_ids=probe).logits
        merged = peft_model.merge_and_unload()
        assert not any("lora" in name for name, _ in merged.named_parameters())
        assert torch.allclose(merged(input_ids=probe).logits, adapted, atol=1e-5)
        assert not torch.allclose(adapted, before, atol=1e-3)
