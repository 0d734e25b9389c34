"""Skills with the real SmolLM2 build: prefix-KV reuse scores as a fresh prefill does,
and a request naming a skill gets one of its labels through the real agent."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.engine.confidence import log_softmax
from agent.engine.engine import DeadlineExceeded, Engine, FixedPrompt, StopWhen
from agent.engine.prompts import build_messages
from agent.skills import Skill, SkillRegistry
from agent.skills.classify import classify_skill
from edge_slm.contract import Request, SkillFit
from edge_slm.topics import DeviceTopics
from tests.support.agent import AgentProcess
from tests.support.app import AppClient

TEXTS = ["turn on the lights", "it's too quiet", "what's the forecast for tomorrow"]
TOLERANCE = 0.02  # probability; int8 matmuls quantize activations per call


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Engine:
    return Engine(model_dir, name="smollm2-135m-instruct", provider="cpu", threads=2)


@pytest.fixture(scope="module")
def prompt() -> FixedPrompt:
    skill = SkillRegistry().get("home_intents")
    assert skill is not None
    return skill.prompt()


class _StopOnCall(StopWhen):
    """Raises DeadlineExceeded on the n-th check: a deadline in the middle of scoring."""

    def __init__(self, n: int) -> None:
        super().__init__()
        object.__setattr__(self, "_left", [n])  # StopWhen is a frozen dataclass

    def check(self) -> None:
        self._left[0] -= 1
        if self._left[0] < 0:
            raise DeadlineExceeded("test deadline")


def _close(a: dict[str, float], b: dict[str, float]) -> float:
    assert a.keys() == b.keys()
    return max(abs(a[k] - b[k]) for k in a)


def test_prefix_reuse_scores_like_a_fresh_prefill(engine: Engine, prompt: FixedPrompt) -> None:
    engine.clear_prefixes()
    for text in TEXTS:
        kept = engine.classify_fixed(prompt, text)
        fresh = engine.classify_fixed(prompt, text, reuse=False)
        assert kept.label == fresh.label
        assert kept.prompt_tokens == fresh.prompt_tokens > 500  # the exemplars are in
        assert _close(kept.scores, fresh.scores) < TOLERANCE
    assert engine.kept_prefixes == [f"home_intents@{prompt.key}"]
    # a request after many others still starts from the bare prefix (rewound each time)
    again = engine.classify_fixed(prompt, TEXTS[0])
    assert _close(again.scores, engine.classify_fixed(prompt, TEXTS[0], reuse=False).scores) < (
        TOLERANCE
    )


def test_a_deadline_mid_scoring_leaves_the_kept_prefix_intact(
    engine: Engine, prompt: FixedPrompt
) -> None:
    before = engine.classify_fixed(prompt, TEXTS[1])
    with pytest.raises(DeadlineExceeded):
        engine.classify_fixed(prompt, TEXTS[2], stop=_StopOnCall(2))
    after = engine.classify_fixed(prompt, TEXTS[1])
    assert _close(before.scores, after.scores) < 1e-6


def test_a_changed_skill_replaces_its_kept_prefix_and_the_cache_is_bounded(
    model_dir: Path, prompt: FixedPrompt
) -> None:
    small = Engine(model_dir, name="s", provider="cpu", threads=2, max_prefixes=2)
    short = FixedPrompt(
        name="home_intents",
        key="changed",
        messages=prompt.messages[:1],
        choices=prompt.choices,
    )
    small.classify_fixed(prompt, TEXTS[0])
    small.classify_fixed(short, TEXTS[0])
    assert small.kept_prefixes == ["home_intents@changed"]
    other = FixedPrompt(name="b", key="1", messages=prompt.messages[:1], choices=prompt.choices)
    third = FixedPrompt(name="c", key="1", messages=prompt.messages[:1], choices=prompt.choices)
    small.classify_fixed(other, TEXTS[0])
    small.classify_fixed(third, TEXTS[0])
    assert small.kept_prefixes == ["b@1", "c@1"]
    none = Engine(model_dir, name="s", provider="cpu", threads=2, max_prefixes=0)
    none.classify_fixed(prompt, TEXTS[0])
    assert none.kept_prefixes == []


def test_full_scoring_of_a_split_template_matches_plain_classify(engine: Engine) -> None:
    """Splitting the chat template around the user turn tokenizes as the whole prompt."""
    labels = ["lights_on", "lights_off", "play_music"]
    request = Request.model_validate(
        {"v": 1, "text": "turn on the lights", "task": "classify", "labels": labels}
    )
    system, user = build_messages(request)
    plain = engine.classify([system, user], labels)
    fixed = FixedPrompt(name="inline", key="1", messages=(system,), choices={x: x for x in labels})
    split = engine.classify_fixed(
        fixed, user["content"], reuse=False, scoring="full", calibrate=False
    )
    assert split.prompt_tokens == plain.prompt_tokens
    assert _close(plain.scores, split.scores) < TOLERANCE


def test_multi_token_scoring_matches_token_by_token(engine: Engine) -> None:
    """One multi-token append reads one logits row per token, as single steps do."""
    og = engine._og
    ids = engine.encode_chat([{"role": "user", "content": "turn on the lights"}])
    label = engine._encode("turn the lights on")
    params = og.GeneratorParams(engine._model)
    params.set_search_options(do_sample=False, max_length=len(ids) + 16)
    gen = og.Generator(engine._model, params)
    gen.append_tokens(ids)
    first = float(log_softmax(gen.get_logits())[label[0]])
    stepwise = [first]
    for i, token in enumerate(label[:-1]):
        gen.append_tokens([token])
        stepwise.append(float(log_softmax(gen.get_logits())[label[i + 1]]))
    # a new generator: after rewind_to, get_logits still holds the last step's row
    gen = og.Generator(engine._model, params)
    gen.append_tokens(ids)
    scores, steps = engine._score(gen, len(ids), {"x": label}, StopWhen())
    assert steps == len(label) - 1
    assert scores["x"] == pytest.approx(sum(stepwise), abs=0.05 * len(label))  # int8 noise


def test_an_answer_the_model_did_not_run_is_sized_like_one_it_ran(
    engine: Engine, prompt: FixedPrompt
) -> None:
    """``fixed_prompt_size`` counts what ``classify_fixed`` reads, kept prefix or not."""
    engine.clear_prefixes()
    text = "dim the bedroom lamp a bit"
    label = next(iter(prompt.choices))
    unkept, answer = engine.fixed_prompt_size(prompt, text, label)
    ran = engine.classify_fixed(prompt, text)  # keeps the prefix
    kept, _ = engine.fixed_prompt_size(prompt, text, label)
    assert unkept == kept == ran.prompt_tokens > 500
    assert engine.fixed_prompt_size(prompt, text + " please", label)[0] > kept
    words = prompt.choices[label]
    assert answer == len(engine._encode(words)) + 1  # the label's words and end of turn


# -- through the real agent ------------------------------------------------------


def test_a_request_naming_a_skill_gets_one_of_its_labels(
    app: AppClient, topics: DeviceTopics, agent: AgentProcess
) -> None:
    app.subscribe(topics.response)
    skill = SkillRegistry().get("home_intents")
    assert skill is not None
    reply = app.classify(
        topics.request, text="switch off the lights in the hall", skill="home_intents"
    )
    assert reply["ok"] is True, reply
    assert reply["label"] in skill.labels
    assert reply["answer"] == reply["label"]  # the label name, not the verbalizer
    assert set(reply["scores"]) == set(skill.labels)
    assert reply["tokens"]["prompt"] > 500

    unknown = app.classify(topics.request, text="hi there", skill="no_such_skill")
    assert unknown["ok"] is False
    assert unknown["error"]["code"] == "unknown_skill"


def test_a_sensor_report_is_judged_by_the_skills_bands_and_the_rest_by_the_model(
    app: AppClient, topics: DeviceTopics, agent: AgentProcess
) -> None:
    app.subscribe(topics.response)
    readings = [
        {"name": "attic/temperature", "value": 31.0, "unit": "°C"},
        {"name": "attic/humidity", "value": 45, "unit": "%"},
    ]
    ruled = app.classify(
        topics.request, kind="sensor", text="Attic report", sensor=readings, skill="sensor_state"
    )
    assert ruled["ok"] is True, ruled
    assert (ruled["label"], ruled["confidence"], ruled["source"]) == ("warning", 1.0, "edge")
    assert ruled["reason"].startswith(
        "by the skill's bands: attic/temperature = 31.0 °C: warning; confidence 1.00"
    )

    # A reading no band covers, and none that settles it: the model reads the report.
    unknown = [*readings, {"name": "attic/radon", "value": 300, "unit": "Bq/m³"}]
    read = app.classify(
        topics.request, kind="sensor", text="Attic report", sensor=unknown, skill="sensor_state"
    )
    assert read["ok"] is True, read
    assert read["tokens"]["prompt"] > 100
    assert "bands" not in read["reason"]
    # Priced as the model would have read it (one reading fewer), so cost avoided counts it.
    assert 0 < ruled["tokens"]["prompt"] < read["tokens"]["prompt"]


def test_a_skill_pushed_on_the_config_topic_is_served(
    app: AppClient, topics: DeviceTopics, device_id: str, agent: AgentProcess
) -> None:
    app.subscribe(topics.response)
    config = {
        "v": 1,
        "device_id": device_id,
        "issued_at": time.time(),
        "skills": {
            "garage": {
                "labels": {
                    "door_open": {"exemplars": ["the garage door is open"]},
                    "door_closed": {"exemplars": ["the garage is shut"]},
                }
            }
        },
    }
    app.publish(topics.config, config)
    deadline = time.monotonic() + 10
    while True:  # the config and the request travel on different topics
        reply = app.classify(topics.request, text="garage door status: open", skill="garage")
        if reply["ok"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert reply["ok"] is True, reply
    assert reply["label"] in ("door_open", "door_closed")
    assert set(reply["scores"]) == {"door_open", "door_closed"}


def test_a_fit_made_on_prefix_scores_is_run_with_prefix_scoring(engine: Engine) -> None:
    """The fit records the scoring rule its calibrator saw; ``classify_skill`` scores that
    way (and a skill without a fit for this model keeps full scoring)."""
    skill = SkillRegistry().get("home_intents")
    assert skill is not None
    identity = {"slm_weight": 1.0, "bias": -50.0, "top_weight": 100.0}  # keeps the argmax
    text = "turn on the lights"
    ran: dict[str, int] = {}
    for scoring in ("full", "prefix"):
        spec = skill.spec.model_copy(
            update={"fits": {engine.name: SkillFit(slm_only=identity, scoring=scoring)}}
        )
        fitted = Skill.of("home_intents", spec, "config")
        got = classify_skill(engine, fitted, text)
        want = engine.classify_fixed(fitted.prompt(), text, scoring=scoring)
        assert got.scored_tokens == want.scored_tokens
        assert got.label == want.label
        ran[scoring] = got.scored_tokens
    # 9 of the 12 verbalizers start with a token of their own: far fewer passes.
    assert ran["prefix"] < ran["full"] / 2
    unfitted = Skill.of("home_intents", skill.spec.model_copy(update={"fits": {}}), "config")
    assert classify_skill(engine, unfitted, text).scored_tokens == ran["full"]
