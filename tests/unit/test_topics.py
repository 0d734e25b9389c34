"""Topic names (edge_slm.topics): built in one place, never with wildcards or `/` in segments."""

from __future__ import annotations

import dataclasses

import pytest

from edge_slm.topics import (
    LEAVES,
    DeviceTopics,
    device_of,
    escalation_subscription,
    fleet_filter,
    matches,
    shared,
    skill_head,
    skill_head_filter,
    status_wildcard,
)


def test_device_topics_names() -> None:
    topics = DeviceTopics("slm", "kitchen-pi")
    assert topics.base == "slm/kitchen-pi"
    assert topics.request == "slm/kitchen-pi/request"
    assert topics.response == "slm/kitchen-pi/response"
    assert topics.status == "slm/kitchen-pi/status"
    assert topics.escalation == "slm/kitchen-pi/escalation"
    assert topics.cloud == "slm/kitchen-pi/cloud"


def test_all_lists_every_topic_by_role() -> None:
    topics = DeviceTopics("slm", "kitchen-pi")
    assert topics.all() == {
        "request": "slm/kitchen-pi/request",
        "response": "slm/kitchen-pi/response",
        "status": "slm/kitchen-pi/status",
        "escalation": "slm/kitchen-pi/escalation",
        "cloud": "slm/kitchen-pi/cloud",
        "telemetry": "slm/kitchen-pi/telemetry",
        "config": "slm/kitchen-pi/config",
        "model": "slm/kitchen-pi/model",
    }
    assert len(set(topics.all().values())) == len(topics.all())


def test_device_topics_are_distinct_per_device() -> None:
    a, b = DeviceTopics("slm", "a"), DeviceTopics("slm", "b")
    assert set(a.all().values()).isdisjoint(b.all().values())


@pytest.mark.parametrize(
    "segment",
    ["", "a/b", "/", "+", "a+", "#", "a#", "$SYS", "$", "a\x00b"],
    ids=repr,
)
@pytest.mark.parametrize("which", ["prefix", "device_id"])
def test_bad_segments_are_rejected(which: str, segment: str) -> None:
    fields = {"prefix": "slm", "device_id": "dev"} | {which: segment}
    with pytest.raises(ValueError, match="topic segment"):
        DeviceTopics(**fields)


@pytest.mark.parametrize("segment", ["a$", "dev-01", "kitchen_pi", "Küche", "a.b", "a b"])
def test_ordinary_segments_are_accepted(segment: str) -> None:
    topics = DeviceTopics(segment, segment)
    assert topics.request == f"{segment}/{segment}/request"


def test_device_topics_are_frozen() -> None:
    topics = DeviceTopics("slm", "dev")
    with pytest.raises(dataclasses.FrozenInstanceError):
        topics.device_id = "other"  # type: ignore[misc]


def test_status_wildcard() -> None:
    assert status_wildcard("slm") == "slm/+/status"


def test_status_wildcard_matches_device_status_topics() -> None:
    pattern = status_wildcard("slm").split("/")
    for device in ("a", "kitchen-pi"):
        levels = DeviceTopics("slm", device).status.split("/")
        assert len(levels) == len(pattern)
        assert all(p in ("+", level) for p, level in zip(pattern, levels, strict=True))


@pytest.mark.parametrize("prefix", ["", "a/b", "+", "#", "$SYS"])
def test_status_wildcard_rejects_bad_prefixes(prefix: str) -> None:
    with pytest.raises(ValueError, match="topic segment"):
        status_wildcard(prefix)


# -- the relay's side --------------------------------------------------------


def test_escalation_subscription_without_group() -> None:
    assert escalation_subscription("slm", None) == "slm/+/escalation"


def test_escalation_subscription_with_group_is_shared() -> None:
    # MQTT 5 §4.8.2: $share/<ShareName>/<TopicFilter>.
    assert escalation_subscription("slm", "relays") == "$share/relays/slm/+/escalation"


@pytest.mark.parametrize("group", [None, "relays"])
def test_escalation_subscription_matches_every_device_escalation(group: str | None) -> None:
    pattern = escalation_subscription("slm", group).split("/")
    if group:
        assert pattern[:2] == ["$share", group]
        pattern = pattern[2:]
    for device in ("a", "kitchen-pi"):
        topics = DeviceTopics("slm", device)
        assert _matches(pattern, topics.escalation)
        for other in set(topics.all().values()) - {topics.escalation}:
            assert not _matches(pattern, other), other
    assert not _matches(pattern, DeviceTopics("other", "a").escalation)


def _matches(pattern: list[str], topic: str) -> bool:
    levels = topic.split("/")
    return len(levels) == len(pattern) and all(
        p in ("+", level) for p, level in zip(pattern, levels, strict=True)
    )


@pytest.mark.parametrize("group", ["a/b", "+", "#", "$share", "g\x00"], ids=repr)
def test_escalation_subscription_rejects_bad_groups(group: str) -> None:
    with pytest.raises(ValueError, match="group"):
        escalation_subscription("slm", group)


@pytest.mark.parametrize("prefix", ["", "a/b", "+", "#", "$SYS"])
def test_escalation_subscription_rejects_bad_prefixes(prefix: str) -> None:
    for group in (None, "relays"):
        with pytest.raises(ValueError, match="prefix"):
            escalation_subscription(prefix, group)


@pytest.mark.parametrize("device", ["a", "kitchen-pi", "Küche"])
def test_device_of_inverts_device_topics(device: str) -> None:
    for topic in DeviceTopics("slm", device).all().values():
        assert device_of(topic, "slm") == device


@pytest.mark.parametrize(
    "topic",
    [
        "other/kitchen-pi/escalation",  # another prefix
        "slm/kitchen-pi",  # too short
        "slm",
        "",
        "slm/kitchen-pi/escalation/extra",  # too long
        "slm/a/b/escalation",  # a device id cannot contain /
        "$share/relays/slm/kitchen-pi/escalation",  # a filter, not a topic name
    ],
)
def test_device_of_rejects_other_topics(topic: str) -> None:
    assert device_of(topic, "slm") is None


def test_fleet_filter_covers_device_topics_only() -> None:
    assert fleet_filter("slm", "telemetry") == "slm/+/telemetry"
    assert set(DeviceTopics("slm", "d").all()) == set(LEAVES)
    with pytest.raises(ValueError, match="not a device topic"):
        fleet_filter("slm", "health")


def test_shared_subscription_is_built_once() -> None:
    assert shared("relays", fleet_filter("slm", "telemetry")) == "$share/relays/slm/+/telemetry"
    assert escalation_subscription("slm", "g") == shared("g", fleet_filter("slm", "escalation"))
    with pytest.raises(ValueError, match="group"):
        shared("a/b", "slm/+/telemetry")


def test_skill_heads_are_per_encoder_fleet_wide_and_never_a_device_topic() -> None:
    minilm = skill_head("slm", "home_intents", "minilm-l6-v2-int8")
    assert minilm == "slm/_skills/home_intents/head/minilm-l6-v2-int8"
    # A device takes its own encoder's heads; the ACLs and bridges grant every encoder's.
    assert matches(skill_head_filter("slm", "minilm-l6-v2-int8"), minilm)
    assert not matches(
        skill_head_filter("slm", "minilm-l6-v2-int8"),
        skill_head("slm", "home_intents", "mpnet-base-v2-int8"),
    )
    assert matches(skill_head_filter("slm"), minilm)
    for leaf in LEAVES:  # five levels: no device filter matches a head
        assert not matches(fleet_filter("slm", leaf), skill_head("slm", "x", "e"))
    with pytest.raises(ValueError, match="skill"):
        skill_head("slm", "a/b", "e")
    for bad in ("a/b", "+", "#", "$e", ""):
        with pytest.raises(ValueError, match="encoder"):
            skill_head("slm", "x", bad)
        with pytest.raises(ValueError, match="encoder"):
            skill_head_filter("slm", bad)
