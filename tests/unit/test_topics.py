"""Topic names (edge_slm.topics): built in one place, never with wildcards or `/` in segments."""

from __future__ import annotations

import dataclasses

import pytest

from edge_slm.topics import DeviceTopics, status_wildcard


def test_device_topics_names() -> None:
    topics = DeviceTopics("slm", "kitchen-pi")
    assert topics.base == "slm/kitchen-pi"
    assert topics.request == "slm/kitchen-pi/request"
    assert topics.response == "slm/kitchen-pi/response"
    assert topics.status == "slm/kitchen-pi/status"


def test_device_topics_are_distinct_per_device() -> None:
    a, b = DeviceTopics("slm", "a"), DeviceTopics("slm", "b")
    assert {a.request, a.response, a.status}.isdisjoint({b.request, b.response, b.status})


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
