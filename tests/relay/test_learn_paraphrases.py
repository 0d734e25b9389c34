"""The cloud as a teacher: a fresh skill's first head from the cloud's paraphrases, checked
on the skill's exemplars; paraphrases asked for once per version of the skill's text and
kept; a failing cloud leaving nothing behind. On the real store (SQLite and PostgreSQL)
and the real encoder; the last tests call a real OpenAI-compatible server."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from cloud_relay.config import LearnSettings, RelaySettings
from cloud_relay.learn import Learner, SkillResult, TextEncoder
from cloud_relay.paraphrase import CloudTeacher, TeacherUnavailable, fingerprint, keep
from cloud_relay.store import Paraphrase, RelayStore
from edge_slm.contract import SkillSpec, decode
from edge_slm.contract.skills import SkillHead
from edge_slm.head import Head, skill_texts
from tests.relay.learning import SKILL, assert_kept_as_worse, cases, log_case
from tests.support.broker import free_port
from tests.support.procs import LlmServer

#: The check leaves each exemplar out in turn: a few per label make it mean something.
SPEC = SkillSpec.model_validate(
    {
        "labels": {
            "lights_on": {
                "description": "switch lights on",
                "exemplars": ["lights on", "turn the lamp on", "it is too dark in here"],
            },
            "lights_off": {
                "description": "switch lights off",
                "exemplars": ["lights off", "switch the lamp off", "kill the lights"],
            },
        }
    }
)
ROOMS = ["kitchen", "bedroom", "hall", "garage", "office"]
ON = ["switch the {} lamp on", "{} is too dark, light it up", "light up the {}"]
OFF = ["switch the {} lamp off", "kill the lights in the {}", "{} lights out"]
WRITTEN = {
    "lights_on": [t.format(r) for t in ON for r in ROOMS],
    "lights_off": [t.format(r) for t in OFF for r in ROOMS],
}


class ScriptedTeacher:
    """A teacher whose replies the test writes: what is under test here is the learner's
    decision and what it keeps; the real cloud's calls are tested at the end."""

    model = "scripted"

    def __init__(self, written: Mapping[str, Sequence[str]] | None) -> None:
        self._written = written
        self.calls = 0

    def paraphrase(self, skill: str, spec: SkillSpec, each: int) -> list[Paraphrase]:
        self.calls += 1
        if self._written is None:
            raise TeacherUnavailable("unavailable: circuit open")
        return keep(spec, self._written)


def run(
    store: RelayStore,
    encoder: TextEncoder,
    teacher: ScriptedTeacher,
    pushed: list[tuple[str, bytes]],
    *,
    dry_run: bool = False,
) -> SkillResult:
    learner = Learner(
        LearnSettings(min_cases=10, paraphrases=15),
        prefix="slm",
        store=store,
        encoders=[encoder],
        publish=lambda topic, payload: pushed.append((topic, payload)),
        skills={SKILL: SPEC},
        teacher=teacher,
        dry_run=dry_run,
    )
    (result,) = learner.run()
    return result


def test_a_fresh_skill_gets_its_first_head_from_the_paraphrases_before_any_case(
    store: RelayStore, encoder: TextEncoder
) -> None:
    teacher = ScriptedTeacher(WRITTEN)
    pushed: list[tuple[str, bytes]] = []
    result = run(store, encoder, teacher, pushed)
    assert result.action == "pushed", result
    assert (result.version, result.cases, result.paraphrases) == (1, 0, 30)
    # Checked on the six exemplars, each left out of both check fits in turn.
    assert result.held_out == 6
    assert result.accuracy_new is not None
    assert result.accuracy_old is not None
    assert result.accuracy_new >= result.accuracy_old
    ((_, payload),) = pushed
    wire = decode(SkillHead, payload)
    assert wire.version == 1
    assert wire.provenance.paraphrases == 30
    assert wire.provenance.cloud_labels == 0
    assert wire.provenance.skill_texts == len(skill_texts(SPEC)[0])
    head = Head.from_wire(wire)
    assert head.predict(encoder.embed(["switch the porch lamp off"])[0]).label == "lights_off"
    # Kept per version of the skill's text: the next run asks the cloud nothing.
    assert (
        len(store.paraphrases(SKILL, fingerprint(SPEC, 15, LearnSettings().paraphrase_temperature)))
        == 30
    )
    again = run(store, encoder, teacher, pushed)
    assert again.action == "skipped"
    assert "fewer than min_cases" in again.reason
    assert again.paraphrases == 30
    assert teacher.calls == 1
    assert len(pushed) == 1


def test_paraphrases_that_miss_the_exemplars_are_not_pushed(
    store: RelayStore, encoder: TextEncoder
) -> None:
    swapped = {"lights_on": WRITTEN["lights_off"], "lights_off": WRITTEN["lights_on"]}
    pushed: list[tuple[str, bytes]] = []
    result = run(store, encoder, ScriptedTeacher(swapped), pushed)
    assert_kept_as_worse(result, "exemplars")
    assert pushed == []
    assert store.latest_head(SKILL, encoder.name) is None


def test_a_dry_run_checks_and_pushes_nothing(store: RelayStore, encoder: TextEncoder) -> None:
    pushed: list[tuple[str, bytes]] = []
    result = run(store, encoder, ScriptedTeacher(WRITTEN), pushed, dry_run=True)
    assert result.action == "skipped"
    assert "would push version 1" in result.reason
    assert pushed == []
    assert store.latest_head(SKILL, encoder.name) is None


def test_a_failing_cloud_leaves_nothing_kept_and_is_asked_again(
    store: RelayStore, encoder: TextEncoder
) -> None:
    teacher = ScriptedTeacher(None)
    pushed: list[tuple[str, bytes]] = []
    result = run(store, encoder, teacher, pushed)
    assert (result.action, result.paraphrases) == ("skipped", 0)
    assert (
        store.paraphrases(SKILL, fingerprint(SPEC, 15, LearnSettings().paraphrase_temperature))
        == []
    )
    run(store, encoder, teacher, pushed)
    assert teacher.calls == 2
    assert pushed == []


def test_heads_fitted_on_cases_are_fitted_on_the_paraphrases_too(
    store: RelayStore, encoder: TextEncoder
) -> None:
    for i, (text, label) in enumerate(cases()):
        log_case(store, i, text, label)
    pushed: list[tuple[str, bytes]] = []
    result = run(store, encoder, ScriptedTeacher(WRITTEN), pushed)
    assert result.action == "pushed", result
    assert "held-out cases" in result.reason
    wire = decode(SkillHead, pushed[-1][1])
    assert wire.provenance.paraphrases == 30
    assert wire.provenance.cloud_labels == result.train > 0


def _settings(url: str, model: str, temperature: float = 1.0) -> RelaySettings:
    return RelaySettings.model_validate(
        {
            "llm": {"url": url, "model": model, "max_attempts": 1},
            "learn": {"paraphrases": 8, "paraphrase_temperature": temperature},
        }
    )


def test_the_cloud_writes_paraphrases_over_real_http(llm: LlmServer) -> None:
    # 2 each: 2 styles x 2 labels, 4 short calls a run, for time.
    teacher = CloudTeacher(_settings(llm.base_url, "smollm2-135m-instruct"))
    written = teacher.paraphrase(SKILL, SPEC, 2)
    assert written, "the served model wrote nothing usable"
    own = {t.lower() for t in skill_texts(SPEC)[0]}
    for p in written:
        assert p.label in SPEC.labels
        assert 0 < len(p.text) <= 120
        assert p.text.lower() not in own
    assert len({p.text.lower() for p in written}) == len(written)
    # Sampled under per-call seeds: the same skill text is written the same way again,
    # and not the way greedy decoding writes it.
    assert teacher.paraphrase(SKILL, SPEC, 2) == written
    greedy = CloudTeacher(_settings(llm.base_url, "smollm2-135m-instruct", temperature=0))
    assert greedy.paraphrase(SKILL, SPEC, 2) != written


def test_an_unreachable_cloud_is_reported_not_hidden() -> None:
    teacher = CloudTeacher(_settings(f"http://127.0.0.1:{free_port()}/v1", "any"))
    with pytest.raises(TeacherUnavailable):
        teacher.paraphrase(SKILL, SPEC, 4)
