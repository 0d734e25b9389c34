"""Every MQTT topic name is built here, from a prefix and a device id.

Nobody formats topic strings inline elsewhere: one place to change, one place
to validate (MQTT 5 spec §4.7: topic names carry no wildcards; we also keep
``/`` out of the segments so a device can never speak for another one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeGuard

_FORBIDDEN = set("/+#\x00")
#: The last segment of each device topic, ``<prefix>/<device_id>/<leaf>``.
LEAVES = ("request", "response", "status", "escalation", "cloud", "telemetry", "config", "model")
#: Longest topic name a payload may name (``reply_to``); the spec allows 65535 bytes.
MAX_TOPIC_LENGTH = 512


def _check_segment(what: str, value: str) -> str:
    if not value or any(ch in _FORBIDDEN for ch in value) or value.startswith("$"):
        raise ValueError(f"{what} {value!r} must be a non-empty topic segment without / + # $")
    return value


def is_plain_topic(value: object) -> TypeGuard[str]:
    """Whether ``value`` may be a reply topic named in a payload (``reply_to``).

    MQTT 5 §4.7.1: no wildcards in topic names; §1.5.4: no U+0000 in strings;
    §4.7.2: ``$`` topics belong to the broker.
    """
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_TOPIC_LENGTH
        and not set(value) & {"+", "#", "\x00"}
        and not value.startswith("$")
    )


@dataclass(frozen=True, slots=True)
class DeviceTopics:
    """The topics of one device under one prefix."""

    prefix: str
    device_id: str

    def __post_init__(self) -> None:
        _check_segment("prefix", self.prefix)
        _check_segment("device id", self.device_id)

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device_id}"

    @property
    def request(self) -> str:
        """Apps publish requests here."""
        return f"{self.base}/request"

    def request_filter(self) -> str:
        """What the agent subscribes to: ``request`` and per-app sub-topics below it.

        MQTT 5 §4.7.1.2: ``x/#`` also matches ``x`` itself, so one subscription
        serves both without duplicate deliveries.
        """
        return f"{self.request}/#"

    @property
    def response(self) -> str:
        """Default reply topic when the request names none."""
        return f"{self.base}/response"

    @property
    def status(self) -> str:
        """Retained birth/will."""
        return f"{self.base}/status"

    @property
    def escalation(self) -> str:
        """Agent -> relay: cases for the cloud LLM."""
        return f"{self.base}/escalation"

    @property
    def cloud(self) -> str:
        """Relay -> agent: cloud answers."""
        return f"{self.base}/cloud"

    @property
    def telemetry(self) -> str:
        """Agent -> fleet: periodic counters and unit economics."""
        return f"{self.base}/telemetry"

    @property
    def config(self) -> str:
        """Relay -> agent, retained: run-time settings (thresholds, shadow rate)."""
        return f"{self.base}/config"

    @property
    def model(self) -> str:
        """Relay -> agent, retained: the desired model (over-the-air update)."""
        return f"{self.base}/model"

    def all(self) -> dict[str, str]:
        """Every topic of this device by role (the AsyncAPI document lists the same)."""
        return {leaf: getattr(self, leaf) for leaf in LEAVES}


def fleet_filter(prefix: str, leaf: str) -> str:
    """``<prefix>/+/<leaf>``: one topic of every device (relay and fleet subscriptions, ACLs)."""
    if leaf not in LEAVES:
        raise ValueError(f"{leaf!r} is not a device topic (one of {', '.join(LEAVES)})")
    return f"{_check_segment('prefix', prefix)}/+/{leaf}"


def shared(group: str, topic_filter: str) -> str:
    """``topic_filter`` taken through the share group ``group``.

    MQTT 5 §4.8.2 shared subscriptions: the broker hands each message to one
    member of the group, so N relay processes split the load.
    """
    return f"$share/{_check_segment('group', group)}/{topic_filter}"


def escalation_subscription(prefix: str, group: str | None) -> str:
    """What relays subscribe to: every device's escalations, shared by ``group``."""
    topic = fleet_filter(prefix, "escalation")
    return shared(group, topic) if group is not None else topic


def device_of(topic: str, prefix: str) -> str | None:
    """The device id segment of ``<prefix>/<device_id>/<leaf>``, or None."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != prefix or not parts[1]:
        return None
    return parts[1]


def telemetry_wildcard(prefix: str) -> str:
    """Subscription matching every device's telemetry topic (the relay's fleet view)."""
    return fleet_filter(prefix, "telemetry")


def status_wildcard(prefix: str) -> str:
    """Subscription matching every device's status topic (fleet views)."""
    return fleet_filter(prefix, "status")


def relay_status(prefix: str, relay_id: str) -> str:
    """Relay -> agents: ``{"relay_id", "state"}``, ``online`` on each connect, ``offline``
    at a stop (or as its will).

    Not retained: it is an event (agents re-send their outbox when a relay comes
    online), and a relay's id dies with its process. Four levels,
    ``<prefix>/_relays/<relay_id>/status``, so no device filter
    (``<prefix>/+/<leaf>``) ever matches it.
    """
    relay = _check_segment("relay id", relay_id)
    return f"{_check_segment('prefix', prefix)}/_relays/{relay}/status"


def relay_status_filter(prefix: str) -> str:
    """What agents subscribe to: every relay's status (one coming online re-sends the outbox)."""
    return f"{_check_segment('prefix', prefix)}/_relays/+/status"


def skill_head(prefix: str, skill: str, encoder: str) -> str:
    """Relay -> agents, retained: the skill's classify head for one sentence encoder,
    learned from the cloud's labels (``SkillHead``, ``cloud-relay learn``); only relays
    may publish it.

    ``<prefix>/_skills/<skill>/head/<encoder>``: a head fits the vectors of one encoder,
    so a fleet that mixes encoders gets one head per (skill, encoder), and each device
    subscribes to its own encoder's only. Five levels under ``_skills``, so no device
    filter (``<prefix>/+/<leaf>``) ever matches it.
    """
    name, which = _check_segment("skill", skill), _check_segment("encoder", encoder)
    return f"{_check_segment('prefix', prefix)}/_skills/{name}/head/{which}"


def skill_head_filter(prefix: str, encoder: str | None = None) -> str:
    """Every skill's head for ``encoder`` (what an agent on it subscribes to; it ignores
    skills it lacks), or for every encoder when None (the brokers' ACLs, bridges)."""
    which = "+" if encoder is None else _check_segment("encoder", encoder)
    return f"{_check_segment('prefix', prefix)}/_skills/+/head/{which}"


def matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches an MQTT filter with ``+`` and ``#`` (MQTT 5 §4.7)."""
    filter_parts = topic_filter.split("/")
    topic_parts = topic.split("/")
    for i, part in enumerate(filter_parts):
        if part == "#":
            return True
        if i >= len(topic_parts) or (part not in ("+", topic_parts[i])):
            return False
    return len(filter_parts) == len(topic_parts)
