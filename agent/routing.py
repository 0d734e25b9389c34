"""Where a reply goes (MQTT 5 spec §4.10 request/response).

1. The request's MQTT v5 Response Topic, echoing its Correlation Data: stock
   ``mosquitto_rr -V mqttv5`` works unchanged.
2. Else the payload's ``reply_to`` (for MQTT 3.1.1 clients).
3. Else ``<prefix>/<device_id>/response``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edge_slm.mqtt import Inbound
from edge_slm.topics import DeviceTopics, is_plain_topic


@dataclass(frozen=True, slots=True)
class ReplyRoute:
    topic: str
    correlation_data: bytes | None = None


def _plain_topic(value: Any) -> str | None:
    # The rule Request.reply_to is validated with, applied to unvalidated input.
    return value if is_plain_topic(value) else None


def route_for(msg: Inbound, topics: DeviceTopics, payload: Any = None) -> ReplyRoute:
    """Pick the reply route; ``payload`` is the decoded JSON object when there is one.

    Works on a raw dict too, so that a request that fails validation still gets
    its error reply where the app is listening.
    """
    response_topic = _allowed(_plain_topic(msg.response_topic), topics)
    if response_topic:
        return ReplyRoute(response_topic, msg.correlation_data)
    raw_reply_to = payload.get("reply_to") if isinstance(payload, dict) else None
    reply_to = _allowed(_plain_topic(raw_reply_to), topics)
    return ReplyRoute(reply_to or topics.response, msg.correlation_data)


def _allowed(topic: str | None, topics: DeviceTopics) -> str | None:
    """Refuse replies into this device's own namespace (other than ``response``).

    Otherwise a requester could make the agent publish under its identity on
    its request, escalation, cloud or status topics.
    """
    if topic is None:
        return None
    if topic.startswith(topics.base + "/") and topic != topics.response:
        return None
    try:
        topic.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return topic
