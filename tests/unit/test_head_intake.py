"""The agent's intake of pushed heads (agent/heads.py), per encoder, without a broker:
what it subscribes to, which topics it takes, and what it applies or refuses, for
skills and for label sets that requests list themselves (agent/skills/label_heads.py).
The broker round trip is tests/integration/test_skill_head_push.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import structlog

from agent.heads import HeadIntake
from agent.skills import SkillRegistry
from agent.skills.label_heads import LabelHeads
from edge_slm.contract import WireError, decode
from edge_slm.contract.skills import SkillHead, label_set_name
from edge_slm.head import Head, HeadRejected, fit_head
from edge_slm.mqtt import Inbound
from edge_slm.topics import skill_head, skill_head_filter

SKILL = "home_intents"
MINE, OTHER = "minilm-l6-v2-int8", "mpnet-base-v2-int8"
#: A label set as an app lists it, and its name.
DOOR = ["unlock", "lock", "open_garage"]
DOOR_SET = label_set_name(DOOR)


def fitted(labels: list[str], *, version: int) -> Head:
    rng = np.random.default_rng(version)
    vectors = rng.normal(size=(len(labels) * 3, 16)).astype(np.float32)
    return fit_head(vectors, labels * 3, labels, calibrate=False)


def head_for(registry: SkillRegistry, *, embedder: str, version: int) -> SkillHead:
    skill = registry.get(SKILL)
    assert skill is not None
    head = fitted(list(skill.labels), version=version)
    return head.to_wire(skill=SKILL, version=version, embedder=embedder)


def set_head_for(labels: list[str], *, version: int, embedder: str = MINE) -> SkillHead:
    """A label set's head, its labels in the relay's (sorted) order."""
    head = fitted(sorted(labels), version=version)
    return head.to_wire(skill=label_set_name(labels), version=version, embedder=embedder)


def message(topic: str, wire: SkillHead | bytes) -> Inbound:
    payload = wire if isinstance(wire, bytes) else wire.to_wire()
    return Inbound(topic=topic, payload=payload, qos=1, retain=True)


@pytest.fixture
def registry() -> SkillRegistry:
    return SkillRegistry()


@pytest.fixture
def label_heads() -> LabelHeads:
    return LabelHeads()


@pytest.fixture
def applied() -> threading.Event:
    return threading.Event()


@pytest.fixture
def intake(
    registry: SkillRegistry, label_heads: LabelHeads, applied: threading.Event
) -> Iterator[HeadIntake]:
    heads = HeadIntake(registry, label_heads, prefix="slm", embedder=MINE, on_applied=applied.set)
    heads.start()
    yield heads
    heads.stop()


def test_an_agent_takes_its_own_encoders_heads_only(intake: HeadIntake) -> None:
    assert intake.subscription == skill_head_filter("slm", MINE)
    assert intake.takes(skill_head("slm", SKILL, MINE))
    assert intake.takes(skill_head("slm", "any_skill", MINE))
    assert not intake.takes(skill_head("slm", SKILL, OTHER))
    assert not intake.takes(f"slm/_skills/{SKILL}/head")  # the topic before heads per encoder
    assert not intake.takes("slm/dev-1/config")


def test_without_an_encoder_an_agent_takes_no_heads(registry: SkillRegistry) -> None:
    heads = HeadIntake(registry, LabelHeads(), prefix="slm", embedder=None)
    assert heads.subscription is None
    assert not heads.takes(skill_head("slm", SKILL, MINE))
    with structlog.testing.capture_logs() as logs:
        heads.on_message(
            message(skill_head("slm", SKILL, MINE), head_for(registry, embedder=MINE, version=1))
        )
    assert [e["error"] for e in logs if e["event"] == "head_rejected"] == ["topic mismatch"]


def test_its_encoders_head_is_applied(
    intake: HeadIntake, registry: SkillRegistry, applied: threading.Event
) -> None:
    wire = head_for(registry, embedder=MINE, version=3)
    intake.on_message(message(skill_head("slm", SKILL, MINE), wire))
    assert applied.wait(5)
    assert registry.head_version(SKILL) == 3


def test_a_head_on_another_skills_or_encoders_topic_is_refused(
    intake: HeadIntake, registry: SkillRegistry
) -> None:
    wire = head_for(registry, embedder=MINE, version=1)
    with structlog.testing.capture_logs() as logs:
        intake.on_message(message(skill_head("slm", "sensor_state", MINE), wire))
        intake.on_message(message(skill_head("slm", SKILL, OTHER), wire))
    rejected = [e for e in logs if e["event"] == "head_rejected"]
    assert [e["error"] for e in rejected] == ["topic mismatch", "topic mismatch"]
    assert registry.head_version(SKILL) == 0


def test_a_head_made_for_another_encoder_is_refused_on_its_thread(
    intake: HeadIntake, registry: SkillRegistry
) -> None:
    # Published on this encoder's topic, but the payload says it reads another's vectors.
    wire = head_for(registry, embedder=OTHER, version=2)
    with structlog.testing.capture_logs() as logs:
        assert not intake.apply(wire)
    (rejected,) = [e for e in logs if e["event"] == "head_rejected"]
    assert OTHER in rejected["error"]
    assert MINE in rejected["error"]
    assert registry.head_version(SKILL) == 0


def test_a_label_sets_head_is_applied_for_that_set_in_any_order(
    intake: HeadIntake, label_heads: LabelHeads, applied: threading.Event
) -> None:
    intake.on_message(message(skill_head("slm", DOOR_SET, MINE), set_head_for(DOOR, version=2)))
    assert applied.wait(5)
    assert label_heads.versions() == {DOOR_SET: 2}
    found = label_heads.for_labels(["open_garage", "unlock", "lock"])
    assert found is not None
    assert found[1] == 2
    assert label_heads.for_labels(["unlock", "lock"]) is None


def test_a_label_sets_head_is_kept_per_version(intake: HeadIntake, label_heads: LabelHeads) -> None:
    assert intake.apply(set_head_for(DOOR, version=2))
    with structlog.testing.capture_logs() as logs:
        assert not intake.apply(set_head_for(DOOR, version=2))  # the retained copy again
    assert [e["event"] for e in logs] == ["head_current"]
    assert intake.apply(set_head_for(DOOR, version=5))
    assert label_heads.version(DOOR_SET) == 5


def test_a_label_set_name_must_be_its_labels_hash() -> None:
    # The wire check: a head cannot claim a label set whose labels it does not classify.
    wire = json.loads(set_head_for(DOOR, version=1).to_wire())
    assert decode(SkillHead, json.dumps(wire).encode()).skill == DOOR_SET
    with pytest.raises(WireError, match="is not the name of the labels"):
        decode(SkillHead, json.dumps(wire | {"skill": label_set_name(["a", "b"])}).encode())
    # Nor a name of another shape under the label sets' prefix.
    with pytest.raises(WireError):
        decode(SkillHead, json.dumps(wire | {"skill": "_labels-xyz"}).encode())


def test_the_label_set_store_keeps_the_most_recently_used() -> None:
    kept = LabelHeads(kept=2)
    sets = [["a", "b"], ["c", "d"], ["e", "f"]]
    kept.set_head(label_set_name(sets[0]), fitted(sets[0], version=1), 1)
    kept.set_head(label_set_name(sets[1]), fitted(sets[1], version=1), 1)
    assert kept.for_labels(sets[0]) is not None  # used: the second is now the oldest
    with structlog.testing.capture_logs() as logs:
        kept.set_head(label_set_name(sets[2]), fitted(sets[2], version=1), 1)
    assert [e["label_set"] for e in logs if e["event"] == "label_head_dropped"] == [
        label_set_name(sets[1])
    ]
    assert sorted(kept.versions()) == sorted(label_set_name(s) for s in (sets[0], sets[2]))
    with pytest.raises(HeadRejected, match="are not the label set"):
        kept.set_head(label_set_name(sets[0]), fitted(sets[1], version=2), 2)
