"""The one place that talks to paho-mqtt.

Both daemons use :class:`MqttConnection`; nothing else imports paho. It gives:

* MQTT v5 with a persistent session (``clean_start=False`` plus a Session
  Expiry Interval), so QoS 1 requests published during a short disconnect are
  delivered after the reconnect (MQTT 5 spec §3.1.2.4, §4.1);
* TCP_NODELAY on the socket: without it Nagle + delayed ACK hold small QoS 1
  packets back and loopback round trips take ~88 ms instead of < 1 ms;
* reconnects with exponential backoff, its base jittered (:mod:`edge_slm.backoff`),
  so a fleet does not stampede a broker that comes back; ``on_connect`` runs on
  every (re)connect so the caller re-subscribes and re-publishes its birth message;
* inbound messages as frozen :class:`Inbound` values, and paho return codes
  turned into :class:`MqttError`;
* optional manual acknowledgement: with ``manual_ack=True`` a QoS 1 message is
  PUBACKed only when the caller calls :meth:`MqttConnection.ack`, so a message
  the process dies holding is redelivered by the broker (MQTT 5 §4.4) instead
  of being lost with it.
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_slm.backoff import backoff_delay
from edge_slm.logs import get_logger

log = get_logger("edge_slm.mqtt")


class MqttError(Exception):
    """A paho operation failed; ``rc`` is paho's code name."""

    def __init__(self, action: str, rc: MQTTErrorCode | int) -> None:
        self.rc = int(rc)
        super().__init__(f"{action} failed: {paho.error_string(rc)}")


@dataclass(frozen=True, slots=True)
class BrokerUrl:
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        """Parse ``mqtt://host[:port]`` or ``mqtts://host[:port]``."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"broker URL {url!r} must start with mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError(f"broker URL {url!r} has no host")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise ValueError(f"broker URL {url!r} has an invalid port") from exc
        return cls(host=parts.hostname, port=port, tls=tls)

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True, slots=True)
class Inbound:
    """A received message, detached from paho's mutable object."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    response_topic: str | None = None
    correlation_data: bytes | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    #: The broker's redelivery of a message it holds no PUBACK for (MQTT 5 §3.3.1.1).
    dup: bool = False
    #: The packet id to acknowledge (manual-ack connections, QoS > 0); 0 otherwise.
    mid: int = 0
    #: Which connection delivered it: a PUBACK on a later connection would hit a
    #: packet id the broker may have reused for another message.
    connection: int = 0


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class _Delivery:
    info: paho.MQTTMessageInfo
    callback: Callable[[], None]
    connection: int


def _published(info: paho.MQTTMessageInfo) -> bool:
    try:
        return info.is_published()
    except (RuntimeError, ValueError):  # queued while disconnected: not on this connection
        return False


class MqttConnection:
    """A supervised MQTT v5 client connection running on paho's network thread.

    Callbacks run on that thread and must return quickly: they may parse and
    enqueue, never run inference.
    """

    def __init__(
        self,
        *,
        url: BrokerUrl,
        client_id: str,
        on_connect: Callable[[], None],
        on_message: Callable[[Inbound], None],
        username: str | None = None,
        password: str | None = None,
        tls: TlsFiles | None = None,
        will: Will | None = None,
        keepalive_s: int = 30,
        session_expiry_s: int = 3600,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        manual_ack: bool = False,
    ) -> None:
        self.url = url
        self._client_id = client_id
        self._on_connect_cb = on_connect
        self._on_message_cb = on_message
        self._keepalive = keepalive_s
        self._session_expiry = session_expiry_s
        self._reconnect_min = reconnect_min_s
        self._reconnect_max = reconnect_max_s
        self._connected = threading.Event()
        self._pending: dict[int, paho.MQTTMessageInfo] = {}
        self._pending_lock = threading.Lock()
        self._delivered: queue.SimpleQueue[_Delivery | None] = queue.SimpleQueue()
        self._watcher: threading.Thread | None = None
        self.connect_count = 0

        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=manual_ack,
        )
        self._manual_ack = manual_ack
        if manual_ack:
            # paho holds QoS 1 publishes past 20 unacknowledged ones in its own queue,
            # while a PUBACK goes straight out: a reply could then be overtaken by the
            # ack of its request and die with the process. Unlimited, both go to the
            # socket in call order (mosquitto PUBACKs QoS 1 at once; no receive
            # maximum applies to it).
            client.max_inflight_messages_set(0)
        if username is not None:
            client.username_pw_set(username, password)
        if url.tls or tls is not None:
            files = tls or TlsFiles()
            client.tls_set(
                ca_certs=files.ca_file,
                certfile=files.cert_file,
                keyfile=files.key_file,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        self._set_backoff(client)
        client.on_socket_open = self._on_socket_open
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        # paho logs through stdlib logging, which configure_logging() bridges.
        self._stopping = False
        paho_log = logging.getLogger(f"paho.{client_id}")
        paho_log.addFilter(self._drop_shutdown_noise)
        client.enable_logger(paho_log)
        self._client = client

    def _drop_shutdown_noise(self, record: logging.LogRecord) -> bool:
        # paho 2.2's loop thread runs once more after our DISCONNECT and logs
        # "Client is not connected" at ERROR; during stop() that is expected.
        return not (self._stopping and "not connected" in record.getMessage())

    def _set_backoff(self, client: paho.Client) -> None:
        # A fresh random base for paho's doubling backoff, at start and after every
        # drop: the first step of edge_slm.backoff's equal jitter, in [min / 2, min],
        # so a fleet's reconnects spread out after a broker restart and none comes
        # at once. paho annotates int but sleeps on the value as float seconds.
        client.reconnect_delay_set(
            backoff_delay(1, self._reconnect_min, self._reconnect_max),  # type: ignore[arg-type]
            self._reconnect_max,  # type: ignore[arg-type]
        )

    # -- lifecycle -------------------------------------------------------

    def start(self, connect_timeout_s: float | None = None) -> bool:
        """Start the network thread; optionally wait for the first CONNACK.

        Returns whether the connection is up. paho keeps retrying in the
        background either way, so a broker that is down at boot is not fatal.
        """
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._session_expiry
        self._client.connect_async(
            self.url.host,
            self.url.port,
            keepalive=self._keepalive,
            clean_start=False,
            properties=props,
        )
        self._client.loop_start()
        self._watcher = threading.Thread(
            target=self._watch_deliveries, name=f"{self._client_id}-delivered", daemon=True
        )
        self._watcher.start()
        if connect_timeout_s is None:
            return self.is_connected
        return self._connected.wait(connect_timeout_s)

    def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Wait for in-flight QoS>0 publishes, disconnect cleanly, join the thread."""
        deadline = time.monotonic() + flush_timeout_s
        with self._pending_lock:
            pending = list(self._pending.values())
        for info in pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.is_connected:
                break
            try:
                info.wait_for_publish(remaining)
            except (RuntimeError, ValueError):
                break
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()
        if self._watcher is not None:
            self._delivered.put(None)
            self._watcher.join(flush_timeout_s)
        self._connected.clear()

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    @property
    def loop_alive(self) -> bool:
        """Whether paho's network thread runs (a disconnect is not a death: it retries)."""
        thread = getattr(self._client, "_thread", None)  # paho keeps it private
        return thread is not None and thread.is_alive()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    # -- operations ------------------------------------------------------

    def subscribe(self, topics: Sequence[tuple[str, int]]) -> None:
        rc, _mid = self._client.subscribe(list(topics))
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttError("subscribe", rc)

    def unsubscribe(self, topics: Sequence[str]) -> None:
        rc, _mid = self._client.unsubscribe(list(topics))
        if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise MqttError("unsubscribe", rc)

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        content_type: str | None = "application/json",
        message_expiry_s: int | None = None,
        user_properties: Sequence[tuple[str, str]] = (),
        on_delivered: Callable[[], None] | None = None,
    ) -> paho.MQTTMessageInfo:
        """Publish; QoS>0 messages are queued by paho while disconnected.

        ``on_delivered`` runs (on a helper thread) once the broker has PUBACKed this
        QoS 1 message on the current connection; never if the connection drops first
        (paho re-sends the message after the reconnect, but the caller's own state,
        such as an ack owed for it, belongs to the old connection).
        """
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if response_topic is not None:
            props.ResponseTopic = response_topic
        if correlation_data is not None:
            props.CorrelationData = correlation_data
        if content_type is not None:
            props.ContentType = content_type
        if message_expiry_s is not None:
            props.MessageExpiryInterval = message_expiry_s
        if user_properties:
            props.UserProperty = list(user_properties)
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise MqttError(f"publish to {topic}", info.rc)
        if on_delivered is not None and qos > 0:
            self._delivered.put(_Delivery(info, on_delivered, self.connect_count))
        if qos > 0:
            with self._pending_lock:
                self._pending[info.mid] = info
                if len(self._pending) > 1024:  # drop entries whose ack raced the insert
                    self._pending = {m: i for m, i in self._pending.items() if not i.is_published()}
        return info

    def ack(self, message: Inbound) -> bool:
        """PUBACK a message received with ``manual_ack=True``; at most once per message.

        A message from an earlier connection is not acknowledged: the broker already
        redelivered it on this one (with the DUP flag), where its copy is acked.
        Returns whether a PUBACK was sent.
        """
        if not self._manual_ack or message.qos == 0 or message.mid == 0:
            return False
        if message.connection != self.connect_count or not self.is_connected:
            log.info("ack_skipped_stale", mid=message.mid, connection=message.connection)
            return False
        rc = self._client.ack(message.mid, message.qos)
        if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise MqttError(f"ack of {message.topic}", rc)
        return rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def _watch_deliveries(self) -> None:
        # paho calls on_publish before it marks the message published, and under a
        # lock that publish() also takes, so waiting here is simpler than a callback.
        while (item := self._delivered.get()) is not None:
            while not _published(item.info):
                if self._stopping or item.connection != self.connect_count:
                    log.debug("delivery_not_confirmed", mid=item.info.mid)
                    break
                try:
                    item.info.wait_for_publish(0.05)
                except (RuntimeError, ValueError):  # queued while disconnected
                    time.sleep(0.05)
            else:
                try:
                    item.callback()
                except Exception:
                    log.exception("on_delivered_failed", mid=item.info.mid)

    # -- paho callbacks (network thread) -----------------------------------

    def _on_socket_open(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:  # e.g. a unix socket: nothing to tune
            log.debug("tcp_nodelay_unavailable", error=str(exc))

    def _on_connect(
        self,
        _client: paho.Client,
        _userdata: Any,
        _flags: Any,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.error("mqtt_connect_refused", broker=str(self.url), reason=str(reason))
            return
        self.connect_count += 1
        log.info("mqtt_connected", broker=str(self.url), connects=self.connect_count)
        self._connected.set()
        try:
            self._on_connect_cb()
        except Exception:
            log.exception("on_connect_handler_failed")

    def _on_disconnect(
        self,
        client: paho.Client,
        _userdata: Any,
        _flags: Any,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        self._connected.clear()
        self._set_backoff(client)
        level = log.warning if reason.is_failure else log.info
        level("mqtt_disconnected", broker=str(self.url), reason=str(reason))

    def _on_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        inbound = Inbound(
            topic=msg.topic,
            payload=bytes(msg.payload),
            qos=msg.qos,
            retain=bool(msg.retain),
            response_topic=getattr(props, "ResponseTopic", None),
            correlation_data=getattr(props, "CorrelationData", None),
            user_properties=tuple(getattr(props, "UserProperty", None) or ()),
            dup=bool(msg.dup),
            mid=msg.mid if self._manual_ack and msg.qos > 0 else 0,
            connection=self.connect_count,
        )
        try:
            self._on_message_cb(inbound)
        except Exception:
            # A failing handler must never kill paho's network thread.
            log.exception("message_handler_failed", topic=msg.topic)

    def _on_publish(
        self,
        _client: paho.Client,
        _userdata: Any,
        mid: int,
        _reason: ReasonCode,
        _props: Properties,
    ) -> None:
        with self._pending_lock:
            self._pending.pop(mid, None)
