"""The edge agent's supervised lifecycle.

Start-up, in order: load the model, start the inference worker, connect to
MQTT (subscribe and publish the retained birth on every connect). SIGTERM or
SIGINT: stop intake, drain in-flight work up to ``drain_timeout_s``, answer
what is left with ``shutting_down``, publish ``offline``, then undo start-up
in reverse order (ExitStack).
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Literal

import structlog

from agent.answering import answer, with_latency
from agent.config import AgentSettings
from agent.engine.engine import Engine, StopWhen
from agent.intake import Intake
from agent.routing import ReplyRoute
from agent.worker import InferenceWorker, Job
from edge_slm import __version__
from edge_slm.contract import ErrorCode, Response, Status
from edge_slm.logs import get_logger
from edge_slm.mqtt import MqttConnection, TlsFiles, Will

log = get_logger("agent.daemon")


def resolve_model_dir(settings: AgentSettings) -> Path:
    if settings.model.path is not None:
        return settings.model.path
    from agent.models import ModelCache, default_cache_dir

    cache = ModelCache(settings.model.cache_dir or default_cache_dir())
    return cache.require(settings.model.name)


class AgentDaemon:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.topics = settings.topics
        self._stop = threading.Event()
        self._engine: Engine | None = None
        s = settings
        self.worker = InferenceWorker(self._answer, self._reply_job, queue_size=s.limits.queue_size)
        self.intake = Intake(
            topics=self.topics, limits=s.limits, worker=self.worker, send_reply=self.send_reply
        )
        tls = None
        if s.mqtt.ca_file or s.mqtt.cert_file:
            tls = TlsFiles(
                ca_file=str(s.mqtt.ca_file) if s.mqtt.ca_file else None,
                cert_file=str(s.mqtt.cert_file) if s.mqtt.cert_file else None,
                key_file=str(s.mqtt.key_file) if s.mqtt.key_file else None,
            )
        self.mqtt = MqttConnection(
            url=s.mqtt.url,
            client_id=s.client_id,
            on_connect=self._on_connect,
            on_message=self.intake.on_message,
            username=s.mqtt.username,
            password=s.mqtt.password.get_secret_value() if s.mqtt.password else None,
            tls=tls,
            will=Will(self.topics.status, self._status("offline")),
            keepalive_s=s.mqtt.keepalive_s,
            session_expiry_s=s.mqtt.session_expiry_s,
            reconnect_min_s=s.mqtt.reconnect_min_s,
            reconnect_max_s=s.mqtt.reconnect_max_s,
        )

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the model is not loaded yet")
        return self._engine

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
        log.info("agent_stopped")
        return 0

    def _start(self, stack: ExitStack) -> None:
        s = self.settings
        self._engine = Engine(
            resolve_model_dir(s),
            name=s.model.name,
            provider=s.model.provider,
            threads=s.model.threads,
        )
        self.worker.start()
        stack.callback(self.worker.stop)
        connected = self.mqtt.start(connect_timeout_s=s.mqtt.connect_timeout_s)
        stack.callback(self.mqtt.stop)
        if not connected:
            log.warning("mqtt_not_connected_yet", broker=str(s.mqtt.url), hint="still retrying")
        log.info(
            "agent_started",
            device_id=s.device_id,
            model=s.model.name,
            provider=self.engine.provider,
            request_topic=self.topics.request,
        )

    def _drain(self) -> None:
        self.intake.close()
        timeout = self.settings.limits.drain_timeout_s
        log.info("draining", in_flight=self.worker.depth, timeout_s=timeout)
        for job in self.worker.drain(timeout):
            self._reply_job(
                job,
                Response.failure(
                    job.request.id,
                    ErrorCode.SHUTTING_DOWN,
                    "the agent stopped before this request was answered",
                    retry_after_ms=self.settings.limits.busy_retry_ms,
                ),
            )
        # A clean DISCONNECT suppresses the will, so say offline ourselves.
        self.mqtt.publish(self.topics.status, self._status("offline"), qos=1, retain=True)

    # -- MQTT side (network thread) ----------------------------------------

    def _on_connect(self) -> None:
        self.mqtt.subscribe([(self.topics.request, 1)])
        self.mqtt.publish(self.topics.status, self._status("online"), qos=1, retain=True)

    def _status(self, state: Literal["online", "offline"]) -> bytes:
        status = Status(
            device_id=self.settings.device_id,
            state=state,
            model=self.settings.model.name,
            provider=self._engine.provider if self._engine else None,
            version=__version__,
            ts=time.time(),
        )
        return status.to_wire()

    def send_reply(self, route: ReplyRoute, response: Response) -> None:
        self.mqtt.publish(
            route.topic,
            response.to_wire(),
            qos=1,
            correlation_data=route.correlation_data,
        )

    # -- worker side -----------------------------------------------------

    def _answer(self, job: Job) -> Response:
        stop = StopWhen(deadline=job.deadline, cancel=self.worker.cancelled)
        return answer(self.engine, job.request, max_tokens=job.max_tokens, stop=stop)

    def _reply_job(self, job: Job, response: Response) -> None:
        response = with_latency(response, job.received_at)
        with structlog.contextvars.bound_contextvars(request_id=job.request.id):
            log.info(
                "request_answered",
                ok=response.ok,
                source=response.source.value if response.source else None,
                confidence=response.confidence,
                latency_ms=response.latency_ms,
                error=response.error.code.value if response.error else None,
            )
        self.send_reply(job.route, response)
