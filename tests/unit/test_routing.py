import pytest
from pydantic import ValidationError

from agent.routing import ReplyRoute, route_for
from edge_slm.contract import Request
from edge_slm.mqtt import Inbound
from edge_slm.topics import DeviceTopics, is_plain_topic

TOPICS = DeviceTopics("slm", "dev1")


def _msg(response_topic: str | None = None, corr: bytes | None = None) -> Inbound:
    return Inbound(
        topic=TOPICS.request,
        payload=b"{}",
        qos=1,
        retain=False,
        response_topic=response_topic,
        correlation_data=corr,
    )


def test_v5_response_topic_wins_and_correlation_is_kept() -> None:
    route = route_for(_msg("app/r", b"\x01"), TOPICS, {"reply_to": "other"})
    assert route == ReplyRoute("app/r", b"\x01")


def test_reply_to_used_without_response_topic() -> None:
    assert route_for(_msg(), TOPICS, {"reply_to": "app/r2"}) == ReplyRoute("app/r2", None)


def test_default_response_topic() -> None:
    assert route_for(_msg(), TOPICS, {"v": 1}).topic == "slm/dev1/response"
    assert route_for(_msg(), TOPICS).topic == "slm/dev1/response"


def test_wildcards_and_system_topics_are_never_reply_targets() -> None:
    for bad in ("app/#", "app/+/r", "$SYS/broker", "", 42):
        assert route_for(_msg(), TOPICS, {"reply_to": bad}).topic == "slm/dev1/response"
    assert route_for(_msg("a/#"), TOPICS).topic == "slm/dev1/response"


@pytest.mark.parametrize(
    "reply_to",
    ["app/r", "a", "x" * 512, "x" * 513, "app/#", "app/+/r", "$SYS/broker", "a\x00b", ""],
)
def test_reply_to_rule_is_the_contracts(reply_to: str) -> None:
    # One rule (edge_slm.topics.is_plain_topic) for the validator and the router.
    try:
        Request.model_validate({"v": 1, "text": "a", "reply_to": reply_to})
        valid = True
    except ValidationError:
        valid = False
    routed = route_for(_msg(), TOPICS, {"reply_to": reply_to}).topic == reply_to
    assert valid == routed == is_plain_topic(reply_to)
