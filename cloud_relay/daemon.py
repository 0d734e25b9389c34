"""The relay's supervised lifecycle.

Start-up, in order: open the store, the LLM client, the worker pool, then MQTT
(subscribe to the shared escalation topic on every (re)connect). SIGTERM or
SIGINT: unsubscribe (the broker sends new escalations to the other relays of
the group), drain queued and in-flight work up to ``drain_timeout_s``, answer
what is left with ``shutting_down`` and release its claims so a replay is
served, then undo start-up in reverse order (ExitStack).
"""

from __future__ import annotations

import signal
import threading
from contextlib import ExitStack
from types import FrameType

from cloud_relay.breaker import CircuitBreaker
from cloud_relay.config import RelaySettings
from cloud_relay.handling import Handler
from cloud_relay.intake import Envelope, parse_inbound
from cloud_relay.llm import OpenAiChat
from cloud_relay.pool import WorkerPool
from cloud_relay.store import RelayStore, open_store
from edge_slm.contract import CloudReply, ErrorCode, ErrorInfo, Outcome
from edge_slm.logs import get_logger
from edge_slm.mqtt import Inbound, MqttConnection, TlsFiles

log = get_logger("cloud_relay.daemon")


def _tls(settings: RelaySettings) -> TlsFiles | None:
    m = settings.mqtt
    if not (m.ca_file or m.cert_file):
        return None
    return TlsFiles(
        ca_file=str(m.ca_file) if m.ca_file else None,
        cert_file=str(m.cert_file) if m.cert_file else None,
        key_file=str(m.key_file) if m.key_file else None,
    )


class RelayDaemon:
    def __init__(self, settings: RelaySettings) -> None:
        if not settings.llm.model:
            raise ValueError("llm.model is required (--llm-model or CLOUD_RELAY_LLM__MODEL)")
        self.settings = settings
        self._stop = threading.Event()
        self._draining = False
        self._store: RelayStore | None = None
        self._pool: WorkerPool[Envelope] | None = None
        s = settings
        self.mqtt = MqttConnection(
            url=s.mqtt.url,
            client_id=s.mqtt.client_id,
            on_connect=self._on_connect,
            on_message=self._on_message,
            username=s.mqtt.username,
            password=s.mqtt.password.get_secret_value() if s.mqtt.password else None,
            tls=_tls(s),
            keepalive_s=s.mqtt.keepalive_s,
            session_expiry_s=s.mqtt.session_expiry_s,
            reconnect_min_s=s.mqtt.reconnect_min_s,
            reconnect_max_s=s.mqtt.reconnect_max_s,
        )

    # -- signals ---------------------------------------------------------

    def request_stop(self, signum: int | None = None, _frame: FrameType | None = None) -> None:
        log.info("stop_requested", signal=signal.Signals(signum).name if signum else None)
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    # -- lifecycle -------------------------------------------------------

    def run(self) -> int:
        with ExitStack() as stack:
            self._start(stack)
            self._stop.wait()
            self._drain()
        log.info("relay_stopped")
        return 0

    def _start(self, stack: ExitStack) -> None:
        s = self.settings
        model = s.llm.model or ""  # checked in __init__
        store = open_store(s.db)
        stack.callback(store.close)
        self._store = store
        llm = OpenAiChat(
            s.llm,
            model=model,
            breaker=CircuitBreaker(s.breaker.failure_threshold, s.breaker.open_s),
            max_concurrency=s.limits.max_concurrency,
        )
        stack.callback(llm.close)
        handler = Handler(s, store=store, llm=llm, publish=self._publish, relay_id=s.mqtt.client_id)
        pool: WorkerPool[Envelope] = WorkerPool(
            handler, workers=s.limits.max_concurrency, queue_size=s.limits.queue_size
        )
        pool.start()
        stack.callback(pool.stop)
        self._pool = pool
        connected = self.mqtt.start(connect_timeout_s=s.mqtt.connect_timeout_s)
        stack.callback(self.mqtt.stop)
        if not connected:
            log.warning("mqtt_not_connected_yet", broker=str(s.mqtt.url), hint="still retrying")
        log.info(
            "relay_started",
            client_id=s.mqtt.client_id,
            subscription=s.subscription,
            llm_url=s.llm.url,
            llm_model=s.llm.model,
            store=s.db.split("://", 1)[0],
            max_concurrency=s.limits.max_concurrency,
        )

    def _drain(self) -> None:
        if self._pool is None or self._store is None:
            return  # start-up failed before there was anything to drain
        self._draining = True
        try:
            self.mqtt.unsubscribe([self.settings.subscription])
        except Exception:  # best effort: we are leaving anyway
            log.warning("unsubscribe_failed", exc_info=True)
        timeout = self.settings.limits.drain_timeout_s
        log.info("draining", in_flight=self._pool.depth, timeout_s=timeout)
        queued, running = self._pool.drain(timeout)
        for env in running:
            if env.request_id is not None:
                self._store.release(env.device_id, env.request_id)
        for env in [*queued, *running]:
            self._shed(env, ErrorCode.SHUTTING_DOWN, "the relay stopped before answering")
        if queued or running:
            log.warning("drain_incomplete", queued=len(queued), running=len(running))

    # -- MQTT side (network thread) ----------------------------------------

    def _on_connect(self) -> None:
        if not self._draining:  # a reconnect while draining must not take new work
            self.mqtt.subscribe([(self.settings.subscription, 1)])

    def _on_message(self, msg: Inbound) -> None:
        env = parse_inbound(msg, self.settings.topic_prefix)
        if env is None:
            log.warning("escalation_topic_unusable", topic=msg.topic)
            return
        if self._pool is None or not self._pool.submit(env):
            self._shed(env, ErrorCode.BUSY, "the relay's queue is full")

    def _shed(self, env: Envelope, code: ErrorCode, message: str) -> None:
        """Answer without a log row: the escalation was never claimed, so a replay is served."""
        log.warning("escalation_shed", device_id=env.device_id, code=code.value)
        if env.request_id is None:
            return
        reply = CloudReply(
            id=env.request_id,
            device_id=env.device_id,
            ok=False,
            outcome=Outcome.LLM_ERROR,
            error=ErrorInfo(code=code, message=message, retry_after_ms=1000),
        )
        self._publish(env.topics.cloud, reply.to_wire(), env.correlation_data)

    def _publish(self, topic: str, payload: bytes, correlation: bytes | None) -> None:
        self.mqtt.publish(topic, payload, qos=1, correlation_data=correlation)
