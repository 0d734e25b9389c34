"""bench/learning.py: its data never mixes stream and held-out, its cloud reads the relay's
prompt, and its curve learns (a synthetic stream that the head must learn to be sure of)."""

from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pytest

from bench._gold_llm import data_text, key
from bench.learning import HWU64, Dataset, Vectors, curve, hwu64, hwu64_home, voice
from cloud_relay.prompting import user_prompt
from edge_slm.contract import SensorReading, Task


@dataclass
class _Esc:
    task: Task
    labels: list[str] | None
    text: str
    sensor: list[SensorReading] | None


def test_the_gold_cloud_reads_the_text_of_the_relays_prompt() -> None:
    esc = _Esc(Task.CLASSIFY, ["lights_on", "lights_off"], "Turn  OFF the hall lights", None)
    assert key(data_text(user_prompt(cast(Any, esc)))) == "turn off the hall lights"
    with_sensor = _Esc(Task.CLASSIFY, ["a", "b"], "garage", [SensorReading(name="t", value=1)])
    assert data_text(user_prompt(cast(Any, with_sensor))) == "garage"


def test_voice_stream_is_neither_exemplars_nor_held_out() -> None:
    data = voice()
    stream = {t for t, _ in data.stream}
    assert stream.isdisjoint(t for t, _ in data.heldout)
    assert stream.isdisjoint(data.skill_texts)
    assert not {t for t, _ in data.heldout} & set(data.skill_texts)


@pytest.mark.skipif(not HWU64.exists(), reason="shared/data/hwu64 is not laid out")
def test_hwu64_streams_train_only_and_holds_out_test() -> None:
    for data in (hwu64(20, 0), hwu64_home(40, 0)):
        test = {t for t, _ in data.heldout}
        assert not test & {t for t, _ in data.stream}
    full = hwu64(20, 0)
    assert len(full.labels) == 64
    assert max(sum(g == label for _, g in full.stream) for label in full.labels) == 20


def test_the_curve_learns_from_escalations() -> None:
    # Two labels whose skill texts are noisy: the heads fitted on a few texts and labels
    # are unsure of some requests; the cloud's labels teach them, and escalations fall.
    rng = np.random.default_rng(0)
    labels = ["a", "b"]

    def point(label: str, spread: float) -> Vectors:
        centre = np.array([1.0, 0.0]) if label == "a" else np.array([0.0, 1.0])
        v = np.concatenate([centre * 3 + rng.normal(0, spread, 2), rng.normal(0, 1, 6)])
        unit: Vectors = (v / np.linalg.norm(v)).astype(np.float32)
        return unit

    texts = {f"skill {i}": point("ab"[i % 2], 3.0) for i in range(6)}
    stream = [(f"s{i}", "ab"[i % 2]) for i in range(120)]
    held = [(f"h{i}", "ab"[i % 2]) for i in range(60)]
    vec = {**texts, **{t: point(g, 0.3) for t, g in stream + held}}
    data = Dataset("synthetic", labels, list(texts), ["a", "b"] * 3, stream, held)
    result = curve(data, vec, every=4, threshold=0.9)
    points = result["points"]
    assert points[-1]["cloud_labelled"] >= 8  # refitted at least twice
    assert points[-1]["escalated"] < max(p["escalated"] for p in points)
    assert points[-1]["escalated"] <= points[0]["escalated"]
    assert points[-1]["head_accuracy"] >= 0.95
