"""Parse and check inbound escalations (runs on paho's network thread: cheap only).

Identity rule: the device id in the topic, in the payload and in the MQTT v5
user property ``device_id`` must all agree. Whatever happens, the relay
answers only on the cloud topic of the device named by the TOPIC, which the
broker's ACLs tie to the publishing client, never on one derived from content.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from edge_slm.contract import Escalation, WireError, decode, load_object
from edge_slm.mqtt import Inbound
from edge_slm.topics import DeviceTopics, device_of

DEVICE_ID_PROPERTY = "device_id"


class IdentityMismatch(WireError):
    """The device ids of topic, payload and user property disagree."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """One inbound escalation, parsed (or refused), ready for a worker."""

    topics: DeviceTopics  # from the topic: the only place replies go
    request_id: str | None
    correlation_data: bytes | None
    received_at: float  # wall clock, for the log
    received_mono: float  # monotonic, for latency and deadlines
    escalation: Escalation | None
    problem: WireError | None
    payload_size: int

    @property
    def device_id(self) -> str:
        return self.topics.device_id


def _request_id(data: object, correlation: bytes | None) -> str | None:
    if isinstance(data, dict):
        rid = data.get("id")
        if isinstance(rid, str) and 0 < len(rid) <= 128:
            return rid
    if correlation:
        try:
            text = correlation.decode()
        except UnicodeDecodeError:
            return None
        if 0 < len(text) <= 128:
            return text
    return None


def _validate(data: dict[str, Any], topic_device: str, props: dict[str, str]) -> Escalation:
    esc = decode(Escalation, data)
    prop = props.get(DEVICE_ID_PROPERTY)
    if esc.device_id != topic_device or prop != topic_device:
        raise IdentityMismatch(
            f"device id mismatch: topic {topic_device!r}, payload {esc.device_id!r}, "
            f"user property {prop!r}"
        )
    return esc


def parse_inbound(msg: Inbound, prefix: str) -> Envelope | None:
    """The envelope for ``msg``, or None when its topic names no valid device."""
    device = device_of(msg.topic, prefix)
    if device is None:
        return None
    try:
        topics = DeviceTopics(prefix, device)
    except ValueError:
        return None
    data: dict[str, Any] | None = None
    problem: WireError | None = None
    escalation: Escalation | None = None
    try:
        data = load_object(msg.payload)
        escalation = _validate(data, device, dict(msg.user_properties))
    except WireError as exc:
        problem = exc
    return Envelope(
        topics=topics,
        request_id=_request_id(data, msg.correlation_data),
        correlation_data=msg.correlation_data,
        received_at=time.time(),
        received_mono=time.monotonic(),
        escalation=escalation,
        problem=problem,
        payload_size=len(msg.payload),
    )
