"""The agent's intake of pushed heads (agent/heads.py), per encoder, without a broker:
what it subscribes to, which topics it takes, and what it applies or refuses. The
broker round trip is tests/integration/test_skill_head_push.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
import structlog

from agent.heads import HeadIntake
from agent.skills import SkillRegistry
from edge_slm.contract.skills import SkillHead
from edge_slm.head import fit_head
from edge_slm.mqtt import Inbound
from edge_slm.topics import skill_head, skill_head_filter

SKILL = "home_intents"
MINE, OTHER = "minilm-l6-v2-int8", "mpnet-base-v2-int8"


def head_for(registry: SkillRegistry, *, embedder: str, version: int) -> SkillHead:
    skill = registry.get(SKILL)
    assert skill is not None
    labels = list(skill.labels)
    rng = np.random.default_rng(version)
    vectors = rng.normal(size=(len(labels) * 3, 16)).astype(np.float32)
    head = fit_head(vectors, labels * 3, labels, calibrate=False)
    return head.to_wire(skill=SKILL, version=version, embedder=embedder)


def message(topic: str, wire: SkillHead | bytes) -> Inbound:
    payload = wire if isinstance(wire, bytes) else wire.to_wire()
    return Inbound(topic=topic, payload=payload, qos=1, retain=True)


@pytest.fixture
def registry() -> SkillRegistry:
    return SkillRegistry()


@pytest.fixture
def applied() -> threading.Event:
    return threading.Event()


@pytest.fixture
def intake(registry: SkillRegistry, applied: threading.Event) -> Iterator[HeadIntake]:
    heads = HeadIntake(registry, prefix="slm", embedder=MINE, on_applied=applied.set)
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
    heads = HeadIntake(registry, prefix="slm", embedder=None)
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
