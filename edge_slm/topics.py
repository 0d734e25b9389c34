"""Every MQTT topic name is built here, from a prefix and a device id.

Nobody formats topic strings inline elsewhere: one place to change, one place
to validate (MQTT 5 spec §4.7: topic names carry no wildcards; we also keep
``/`` out of the segments so a device can never speak for another one).
"""

from __future__ import annotations

from dataclasses import dataclass

_FORBIDDEN = set("/+#\x00")


def _check_segment(what: str, value: str) -> str:
    if not value or any(ch in _FORBIDDEN for ch in value) or value.startswith("$"):
        raise ValueError(f"{what} {value!r} must be a non-empty topic segment without / + # $")
    return value


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

    @property
    def response(self) -> str:
        """Default reply topic when the request names none."""
        return f"{self.base}/response"

    @property
    def status(self) -> str:
        """Retained birth/will."""
        return f"{self.base}/status"

    def all(self) -> dict[str, str]:
        """Every topic of this device by role (the AsyncAPI document lists the same)."""
        return {"request": self.request, "response": self.response, "status": self.status}


def status_wildcard(prefix: str) -> str:
    """Subscription matching every device's status topic (fleet views)."""
    return f"{_check_segment('prefix', prefix)}/+/status"
