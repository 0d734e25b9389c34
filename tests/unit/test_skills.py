"""Skills: the contract fields, built-in skills and their held-out split, TOML config,
the registry's layers, prompts and verbalizers, and intake's resolution of `skill`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.config import LimitSettings, load_settings
from agent.engine.engine import distinguishing_prefixes
from agent.engine.prompts import user_content
from agent.intake import Intake
from agent.jobs import Job
from agent.routing import ReplyRoute
from agent.skills import Skill, SkillRegistry, builtin_specs, parse_skill
from bench.eval_data import load_family, split, split_of
from edge_slm.contract import (
    DeviceConfig,
    ErrorCode,
    Request,
    Response,
    SkillSpec,
    default_verbalizer,
)
from edge_slm.mqtt import Inbound
from edge_slm.topics import DeviceTopics

GARAGE = {
    "description": "Garage door state",
    "labels": {
        "door_open": {"description": "the door is open", "exemplars": ["garage is open"]},
        "door_closed": {"verbalizer": "the door is shut", "exemplars": ["it's shut", "closed"]},
    },
}


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


# -- contract ----------------------------------------------------------------


def test_a_classify_request_may_name_a_skill_instead_of_labels() -> None:
    request = Request.model_validate(
        {"v": 1, "text": "lights on", "task": "classify", "skill": "home_intents"}
    )
    assert request.skill == "home_intents"
    assert request.labels is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"task": "classify"}, "requires 'labels' or 'skill'"),
        ({"task": "classify", "skill": "s", "labels": ["a", "b"]}, "not both"),
        ({"task": "answer", "skill": "s"}, "classify' only"),
        ({"task": "classify", "skill": "Home Intents"}, "pattern"),
        ({"task": "classify", "skill": ""}, "pattern"),
    ],
)
def test_skill_and_labels_are_validated(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Request.model_validate({"v": 1, "text": "x", **extra})


def test_inline_labels_still_work() -> None:
    request = Request.model_validate(
        {"v": 1, "text": "x", "task": "classify", "labels": ["a", "b"]}
    )
    assert request.labels == ["a", "b"]
    assert request.skill is None


def test_unknown_skill_is_a_typed_error_code() -> None:
    assert ErrorCode("unknown_skill") is ErrorCode.UNKNOWN_SKILL


@pytest.mark.parametrize(
    ("label", "words"),
    [("lights_on", "lights on"), ("set-timer", "set timer"), ("a__b", "a b"), ("x", "x")],
)
def test_default_verbalizer_spells_snake_case_as_words(label: str, words: str) -> None:
    assert default_verbalizer(label) == words


def test_a_skill_needs_two_labels_and_distinct_verbalizers() -> None:
    with pytest.raises(ValidationError, match="at least 2"):
        SkillSpec.model_validate({"labels": {"a": {}}})
    with pytest.raises(ValidationError, match="same verbalizer"):
        SkillSpec.model_validate({"labels": {"lights_on": {}, "on": {"verbalizer": "Lights  ON"}}})
    with pytest.raises(ValidationError, match="empty verbalizer"):
        SkillSpec.model_validate({"labels": {"_": {}, "b": {}}})


@pytest.mark.parametrize("off", ["head", "embedding"])
def test_a_skill_without_the_slm_needs_its_head(off: str) -> None:
    labels = {"a": {}, "b": {}}
    assert not SkillSpec.model_validate({"labels": labels, "slm": False}).slm
    with pytest.raises(ValidationError, match="`slm = false` needs `head` and `embedding`"):
        SkillSpec.model_validate({"labels": labels, "slm": False, off: False})


def test_device_config_carries_skills_and_rejects_bad_ones() -> None:
    config = DeviceConfig.model_validate(
        {"device_id": "d", "issued_at": 1.0, "skills": {"garage": GARAGE}}
    )
    assert config.skills is not None
    assert list(config.skills["garage"].labels) == ["door_open", "door_closed"]
    assert DeviceConfig.model_validate({"device_id": "d", "issued_at": 1.0}).skills is None
    with pytest.raises(ValidationError):
        DeviceConfig.model_validate(
            {"device_id": "d", "issued_at": 1.0, "skills": {"garage": {"labels": {"a": {}}}}}
        )


# -- skills, prompts, verbalizers --------------------------------------------


def test_verbalizers_map_label_names_to_words() -> None:
    skill = Skill.of("garage", SkillSpec.model_validate(GARAGE), "config")
    assert skill.labels == ["door_open", "door_closed"]
    assert skill.verbalizers == {"door_open": "door open", "door_closed": "the door is shut"}
    prompt = skill.prompt()
    assert prompt.choices == skill.verbalizers
    assert prompt.key == skill.fingerprint
    assert prompt.calibrate is True
    bare = skill.prompt(exemplars=False)  # for a model tuned on the skill
    assert bare.messages == tuple(skill.messages(exemplars=False))
    assert len(bare.messages) == 1
    assert len(prompt.messages) > 1
    assert bare.key != prompt.key  # its own kept prefix
    off = Skill.of("g", SkillSpec.model_validate(dict(GARAGE, calibrate=False)), "config")
    assert off.prompt().calibrate is False
    assert off.fingerprint != skill.fingerprint


def test_skill_messages_list_the_answers_and_interleave_exemplars() -> None:
    skill = Skill.of("garage", SkillSpec.model_validate(GARAGE), "config")
    system, *turns = skill.messages()
    assert system["role"] == "system"
    assert "- door open: the door is open" in system["content"]
    assert "- the door is shut" in system["content"]
    # first exemplar of every label, then the second: no label only at the end
    assert [(t["role"], t["content"]) for t in turns] == [
        ("user", "garage is open"),
        ("assistant", "door open"),
        ("user", "it's shut"),
        ("assistant", "the door is shut"),
        ("user", "closed"),
        ("assistant", "the door is shut"),
    ]


def test_fingerprint_follows_the_content() -> None:
    a = Skill.of("g", SkillSpec.model_validate(GARAGE), "config")
    b = Skill.of("g", SkillSpec.model_validate(GARAGE), "pushed")
    changed = dict(GARAGE, instructions="Be brief.")
    c = Skill.of("g", SkillSpec.model_validate(changed), "config")
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_distinguishing_prefixes_cut_each_choice_where_it_becomes_unique() -> None:
    end = 0
    choices = {
        "lights_on": [5, 6, 7, end],
        "lights_off": [5, 6, 8, end],
        "volume_up": [5, 9, end],
        "play": [4, end],
        "lock": [3, end],
        "lock_now": [3, 2, end],
    }
    assert distinguishing_prefixes(choices) == {
        "lights_on": [5, 6, 7],
        "lights_off": [5, 6, 8],
        "volume_up": [5, 9],
        "play": [4],
        "lock": [3, end],  # a prefix of another choice keeps its end token
        "lock_now": [3, 2],
    }


# -- built-in skills and the held-out split ------------------------------------


def test_builtin_skills_cover_the_eval_label_sets() -> None:
    specs = builtin_specs()
    assert set(specs) == {"home_intents", "sensor_state"}
    voice = load_family("voice")[0].request.labels
    sensor = load_family("sensor")[0].request.labels
    assert list(specs["home_intents"].labels) == voice
    assert list(specs["sensor_state"].labels) == sensor
    # dividing by the content-free prior collapses the sensor skill (BENCHMARKS.md)
    assert specs["home_intents"].calibrate is True
    assert specs["sensor_state"].calibrate is False
    for spec in specs.values():
        for name, label in spec.labels.items():
            assert label.description, name
            assert 2 <= len(label.exemplars) <= 4, name
    # verbalizers read as words, not snake_case
    for name, label in specs["home_intents"].labels.items():
        assert "_" not in label.words(name)


def test_split_is_deterministic_and_balanced() -> None:
    assert split_of("voice-001") == "dev"
    assert split_of("voice-005") == "heldout"
    for family in ("voice", "sensor"):
        items = load_family(family)
        held = split(items, "heldout")
        assert 0.35 < len(held) / len(items) < 0.65
        assert {i.id for i in held}.isdisjoint(i.id for i in split(items, "dev"))
        for item in items:
            assert split_of(item.id) == split_of(item.id)


@pytest.mark.parametrize(
    ("skill", "family"), [("home_intents", "voice"), ("sensor_state", "sensor")]
)
def test_builtin_exemplars_come_from_dev_and_never_from_heldout(skill: str, family: str) -> None:
    items = load_family(family)
    held = {_normal(user_content(i.request)) for i in split(items, "heldout")}
    dev = {_normal(user_content(i.request)): i.gold["label"] for i in split(items, "dev")}
    for name, label in builtin_specs()[skill].labels.items():
        for exemplar in label.exemplars:
            assert _normal(exemplar) not in held, exemplar
            assert dev.get(_normal(exemplar)) == name, f"{exemplar!r} is not a dev {name} item"


# -- TOML config and the registry ----------------------------------------------


def test_skills_load_from_the_agent_toml(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text(
        'device_id = "d1"\n'
        "[skills.garage]\n"
        'description = "Garage door state"\n'
        "[skills.garage.labels.door_open]\n"
        'description = "the door is open"\n'
        'exemplars = ["garage is open"]\n'
        "[skills.garage.labels.door_closed]\n"
        'verbalizer = "the door is shut"\n'
        'exemplars = ["it\'s shut", "closed"]\n'
    )
    settings = load_settings(toml)
    assert settings.skills["garage"] == SkillSpec.model_validate(GARAGE)
    registry = SkillRegistry(settings.skills, builtin=settings.builtin_skills)
    assert registry.names() == ["garage", "home_intents", "sensor_state"]
    assert SkillRegistry(settings.skills, builtin=False).names() == ["garage"]


def test_a_bad_skill_in_toml_is_a_config_error(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text('device_id = "d1"\n[skills.garage.labels.only_one]\ndescription = "x"\n')
    with pytest.raises(ValidationError, match="at least 2"):
        load_settings(toml)


def test_parse_skill_reads_the_builtin_format() -> None:
    spec = parse_skill('[labels.a]\ndescription = "A"\n[labels.b]\nverbalizer = "bee"\n')
    assert Skill.of("x", spec, "config").verbalizers == {"a": "a", "b": "bee"}


def test_pushed_skills_override_and_clear() -> None:
    registry = SkillRegistry({"garage": SkillSpec.model_validate(GARAGE)})
    builtin = registry.get("home_intents")
    assert builtin is not None
    assert builtin.origin == "builtin"
    new = SkillSpec.model_validate(dict(GARAGE, instructions="Pushed."))
    assert registry.set_pushed({"home_intents": new, "extra": new}) == ["extra", "home_intents"]
    pushed = registry.get("home_intents")
    assert pushed is not None
    assert pushed.origin == "pushed"
    assert pushed.labels == ["door_open", "door_closed"]
    assert registry.set_pushed({"home_intents": new, "extra": new}) == []  # no change
    assert registry.set_pushed({}) == ["extra", "home_intents"]
    restored = registry.get("home_intents")
    assert restored is not None
    assert restored.fingerprint == builtin.fingerprint
    assert registry.get("extra") is None


# -- intake --------------------------------------------------------------------

TOPICS = DeviceTopics("slm", "dev1")


class _Recorder:
    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.replies: list[Response] = []

    def submit(self, job: Job, _topic: str) -> bool:
        self.jobs.append(job)
        return True

    def send_reply(self, _route: ReplyRoute, response: Response) -> None:
        self.replies.append(response)


def _send(registry: SkillRegistry, body: dict[str, Any]) -> _Recorder:
    rec = _Recorder()
    intake = Intake(
        topics=TOPICS,
        limits=LimitSettings(),
        submit=rec.submit,
        queue_depth=lambda: 0,
        send_reply=rec.send_reply,
        skills=registry.get,
    )
    payload = json.dumps({"v": 1, "task": "classify", "text": "lights on", **body}).encode()
    intake.on_message(Inbound(topic=TOPICS.request, payload=payload, qos=1, retain=False))
    return rec


def test_intake_resolves_a_skill_into_the_job_with_its_labels() -> None:
    registry = SkillRegistry()
    rec = _send(registry, {"id": "r1", "skill": "home_intents"})
    assert rec.replies == []
    (job,) = rec.jobs
    skill = registry.get("home_intents")
    assert job.skill is skill
    assert skill is not None
    # the label set travels on, e.g. into an escalation for the relay to check against
    assert job.request.labels == skill.labels
    assert job.request.skill == "home_intents"


def test_intake_answers_an_unknown_skill_with_a_typed_error() -> None:
    rec = _send(SkillRegistry(), {"id": "r2", "skill": "no_such_skill"})
    assert rec.jobs == []
    (reply,) = rec.replies
    assert reply.error is not None
    assert reply.id == "r2"
    assert reply.error.code is ErrorCode.UNKNOWN_SKILL
    assert "no_such_skill" in reply.error.message


def test_intake_keeps_inline_labels_without_a_skill() -> None:
    rec = _send(SkillRegistry(), {"id": "r3", "labels": ["on", "off"]})
    (job,) = rec.jobs
    assert job.skill is None
    assert job.request.labels == ["on", "off"]


def test_the_readme_example_config_has_a_valid_skill(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    start = readme.index("# /etc/edge-slm/agent.toml")
    toml = tmp_path / "agent.toml"
    toml.write_text(readme[start : readme.index("```", start)])
    settings = load_settings(toml)
    garage = Skill.of("garage", settings.skills["garage"], "config")
    assert garage.verbalizers == {
        "door_open": "the door is open",
        "door_closed": "the door is closed",
    }
    assert settings.builtin_skills is True
