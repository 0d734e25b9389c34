"""bench.slot_eval: HWU64 slot schemas from train.jsonl, and slot scoring (no model)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import slot_eval
from bench.slot_eval import (
    Counts,
    Scores,
    Utterance,
    entity_types,
    load,
    normalize_value,
    score_item,
    selected,
    slot_schema,
    summary,
)
from edge_slm.contract import Request, Task, validation_errors
from edge_slm.contract.structured import MAX_SCHEMA_PROPERTIES


def _utt(intent: str, *entities: tuple[str, str], text: str = "x") -> Utterance:
    return Utterance("t:1", text, intent, entities)


def test_types_come_from_train_per_intent_most_frequent_first() -> None:
    train = [
        _utt("alarm_set", ("time", "7 am")),
        _utt("alarm_set", ("date", "monday"), ("time", "noon")),
        _utt("iot_wemo_on", ("device_type", "plug")),
        _utt("iot_wemo_on"),
    ]
    assert entity_types(train) == {"alarm_set": ["time", "date"], "iot_wemo_on": ["device_type"]}


def test_the_schema_is_nullable_strings_all_required_in_the_contract_subset() -> None:
    schema = slot_schema(["house_place", "some_new_type"])
    assert schema["required"] == ["house_place", "some_new_type"]
    assert schema["properties"]["house_place"] == {
        "type": ["string", "null"],
        "description": "A room or place in the house.",
    }
    assert schema["properties"]["some_new_type"]["description"] == "Some new type."
    assert validation_errors(schema, {"house_place": None, "some_new_type": "a"}) == []
    assert validation_errors(schema, {"house_place": None})  # a field left out is invalid
    request = Request(id="r", task=Task.EXTRACT, text="lights off", json_schema=schema)
    assert request.json_schema == schema


def test_a_schema_over_the_contracts_cap_fails_when_built() -> None:
    with pytest.raises(ValueError, match="properties"):
        slot_schema([f"t{i}" for i in range(MAX_SCHEMA_PROPERTIES + 1)])


def test_normalize_strips_case_spaces_and_surrounding_punctuation() -> None:
    assert normalize_value("  The  Kitchen. ") == "the kitchen"
    assert normalize_value('"7:30 a.m."') == "7:30 a.m"
    assert normalize_value("...") == ""


def test_scores_count_wrong_extra_and_missed_slots() -> None:
    types = ["time", "date", "timeofday"]
    gold = [("time", "Seven AM"), ("date", "monday"), ("relation", "mom")]
    data = {"time": "seven am.", "date": "tuesday", "timeofday": "morning"}
    conf = {"time": 0.9, "date": 0.4, "timeofday": 0.2}
    counts, fields = score_item("alarm_set", types, gold, data, conf)
    # time right; date wrong (FP + FN); timeofday has no gold (FP); relation unseen (FN)
    assert (counts.tp, counts.fp, counts.fn) == (1, 2, 2)
    assert [f.right for f in fields] == [True, False, False]
    assert [f.confidence for f in fields] == [0.9, 0.4, 0.2]
    assert counts.precision == pytest.approx(1 / 3)
    assert counts.recall == pytest.approx(1 / 3)
    assert counts.f1 == pytest.approx(1 / 3)


def test_null_for_an_unmentioned_type_is_right_and_no_object_misses_everything() -> None:
    counts, fields = score_item("x", ["time", "date"], [("time", "noon")], {"time": "noon"})
    assert (counts.tp, counts.fp, counts.fn) == (1, 0, 0)
    assert all(f.right for f in fields)
    counts, fields = score_item("x", ["time", "date"], [("time", "noon")], None)
    assert (counts.tp, counts.fp, counts.fn) == (0, 0, 1)
    assert [f.right for f in fields] == [False, True]


def test_one_field_matches_one_of_several_gold_values() -> None:
    gold = [("house_place", "kitchen"), ("house_place", "hall")]
    counts, fields = score_item("x", ["house_place"], gold, {"house_place": "Hall"})
    assert (counts.tp, counts.fp, counts.fn) == (1, 0, 1)
    assert fields[0].right


def test_summary_null_accuracy_confidence_and_per_intent() -> None:
    scores = Scores()
    replies: list[tuple[str, dict[str, str | None], dict[str, float]]] = [
        ("a", {"time": "noon", "date": None}, {"time": 0.9, "date": 0.8}),
        ("b", {"time": "dusk", "date": "today"}, {"time": 0.3, "date": 0.1}),
    ]
    for intent, data, conf in replies:
        counts, fields = score_item(intent, ["time", "date"], [("time", "noon")], data, conf)
        scores.add(intent, counts, fields, valid=True)
    counts, fields = score_item("b", ["time", "date"], [("time", "noon")], None)
    scores.add("b", counts, fields, valid=False)  # misses its slot, has no null field
    out = summary(scores, [0.1, 0.3, 0.2])
    assert out["valid"] == "2/3"
    assert (out["precision"], out["recall"]) == (round(1 / 3, 3), round(1 / 3, 3))
    assert out["null_accuracy"] == 0.5  # "date" twice, null once
    assert out["by_intent"]["a"]["f1"] == 1.0
    assert out["by_intent"]["b"] == {
        "items": 2,
        "tp": 0,
        "fp": 2,
        "fn": 2,
        "f1": 0.0,
        "null_accuracy": 0.0,
    }
    conf = out["field_confidence"]["all_fields"]
    assert (conf["right"], conf["mean_right"], conf["mean_wrong"]) == (2, 0.85, 0.2)
    assert conf["auroc"] == 1.0
    assert out["field_confidence"]["non_null_values"]["fields"] == 3
    assert out["p50_ms"] == 200.0
    # at 0.4 only "noon" (0.9) stays: 1 right of 1 kept, of 3 gold slots
    assert out["confident_values_0.4"] == {
        "predicted_slots": 1,
        "precision": 1.0,
        "recall": round(1 / 3, 3),
        "f1": 0.5,
    }
    assert math.isnan(Counts().f1)


def test_load_and_the_dev_sample(tmp_path: Path) -> None:
    lines = [
        {"text": "wake me at 7", "intent": "alarm_set", "entities": []},
        {
            "text": "kitchen lights off",
            "intent": "iot_hue_lightoff",
            "entities": [{"entity": "house_place", "value": "kitchen", "start": 0, "end": 7}],
        },
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    items = load(tmp_path / "train.jsonl", "train")
    assert items[1] == Utterance(
        "train:2", "kitchen lights off", "iot_hue_lightoff", (("house_place", "kitchen"),)
    )
    ids = [f"train:{n}" for n in range(1, 2001)]
    share = sum(map(slot_eval.in_dev, ids)) / len(ids)
    assert 0.07 < share < 0.13
    kept = slot_eval.first_per_intent([_utt("a"), _utt("a"), _utt("b"), _utt("a")], 1)
    assert [u.intent for u in kept] == ["a", "b"]
    mixed = [_utt("a", text="a1"), _utt("a", text="a2"), _utt("b", text="b1"), _utt("a", text="a3")]
    assert [u.text for u in slot_eval.interleaved(mixed)] == ["a1", "b1", "a2", "a3"]
    assert selected("iot_wemo_on", slot_eval.DEFAULT_INTENTS)
    assert not selected("play_music", slot_eval.DEFAULT_INTENTS)


@pytest.mark.skipif(not (slot_eval.HWU64 / "train.jsonl").exists(), reason="no HWU64 data")
def test_every_hwu64_intents_schema_is_valid_and_every_type_described() -> None:
    types = entity_types(load(slot_eval.HWU64 / "train.jsonl", "train"))
    assert len(types) == 64
    for names in types.values():
        slot_schema(names)
        assert all(n in slot_eval.DESCRIPTIONS for n in names)


def test_rescore_scores_a_dump_without_a_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = {
        "text": "kitchen lights off",
        "intent": "iot_hue_lightoff",
        "entities": [{"entity": "house_place", "value": "kitchen", "start": 0, "end": 7}],
    }
    test = {**train, "text": "hall lights off"}
    test["entities"] = [{"entity": "house_place", "value": "hall", "start": 0, "end": 4}]
    (tmp_path / "train.jsonl").write_text(json.dumps(train) + "\n")
    (tmp_path / "test.jsonl").write_text(json.dumps(test) + "\n" + json.dumps(test) + "\n")
    replies = [
        {"id": "test:1", "ms": 900.0, "data": {"house_place": "Hall"}},
        {"id": "test:2", "ms": 100.0, "data": None},
    ]
    dump = tmp_path / "dump.jsonl"
    dump.write_text("".join(json.dumps(r) + "\n" for r in replies))
    assert slot_eval.main(["--data", str(tmp_path), "--rescore", str(dump)]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[0])
    assert (out["valid"], out["precision"], out["recall"]) == ("1/2", 1.0, 0.5)
    assert out["p50_ms"] == 100.0  # the first request is left out
