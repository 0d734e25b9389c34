"""The relay's supervised lifecycle.

Start-up, in order: open the store and its group-commit writer thread, the
event loop thread, the LLM client, the handler pool on that loop, the fleet
writer, the metrics endpoint (when ``metrics.port`` is set), then MQTT
(subscribe on every (re)connect to the shared escalation topic and, for the
fleet view, to telemetry (shared) and status (plain, for the retained
copies); then say ``online`` on the relay's status topic, so agents re-send
the escalations they hold at once), and last the learn loop (when
``learn.interval_s`` is set: skill heads fitted on the cloud's labels and
pushed, :mod:`cloud_relay.learn`). The will says ``offline``. SIGTERM or
SIGINT: unsubscribe (the broker sends new escalations to the other relays of
the group), drain queued and in-flight work up to
``drain_timeout_s``, cancel what still runs, answer what is left with
``shutting_down`` and release its claims so a replay is served, then undo
start-up in reverse order (ExitStack): the store writer stops last but one,
committing every row still queued, and the store closes last.

Threads: paho's network thread (parse, check, hand over), the event loop
thread (every escalation as a task: LLM over HTTP, replies), the store
writer thread (group commit), the fleet writer thread and the learn thread.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING, Literal

from cloud_relay.breaker import BreakerState, CircuitBreaker
from cloud_relay.config import RelaySettings
from cloud_relay.fleet import STATUS, TELEMETRY, FleetWriter, leaf_of
from cloud_relay.handling import Handler
from cloud_relay.intake import Envelope, parse_inbound
from cloud_relay.llm import OpenAiChat
from cloud_relay.metrics import MetricsServer, RelayMetrics
from cloud_relay.pool import LoopThread, TaskPool
from cloud_relay.store import open_store
from cloud_relay.store.writer import StoreWriter
from edge_slm.contract import CloudReply, ErrorCode, ErrorInfo, Outcome, RelayStatus
from edge_slm.lifecycle import Lifecycle
from edge_slm.logs import get_logger
from edge_slm.mqtt import Inbound, Will
from edge_slm.topics import relay_status

if TYPE_CHECKING:
    from cloud_relay.learn_loop import LearnLoop

log = get_logger("cloud_relay.daemon")


class RelayDaemon(Lifecycle):
    name = "relay"

    def __init__(self, settings: RelaySettings) -> None:
        if not settings.llm.model:
            raise ValueError("llm.model is required (--llm-model or CLOUD_RELAY_LLM__MODEL)")
        super().__init__()
        self.settings = settings
        self._draining = False
        self._writer: StoreWriter | None = None
        self._loop: LoopThread | None = None
        self._pool: TaskPool[Envelope] | None = None
        self._fleet: FleetWriter | None = None
        self._learn: LearnLoop | None = None
        self.metrics = RelayMetrics()
        self.metrics_server: MetricsServer | None = None
        s = settings
        self._status_topic = relay_status(s.topic_prefix, s.mqtt.client_id)
        self.mqtt = s.mqtt.connection(
            client_id=s.mqtt.client_id,
            on_connect=self._on_connect,
            on_message=self._on_message,
            will=Will(self._status_topic, self._status("offline"), retain=False),
        )

    # -- lifecycle -------------------------------------------------------

    def healthy(self) -> bool | str:
        if self._loop is not None and not self._loop.alive:
            return "the relay's event loop thread died"
        if self._writer is not None and not self._writer.alive:
            return "the store writer thread died"
        if self._fleet is not None and not self._fleet.alive:
            return "the fleet writer thread died"
        if self._learn is not None and not self._learn.alive:
            return "the learn thread died"
        if not self.mqtt.loop_alive:
            return "the MQTT network thread is dead"
        return True

    def status_line(self) -> str:
        depth = self._pool.depth if self._pool else 0
        link = "up" if self.mqtt.is_connected else "down"
        return (
            f"{self.settings.llm.model} via {self.settings.llm.url}; in flight {depth}; mqtt {link}"
        )

    def _start(self, stack: ExitStack) -> None:
        s = self.settings
        model = s.llm.model or ""  # checked in __init__
        store = open_store(s.db)
        stack.callback(store.close)
        writer = StoreWriter(store)
        writer.start()
        stack.callback(writer.stop)  # after everything else: commits what is still queued
        self._writer = writer
        loop = LoopThread("relay-loop")
        loop.start()
        stack.callback(loop.stop)
        self._loop = loop
        breaker = CircuitBreaker(s.breaker.failure_threshold, s.breaker.open_s)
        llm = OpenAiChat(
            s.llm, model=model, breaker=breaker, max_concurrency=s.limits.max_concurrency
        )
        stack.callback(lambda: loop.run(llm.aclose(), 5.0))
        handler = Handler(
            s,
            store=writer,
            llm=llm,
            publish=self._publish,
            relay_id=s.mqtt.client_id,
            metrics=self.metrics,
        )
        pool: TaskPool[Envelope] = TaskPool(
            handler,
            loop=loop.loop,
            workers=s.limits.max_concurrency,
            queue_size=s.limits.queue_size,
        )
        stack.callback(pool.stop)
        self._pool = pool
        if s.fleet.enabled:
            fleet = FleetWriter(
                store,
                prefix=s.topic_prefix,
                queue_size=s.fleet.queue_size,
                max_payload_bytes=s.fleet.max_payload_bytes,
            )
            fleet.start()
            stack.callback(fleet.stop)
            self._fleet = fleet
        self.metrics.bind(
            in_flight=lambda: pool.depth,
            breaker_open=lambda: float(breaker.state is not BreakerState.CLOSED),
            devices_online=lambda: self._fleet.online if self._fleet else 0,
        )
        if s.metrics.port:
            self.metrics_server = MetricsServer(self.metrics, s.metrics.host, s.metrics.port)
            stack.callback(self.metrics_server.stop)
        connected = self.mqtt.start(connect_timeout_s=s.mqtt.connect_timeout_s)
        stack.callback(self.mqtt.stop)
        if not connected:
            log.warning("mqtt_not_connected_yet", broker=str(s.mqtt.url), hint="still retrying")
        if s.learn.interval_s:
            from cloud_relay.learn_loop import LearnLoop  # numpy and the encoder: only when on

            learn = LearnLoop(s, self._publish_head)
            learn.start()
            stack.callback(learn.stop)  # first on the way out: no push while draining
            self._learn = learn
        log.info(
            "relay_started",
            client_id=s.mqtt.client_id,
            subscriptions=[f for f, _qos in s.subscriptions],
            metrics_port=s.metrics.port or None,
            llm_url=s.llm.url,
            llm_model=s.llm.model,
            store=s.db.split("://", 1)[0],
            max_concurrency=s.limits.max_concurrency,
            learn_interval_s=s.learn.interval_s or None,
        )

    def _drain(self) -> None:
        if self._pool is None or self._writer is None:
            return  # start-up failed before there was anything to drain
        self._draining = True
        try:
            self.mqtt.unsubscribe([f for f, _qos in self.settings.subscriptions])
            # A clean DISCONNECT suppresses the will, so say offline ourselves.
            self.mqtt.publish(self._status_topic, self._status("offline"), qos=1)
        except Exception:  # best effort: we are leaving anyway
            log.warning("unsubscribe_failed", exc_info=True)
        timeout = self.settings.limits.drain_timeout_s
        log.info("draining", in_flight=self._pool.depth, timeout_s=timeout)
        queued, running = self._pool.drain(timeout)
        # Cancelled by the pool: their claims go, so a replay is served.
        keys = [(env.device_id, env.request_id) for env in running if env.request_id is not None]
        if keys:
            try:
                self._writer.release(keys)
            except Exception:  # the store is failing: the claims go stale instead
                log.warning("release_failed", claims=len(keys), exc_info=True)
        for env in [*queued, *running]:
            self._shed(env, ErrorCode.SHUTTING_DOWN, "the relay stopped before answering")
        if queued or running:
            log.warning("drain_incomplete", queued=len(queued), running=len(running))

    # -- MQTT side (network thread) ----------------------------------------

    def _on_connect(self) -> None:
        if not self._draining:  # a reconnect while draining must not take new work
            self.mqtt.subscribe(self.settings.subscriptions)
            # After the subscribe (same connection, in order): a re-send it prompts finds it.
            self.mqtt.publish(self._status_topic, self._status("online"), qos=1)

    def _on_message(self, msg: Inbound) -> None:
        if leaf_of(msg.topic) in (TELEMETRY, STATUS):
            if self._fleet is not None:
                self._fleet.submit(msg)  # size check and enqueue; parsing is the writer's
            return
        env = parse_inbound(msg, self.settings.topic_prefix)
        if env is None:
            log.warning("escalation_topic_unusable", topic=msg.topic)
            return
        if self._pool is None or not self._pool.submit(env):
            self._shed(env, ErrorCode.BUSY, "the relay's queue is full")

    def _status(self, state: Literal["online", "offline"]) -> bytes:
        return RelayStatus(relay_id=self.settings.mqtt.client_id, state=state).to_wire()

    def _shed(self, env: Envelope, code: ErrorCode, message: str) -> None:
        """Answer without a log row: the escalation was never claimed, so a replay is served."""
        log.warning("escalation_shed", device_id=env.device_id, code=code.value)
        self.metrics.escalation_shed()
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

    def _publish_head(self, topic: str, payload: bytes) -> None:
        """The learn thread's pushes: retained, under the relay's identity (paho is
        thread-safe for publish)."""
        self.mqtt.publish(topic, payload, qos=1, retain=True)

    def _publish(self, topic: str, payload: bytes, correlation: bytes | None) -> None:
        self.mqtt.publish(topic, payload, qos=1, correlation_data=correlation)
