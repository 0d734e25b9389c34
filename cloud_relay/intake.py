"""Parse and check inbound escalations (runs on paho's network thread: cheap only).

Identity rule: the device id in the topic, in the payload and in the MQTT v5
user property ``device_id`` must all agree. Whatever happens, the relay
answers only on the cloud topic of the device named by the TOPIC, which the
broker's ACLs tie to the publishing client, never on one derived from content.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from pydantic import ValidationError

from edge_slm.contract import WIRE_VERSION, ErrorCode, Escalation
from edge_slm.mqtt import Inbound
from edge_slm.topics import DeviceTopics, device_of

DEVICE_ID_PROPERTY = "device_id"


class InvalidEscalation(Exception):
    """An escalation the relay refuses; ``code`` goes on the wire."""

    code: ErrorCode = ErrorCode.INVALID_REQUEST

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        if code is not None:
            self.code = code
        super().__init__(message)


class UnsupportedVersion(InvalidEscalation):
    code = ErrorCode.UNSUPPORTED_VERSION


class IdentityMismatch(InvalidEscalation):
    code = ErrorCode.INVALID_REQUEST


@dataclass(frozen=True, slots=True)
class Envelope:
    """One inbound escalation, parsed (or refused), ready for a worker."""

    topics: DeviceTopics  # from the topic: the only place replies go
    request_id: str | None
    correlation_data: bytes | None
    received_at: float  # wall clock, for the log
    received_mono: float  # monotonic, for latency and deadlines
    escalation: Escalation | None
    problem: InvalidEscalation | None
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


def _validate(data: object, topic_device: str, props: dict[str, str]) -> Escalation:
    if not isinstance(data, dict):
        raise InvalidEscalation("payload must be a JSON object")
    if data.get("v", WIRE_VERSION) != WIRE_VERSION:
        raise UnsupportedVersion(f"contract version {data.get('v')!r} is not {WIRE_VERSION}")
    try:
        esc = Escalation.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise InvalidEscalation(f"invalid escalation: {where}: {first['msg']}") from exc
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
    data: object = None
    problem: InvalidEscalation | None = None
    escalation: Escalation | None = None
    try:
        data = json.loads(msg.payload.decode("utf-8"))
    except UnicodeDecodeError:
        problem = InvalidEscalation("payload is not UTF-8", code=ErrorCode.INVALID_UTF8)
    except ValueError:
        problem = InvalidEscalation("payload is not JSON", code=ErrorCode.INVALID_JSON)
    if problem is None:
        try:
            escalation = _validate(data, device, dict(msg.user_properties))
        except InvalidEscalation as exc:
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
