"""bench.skills re-analyses a tuned model from its kept observations alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.modelbuild.tune_data import held_out
from bench import skills
from bench.eval_data import load_family, split_of


@pytest.fixture
def kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(skills, "OBS_DIR", tmp_path)
    monkeypatch.setattr(skills, "_installed_tune", lambda name: None)  # nothing installed
    return tmp_path


def test_a_tuned_models_held_out_items_come_from_its_kept_observations(kept):
    items = load_family("voice")
    (kept / "m-tuned-00000000.json").write_text(
        json.dumps({"key": "k", "items": {}, "tune_heldout_fraction": 0.3})
    )
    got = skills._tune_held_out("m-tuned-00000000", items)
    dev = [i.id for i in items if split_of(i.id) == "dev"]
    assert got == {i for i in dev if held_out(i, 0.3)}
    assert 0 < len(got) < len(dev)
    assert got != {i for i in dev if held_out(i, 0.5)}  # the fraction read is the one used


def test_without_a_manifest_or_a_recorded_fraction_it_stops(kept):
    (kept / "m-tuned-00000000.json").write_text(json.dumps({"key": "k", "items": {}}))
    with pytest.raises(SystemExit, match="neither an installed"):
        skills._tune_held_out("m-tuned-00000000", load_family("voice"))
    with pytest.raises(SystemExit, match="neither an installed"):
        skills._tune_held_out("absent-tuned-00000000", load_family("voice"))
