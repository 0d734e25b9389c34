"""A test-side MQTT app: publishes requests and collects replies.

It talks paho directly on purpose: it plays a third-party IoT app, which knows
nothing of our adapter, in MQTT v5 or v3.1.1.
"""

from __future__ import annotations

import json
import queue
import threading
import uuid
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


@dataclass(frozen=True)
class Reply:
    topic: str
    payload: dict[str, Any]
    correlation_data: bytes | None


class AppClient:
    def __init__(self, broker_port: int, *, v5: bool = True, client_id: str | None = None) -> None:
        self.v5 = v5
        self.replies: queue.Queue[Reply] = queue.Queue()
        self._subscribed = threading.Event()
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"app-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        )
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_a: self._subscribed.set()
        self._client.connect("127.0.0.1", broker_port)
        self._client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        self.replies.put(
            Reply(
                topic=msg.topic,
                payload=json.loads(msg.payload),
                correlation_data=getattr(props, "CorrelationData", None),
            )
        )

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self._subscribed.clear()
        self._client.subscribe(topic, qos)
        assert self._subscribed.wait(5), f"no SUBACK for {topic}"

    def publish(
        self,
        topic: str,
        payload: bytes | str | dict[str, Any],
        *,
        qos: int = 1,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> None:
        body = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        props = None
        if self.v5 and (response_topic or correlation_data):
            props = Properties(PacketTypes.PUBLISH)
            if response_topic:
                props.ResponseTopic = response_topic
            if correlation_data:
                props.CorrelationData = correlation_data
        info = self._client.publish(topic, body, qos=qos, properties=props)
        info.wait_for_publish(5)

    def next_reply(self, timeout: float = 30.0) -> Reply:
        try:
            return self.replies.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no reply within {timeout}s") from None

    def classify(self, request_topic: str, **body: Any) -> dict[str, Any]:
        """Publish one classify request (fields in ``body``) and return its reply payload."""
        request = {"v": 1, "id": uuid.uuid4().hex, "kind": "voice", "task": "classify", **body}
        self.publish(request_topic, request)
        reply = self.next_reply(timeout=60)
        assert reply.payload["id"] == request["id"]
        payload: dict[str, Any] = reply.payload
        return payload

    def collect(self, count: int, timeout: float = 60.0) -> list[Reply]:
        return [self.next_reply(timeout) for _ in range(count)]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
