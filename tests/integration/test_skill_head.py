"""The classify cascade with the real MiniLM encoder and the real SmolLM2 build: the
skill head answers first and the SLM does not run when it is sure; the SLM runs when
it is not; a pushed head is used in place of the skill-text one; and the README's
two-label `mosquitto_rr` example, sent with mosquitto_rr to the real agent, is not
answered confidently wrong, while an unsure two-label request goes under the
threshold (it would escalate)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.config import PolicySettings
from agent.engine.engine import Classification, Engine, FixedPrompt
from agent.models import ModelCache, default_cache_dir
from agent.models.embedders import DEFAULT_EMBEDDER, install, installed
from agent.skills import Skill, SkillRegistry
from agent.skills.classify import classify_skill
from agent.skills.embedding import Embedder
from agent.skills.head_stage import ACCEPT, skill_head
from edge_slm.contract import SkillSpec, Task
from edge_slm.topics import DeviceTopics
from tests.support.agent import AgentProcess
from tests.support.app import AppClient
from tests.support.broker import PrivateBroker

pytestmark = pytest.mark.model

README = Path(__file__).resolve().parents[2] / "README.md"
THRESHOLD = PolicySettings().thresholds[Task.CLASSIFY]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    cache = ModelCache(default_cache_dir())
    folder = installed(cache, DEFAULT_EMBEDDER)
    if folder is None:
        install(DEFAULT_EMBEDDER, cache, install_source=True)
        folder = installed(cache, DEFAULT_EMBEDDER)
    assert folder is not None
    return Embedder(folder, name=DEFAULT_EMBEDDER, threads=2)


class _Counting:
    """The real engine, counting the SLM's classify passes."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.calls = 0

    def classify_fixed(self, prompt: FixedPrompt, text: str, **kw: Any) -> Classification:
        self.calls += 1
        return self._engine.classify_fixed(prompt, text, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Engine:
    return Engine(model_dir, name="smollm2-135m-instruct", provider="cpu", threads=2)


def _skill() -> Skill:
    skill = SkillRegistry().get("home_intents")
    assert skill is not None
    return skill


def _classify(
    engine: Engine, embedder: Embedder, text: str, **kw: Any
) -> tuple[Classification, int]:
    counting = _Counting(engine)
    got = classify_skill(counting, _skill(), text, embedder=embedder, **kw)  # type: ignore[arg-type]
    return got, counting.calls


def test_a_sure_head_answers_and_the_slm_does_not_run(engine: Engine, embedder: Embedder) -> None:
    got, calls = _classify(engine, embedder, "turn off the lights")
    assert got.label == "lights_off"
    assert got.confidence >= ACCEPT
    assert got.basis == "skill head v0"
    assert calls == 0
    assert got.prompt_tokens > 100  # priced as if the SLM had read it


def test_an_unsure_head_hands_over_to_the_slm(engine: Engine, embedder: Embedder) -> None:
    head = skill_head(embedder, _skill())
    candidates: Sequence[str] = ("music", "it's a bit dim", "warmer", "the door", "hmm")
    unsure = [t for t in candidates if head.predict(embedder.embed([t])[0]).confidence < ACCEPT]
    assert unsure, "every candidate was sure: pick vaguer ones"
    got, calls = _classify(engine, embedder, unsure[0])
    assert calls == 1
    assert got.basis is None
    assert got.label in _skill().labels


def test_a_skill_without_the_slm_answers_from_its_unsure_head(
    engine: Engine, embedder: Embedder
) -> None:
    skill = _skill()
    spec = SkillSpec.model_validate({**skill.spec.model_dump(), "slm": False})
    head = skill_head(embedder, skill)
    candidates: Sequence[str] = ("music", "it's a bit dim", "warmer", "the door", "hmm")
    unsure = [t for t in candidates if head.predict(embedder.embed([t])[0]).confidence < ACCEPT]
    assert unsure, "every candidate was sure: pick vaguer ones"
    counting = _Counting(engine)
    got = classify_skill(
        counting, Skill.of(skill.name, spec, "config"), unsure[0], embedder=embedder
    )  # type: ignore[arg-type]
    said = head.predict(embedder.embed([unsure[0]])[0])
    assert counting.calls == 0
    assert (got.label, got.confidence) == (said.label, said.confidence)
    assert got.basis == "skill head v0"


def test_a_pushed_head_takes_the_place_of_the_skill_text_one(
    engine: Engine, embedder: Embedder
) -> None:
    text = "switch off the lights in the hall"
    skill = _skill()
    vectors = embedder.embed([text, "hall lights off now", "switch the hall lights off"] * 4)
    from edge_slm.head import fit_head, skill_texts

    texts, gold = skill_texts(skill.spec)
    import numpy as np

    x = np.concatenate([embedder.embed(texts), vectors])
    taught = fit_head(x, [*gold, *["play_music"] * len(vectors)], skill.labels)
    got, calls = _classify(engine, embedder, text, head=(taught, 5))
    assert got.label == "play_music"  # only the pushed head says so
    assert got.basis == "skill head v5"
    assert calls == 0


def _readme_example() -> list[str]:
    """The README's `mosquitto_rr` example with ad-hoc labels, as an argv."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    for block in blocks:
        command = block.replace("\\\n", " ")
        if "mosquitto_rr" in command and '"labels"' in command:
            return shlex.split(command.strip())
    raise AssertionError("the README has no mosquitto_rr example with labels")


def _with(argv: list[str], flag: str, value: str) -> list[str]:
    out = list(argv)
    out[out.index(flag) + 1] = value
    return out


def test_on_ad_hoc_labels_the_slm_never_takes_the_heads_label(
    engine: Engine, embedder: Embedder
) -> None:
    """The SLM has no fit for a request's own labels: where the zero-shot head is unsure
    it runs, and its disagreement lowers the head's confidence; the label stays the
    head's (``bench.unfitted_slm --ad-hoc``)."""
    from agent.engine.prompts import build_messages
    from agent.skills.classify import classify_labels
    from agent.skills.head_stage import zero_shot_head
    from edge_slm.contract import Request

    labels = ["lights_on", "lights_off", "play_music", "volume_up", "weather_query"]
    candidates = ("music", "it's a bit dim", "warmer", "the door", "hmm", "louder", "rain")
    head = zero_shot_head(embedder, labels)
    seen = []
    for text in candidates:
        said = head.predict(embedder.embed([text])[0])
        if said.confidence >= ACCEPT:
            continue
        request = Request.model_validate(
            {"v": 1, "id": "t", "task": "classify", "labels": labels, "text": text}
        )
        messages = build_messages(request)
        slm = engine.classify(messages, labels)
        got = classify_labels(engine, messages, labels, text, embedder=embedder)
        assert got.label == said.label, (text, got, slm)
        assert got.basis is None  # the SLM ran
        agree = slm.label == said.label
        low = said.confidence if agree else min(said.confidence, 1 - said.confidence)
        assert got.confidence == pytest.approx(low)
        seen.append(agree)
    assert False in seen, "the SLM agreed on every unsure candidate: pick others"


@pytest.mark.skipif(shutil.which("mosquitto_rr") is None, reason="mosquitto-clients missing")
def test_the_readme_two_label_example_is_not_confidently_wrong(
    broker: PrivateBroker, topics: DeviceTopics, agent: AgentProcess, app: AppClient
) -> None:
    argv = _readme_example()
    argv = _with(_with(argv, "-p", str(broker.port)), "-t", topics.request)
    argv = [*_with(argv, "-e", f"apps/{uuid.uuid4().hex}/reply"), "-W", "60"]
    request: Mapping[str, Any] = json.loads(argv[argv.index("-m") + 1])
    assert len(request["labels"]) == 2
    out = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=True)
    reply = json.loads(out.stdout)
    assert reply["ok"] is True, reply
    assert reply["label"] == "lights_off" or reply["confidence"] < THRESHOLD, reply

    # An unsure two-label request goes under the threshold: the router would escalate
    # it (the cloud is off here, so the reason says it stayed).
    app.subscribe(topics.response)
    unsure = app.classify(topics.request, text="switch the lights", labels=request["labels"])
    assert unsure["ok"] is True, unsure
    assert unsure["confidence"] < THRESHOLD, unsure
    assert f"< {THRESHOLD:.2f} (classify)" in unsure["reason"]


def test_the_agent_answers_a_built_in_skill_from_its_head(
    topics: DeviceTopics, agent: AgentProcess, app: AppClient
) -> None:
    """The default path: a request naming home_intents, the real agent, its head."""
    app.subscribe(topics.response)
    reply = app.classify(topics.request, text="turn off the lights", skill="home_intents")
    assert reply["ok"] is True, reply
    assert reply["label"] == "lights_off"
    assert reply["reason"].startswith("skill head v0; confidence"), reply
    assert reply["confidence"] >= THRESHOLD
