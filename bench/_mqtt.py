"""A minimal MQTT v5 client for the benchmarks: timed request/reply and an echo responder.

It sets TCP_NODELAY like the agent's own adapter (``edge_slm/mqtt.py``): without
it Nagle's algorithm plus delayed ACKs add tens of milliseconds to small
packets, and the benchmark would measure the client rather than the agent.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_slm.topics import DeviceTopics
from tests.support.agent import AgentProcess, wait_for_status
from tests.support.broker import PrivateBroker


def _nodelay(_client: paho.Client, _userdata: Any, sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class BenchClient:
    """One connection; either a requester (``round_trip``) or an echo (``serve_echo``)."""

    def __init__(self, port: int, name: str) -> None:
        self._client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"bench-{name}-{uuid.uuid4().hex[:6]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self._client.on_socket_open = _nodelay
        self._client.on_message = self._on_message
        self._subscribed = threading.Event()
        self._client.on_subscribe = lambda *_a: self._subscribed.set()
        self._arrived = threading.Event()
        self._reply: tuple[float, bytes, bytes | None] = (0.0, b"", None)
        self._echo_topic: str | None = None
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def subscribe(self, topic: str, qos: int) -> None:
        self._subscribed.clear()
        self._client.subscribe(topic, qos)
        if not self._subscribed.wait(5):
            raise TimeoutError(f"no SUBACK for {topic}")

    def serve_echo(self, topic: str, qos: int) -> None:
        """Answer every message on ``topic`` with its payload, the way the agent replies."""
        self._echo_topic = topic
        self.subscribe(topic, qos)

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        now = time.perf_counter()  # on the network thread: no queue hand-off in the timing
        props = msg.properties
        corr = getattr(props, "CorrelationData", None)
        reply_to: str = getattr(props, "ResponseTopic", "")
        if msg.topic == self._echo_topic and reply_to:
            out = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            out.CorrelationData = corr
            self._client.publish(reply_to, msg.payload, qos=msg.qos, properties=out)
            return
        self._reply = (now, bytes(msg.payload), corr)
        self._arrived.set()

    def round_trip(
        self, topic: str, payload: bytes, *, qos: int, reply_topic: str, timeout: float = 30.0
    ) -> tuple[float, bytes]:
        """Publish one request; return (seconds until the correlated reply, its payload)."""
        corr = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = reply_topic
        props.CorrelationData = corr
        self._arrived.clear()
        start = time.perf_counter()
        self._client.publish(topic, payload, qos=qos, properties=props)
        if not self._arrived.wait(timeout):
            raise TimeoutError(f"no reply on {reply_topic} within {timeout}s")
        arrived, body, got = self._reply
        if got != corr:
            raise RuntimeError("reply carries another request's correlation data")
        return arrived - start, body

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@contextmanager
def running_agent(
    workdir: Path, *, tcp_nodelay: bool = True, **env: str
) -> Iterator[tuple[PrivateBroker, AgentProcess, DeviceTopics]]:
    """A private mosquitto and the real agent on it (cloud fallback off), online;
    ``env``: more ``EDGE_AGENT_*`` settings."""
    from agent.models import DEFAULT_MODEL, ModelCache, default_cache_dir

    ModelCache(default_cache_dir()).require(DEFAULT_MODEL)  # a readable error if not built
    device_id = f"bench-{uuid.uuid4().hex[:6]}"
    topics = DeviceTopics("slm", device_id)
    with PrivateBroker(tcp_nodelay=tcp_nodelay) as broker:
        agent = AgentProcess(
            broker_url=broker.url,
            device_id=device_id,
            log_path=workdir / "agent.log",
            # Edge path only: a cloud wait would swamp the MQTT figures.
            EDGE_AGENT_CLOUD__ENABLED="false",
            EDGE_AGENT_OUTBOX__PATH=str(workdir / "outbox.db"),
            **env,
        )
        try:
            wait_for_status(broker.port, topics.status, "online", timeout=120)
            yield broker, agent, topics
        finally:
            agent.close()
