"""A stand-in for the edge agent's escalation side, in plain paho (MQTT v5)."""

from __future__ import annotations

import json
import queue
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_slm.topics import DeviceTopics


@dataclass(frozen=True)
class CloudMsg:
    topic: str
    payload: dict[str, Any]
    correlation_data: bytes | None


def escalation(device_id: str, rid: str | None = None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "v": 1,
        "id": rid or uuid.uuid4().hex,
        "device_id": device_id,
        "kind": "text",
        "task": "answer",
        "text": "What is the boiling point of water in Celsius?",
        "max_tokens": 24,
        "reason": "low_confidence",
        "reason_text": "edge confidence 0.31 < 0.6",
        "edge": {"answer": "100 degrees", "confidence": 0.31, "model": "smollm2-135m-instruct"},
        "redactions": {"email": 1},
        "deadline_ms": 60000,
        "expires_at": time.time() + 120,
        "created_at": time.time(),
    }
    body.update(fields)
    return body


class FakeDevice:
    def __init__(self, port: int, device_id: str, prefix: str = "slm") -> None:
        self.topics = DeviceTopics(prefix, device_id)
        self.inbox: queue.Queue[CloudMsg] = queue.Queue()
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"dev-{device_id}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self._client.on_message = self._on_message
        # Like the real agent: without TCP_NODELAY, Nagle adds ~40-90 ms per QoS 1 exchange.
        self._client.on_socket_open = lambda _c, _u, sock: sock.setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
        )
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        result, _mid = self._client.subscribe(self.topics.cloud, 1)
        assert result == 0
        time.sleep(0.2)

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        self.inbox.put(
            CloudMsg(msg.topic, json.loads(msg.payload), getattr(props, "CorrelationData", None))
        )

    def escalate(
        self,
        body: dict[str, Any],
        *,
        topic: str | None = None,
        device_prop: str | None = None,
        raw: bytes | None = None,
    ) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = str(body.get("id", "")).encode()
        props.MessageExpiryInterval = max(1, int(body.get("deadline_ms", 60000) / 1000))
        props.UserProperty = [("device_id", device_prop or self.topics.device_id)]
        payload = raw if raw is not None else json.dumps(body).encode()
        info = self._client.publish(
            topic or self.topics.escalation, payload, qos=1, properties=props
        )
        info.wait_for_publish(5)

    def next(self, timeout: float = 60.0) -> CloudMsg:
        try:
            return self.inbox.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no cloud reply within {timeout}s") from None

    def collect(self, count: int, timeout: float = 120.0) -> list[CloudMsg]:
        deadline = time.monotonic() + timeout
        return [self.next(max(0.1, deadline - time.monotonic())) for _ in range(count)]

    def quiet(self, seconds: float) -> list[CloudMsg]:
        time.sleep(seconds)
        extra = []
        while not self.inbox.empty():
            extra.append(self.inbox.get_nowait())
        return extra

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
