"""The edge agent's supervised lifecycle, and the composition root.

Start-up, in order: load the model, open the outbox, start the timer thread
and the inference worker, connect to MQTT (subscribe, publish the retained
birth and re-publish pending escalations on every connect). SIGTERM or
SIGINT: stop intake, drain in-flight work up to ``drain_timeout_s``, answer
what is left with ``shutting_down``, publish ``offline``, then undo start-up
in reverse order (ExitStack).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Literal

import structlog
from prometheus_client import start_http_server

from agent.answering import EDGE_REASON, answer, with_latency
from agent.cloud.escalator import Escalator
from agent.cloud.outbox import Outbox
from agent.cloud.scheduler import Scheduler
from agent.config import AgentSettings
from agent.engine.engine import Engine, StopWhen
from agent.engine.holder import ModelHolder, ModelSpec
from agent.engine.selftest import run_self_test
from agent.intake import Intake
from agent.models.ota import OtaUpdater
from agent.policy.redact import Redactor
from agent.policy.router import Router
from agent.recent import RecentRequests
from agent.routing import ReplyRoute
from agent.skills import SkillRegistry
from agent.skills.embedding import Embedder
from agent.telemetry import TelemetryRecorder
from agent.worker import InferenceWorker, Job
from edge_slm import __version__
from edge_slm.contract import (
    DesiredModel,
    DeviceConfig,
    ErrorCode,
    EscalationReason,
    ModelUpdate,
    ModelUpdateState,
    Response,
    Status,
    Task,
    WireError,
    decode,
)
from edge_slm.lifecycle import Lifecycle
from edge_slm.logs import get_logger
from edge_slm.mqtt import Inbound, Will
from edge_slm.settings import is_loopback

log = get_logger("agent.daemon")


def resolve_model(settings: AgentSettings) -> ModelSpec:
    """The model to start with: the persisted over-the-air choice, else the configured one."""
    from agent.models import ModelCache, default_cache_dir
    from agent.models.ota import OtaState, installed_spec

    cache = ModelCache(settings.model.cache_dir or default_cache_dir())
    if settings.ota.enabled:
        spec = installed_spec(OtaState.read(settings.ota_state_path), cache)
        if spec is not None:
            return spec
    if settings.model.path is not None:
        return ModelSpec(name=settings.model.name, path=settings.model.path)
    return ModelSpec(name=settings.model.name, path=cache.require(settings.model.name))


def resolve_model_dir(settings: AgentSettings) -> Path:
    return resolve_model(settings).path


def load_embedder(settings: AgentSettings) -> Embedder | None:
    """The skills' embedding stage, or None when off or not installed (then skills
    run on the SLM alone, with their ``slm_only`` fit)."""
    from agent.models import ModelCache, default_cache_dir
    from agent.models.embedders import installed

    name = settings.model.embedder
    if not name:
        return None
    folder = installed(ModelCache(settings.model.cache_dir or default_cache_dir()), name)
    if folder is None:
        log.warning(
            "embedder_missing",
            embedder=name,
            hint=f"`edge-agent models build {name} --install-source`; skills use the SLM alone",
        )
        return None
    try:
        return Embedder(folder, name=name, threads=settings.model.threads)
    except Exception:  # onnxruntime's load errors share no base class: degrade, don't die
        log.exception("embedder_load_failed", embedder=name)
        return None


class AgentDaemon(Lifecycle):
    name = "agent"

    def __init__(self, settings: AgentSettings) -> None:
        super().__init__()
        self.settings = settings
        self.topics = settings.topics
        self._models: ModelHolder[Engine] | None = None
        self._ota: OtaUpdater[Engine] | None = None
        self._escalator: Escalator | None = None
        self._startup_conditions: set[str] = set()
        self._outbox: Outbox | None = None
        self._embedder: Embedder | None = None
        s = settings
        self.scheduler = Scheduler()
        self.telemetry = TelemetryRecorder(
            device_id=s.device_id, model=s.model.name, settings=s.telemetry
        )
        self.router = Router(s.policy, s.cloud, budget_left=self._budget_left)
        self.worker = InferenceWorker(
            self._answer, self._finish, queue_size=s.limits.queue_size, on_idle=self._worker_idle
        )
        self.recent = RecentRequests()
        # Requests are PUBACKed only once answered (see agent/recent.py), so the
        # broker redelivers what a killed agent was holding.
        self.mqtt = s.mqtt.connection(
            client_id=s.client_id,
            on_connect=self._on_connect,
            on_message=self._on_message,
            will=Will(self.topics.status, self._status("offline")),
            manual_ack=True,
        )
        self.skills = SkillRegistry(s.skills, builtin=s.builtin_skills)
        self.intake = Intake(
            topics=self.topics,
            limits=s.limits,
            submit=self._submit,
            queue_depth=lambda: self.worker.depth,
            send_reply=self._publish_reply,
            send_final=self.send_reply,
            ack=self.mqtt.ack,
            recent=self.recent,
            skills=self.skills.get,
        )

    @property
    def models(self) -> ModelHolder[Engine]:
        if self._models is None:
            raise RuntimeError("the model is not loaded yet")
        return self._models

    @property
    def engine(self) -> Engine:
        """The current engine, loaded if it was unloaded (worker thread only)."""
        return self.models.get()

    @property
    def provider(self) -> str | None:
        return self._models.provider if self._models else None

    @property
    def escalator(self) -> Escalator:
        if self._escalator is None:
            raise RuntimeError("the outbox is not open yet")
        return self._escalator

    # -- lifecycle -------------------------------------------------------

    def healthy(self) -> bool | str:
        busy = self.worker.busy_for()
        if busy > self.settings.limits.worker_stall_s:
            return f"inference worker made no progress for {busy:.1f} s"
        if not self.mqtt.loop_alive:
            return "the MQTT network thread is dead"
        return True

    def status_line(self) -> str:
        provider = self.provider or "loading"
        outbox = self._outbox.depth() if self._outbox else 0
        name = self._models.name if self._models else self.settings.model.name
        return (
            f"{name} on {provider}; queue {self.worker.depth}; "
            f"outbox {outbox}; mqtt {'up' if self.mqtt.is_connected else 'down'}"
        )

    def _start(self, stack: ExitStack) -> None:
        s = self.settings
        self.notifier.extend_timeout(120)  # a big model can take a while to load
        loading = time.perf_counter()
        spec = resolve_model(s)
        engine = self._load_engine(spec)
        load_s = time.perf_counter() - loading
        check = run_self_test(engine, load_s=load_s, requested=s.model.provider)
        log.info(
            "self_test",
            load_s=round(check.load_s, 2),
            tok_s=check.tok_s,
            ttft_ms=check.ttft_ms,
            provider=check.provider,
        )
        if check.fell_back:
            log.warning("provider_fallback", requested=check.requested, provider=check.provider)
            self._startup_conditions.add("provider_fallback")
        self._models = ModelHolder(
            spec,
            self._load_engine,
            idle_unload_s=s.model.idle_unload_s,
            pinned=self._startup_pin(),
            engine=engine,
            load_s=load_s,
            on_change=self._model_changed,
        )
        del engine
        self._embedder = load_embedder(s)
        self.telemetry.set_model(spec.name)
        if spec.version is not None:
            log.info("model_from_ota", model=spec.name, version=spec.version, path=str(spec.path))
        self._outbox = outbox = Outbox(
            s.outbox_path, max_rows=s.outbox.max_rows, max_bytes=s.outbox.max_bytes
        )
        stack.callback(outbox.close)
        # Beside the outbox, in the state directory: replies the broker confirmed.
        remembered = self.recent.open(s.outbox_path.with_name("replied.db"))
        stack.callback(self.recent.close)
        log.info("replied_cache_loaded", replies=remembered)
        self._escalator = Escalator(
            topics=self.topics,
            outbox=outbox,
            scheduler=self.scheduler,
            redactor=Redactor(s.policy.redact_names),
            cloud=s.cloud,
            outbox_settings=s.outbox,
            publish=self._publish_escalation,
            send_reply=self.send_reply,
            on_conditions=self._publish_status,
        )
        self.scheduler.start()
        stack.callback(self.scheduler.stop)
        self.scheduler.every(s.outbox.sweep_interval_s, self.escalator.sweep)
        self.scheduler.every(s.telemetry.interval_s, self._publish_telemetry)
        if s.metrics.port:
            self._serve_metrics(stack)
        self.worker.start()
        stack.callback(self.worker.stop)
        if s.ota.enabled:
            self._start_ota(stack)
        connected = self.mqtt.start(connect_timeout_s=s.mqtt.connect_timeout_s)
        stack.callback(self.mqtt.stop)
        if not connected:
            log.warning("mqtt_not_connected_yet", broker=str(s.mqtt.url), hint="still retrying")
        log.info(
            "agent_started",
            device_id=s.device_id,
            model=self.models.name,
            provider=self.provider,
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

    # -- model lifecycle -----------------------------------------------------

    def _load_engine(self, spec: ModelSpec) -> Engine:
        m = self.settings.model
        return Engine(
            spec.path, name=spec.name, provider=m.provider, threads=m.threads, spin=m.spin
        )

    def _startup_pin(self) -> bool:
        if self.settings.ota.enabled:
            from agent.models.ota import OtaState

            pin = OtaState.read(self.settings.ota_state_path).pin
            if pin is not None:
                return pin
        return self.settings.model.pin

    def _model_changed(self) -> None:
        """A load, unload, swap or pin change: telemetry and the retained status follow."""
        if self._models is not None:
            self.telemetry.set_model(self._models.name)
        self._publish_status()

    def _start_ota(self, stack: ExitStack) -> None:
        from agent.models import ModelCache, default_cache_dir

        s = self.settings
        self._ota = ota = OtaUpdater[Engine](
            cache=ModelCache(s.model.cache_dir or default_cache_dir()),
            work_dir=s.ota_work_dir,
            state_path=s.ota_state_path,
            current=lambda: self.models.spec,
            load=self._load_engine,
            self_test=self._ota_self_test,
            swap=self._ota_swap,
            set_pin=self.models.set_pinned,
            report=self._report_update,
            max_archive_bytes=s.ota.max_archive_bytes,
            max_unpacked_bytes=s.ota.max_unpacked_bytes,
            http_timeout_s=s.ota.http_timeout_s,
            retries=s.ota.retries,
        )
        ota.start()
        stack.callback(ota.stop)

    def _ota_self_test(self, engine: Engine) -> None:
        check = run_self_test(engine, load_s=0.0, requested=self.settings.model.provider)
        log.info("model_update_self_test", tok_s=check.tok_s, ttft_ms=check.ttft_ms)

    def _on_worker(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the inference worker between two requests and wait for it.

        If the wait times out, ``fn`` is cancelled: it must never run after the
        caller has given up (and reported a rollback).
        """
        done = threading.Event()
        lock = threading.Lock()
        state: dict[str, object] = {"cancelled": False, "error": None}

        def run() -> None:
            with lock:
                if state["cancelled"]:
                    return
                try:
                    fn()
                except Exception as exc:  # noqa: BLE001 - re-raised on the waiting thread
                    state["error"] = exc
                finally:
                    done.set()

        self.worker.call_soon(run)
        if not done.wait(self.settings.ota.swap_timeout_s):
            with lock:
                if not done.is_set():
                    state["cancelled"] = True
                    raise TimeoutError(
                        f"the running request did not finish within "
                        f"{self.settings.ota.swap_timeout_s:.0f} s"
                    )
        error = state["error"]
        if isinstance(error, Exception):
            raise error

    def _ota_swap(self, spec: ModelSpec, engine: Engine, load_s: float) -> Callable[[], None]:
        """Swap on the worker; return how to swap back (the previous engine lives until then)."""
        previous: list[tuple[ModelSpec, Engine | None]] = []
        self._on_worker(lambda: previous.append(self.models.swap(spec, engine, load_s=load_s)))

        def undo() -> None:
            self._on_worker(lambda: self.models.restore(*previous.pop()))

        return undo

    def _report_update(self, update: ModelUpdate) -> None:
        self._publish_status()

    def _on_desired_model(self, msg: Inbound) -> None:
        """A retained DesiredModel from the relay: validate, then hand it to the OTA thread."""
        if not msg.payload:
            return  # cleared: keep the current model
        if self._ota is None:
            log.warning("model_update_rejected", error="over-the-air updates are disabled")
            return
        try:
            desired = decode(DesiredModel, msg.payload)
        except WireError as exc:
            log.warning("model_update_rejected", code=exc.code.value, error=str(exc)[:300])
            return
        if desired.device_id != self.settings.device_id:
            log.warning(
                "model_update_rejected", error="device_id mismatch", device_id=desired.device_id
            )
            return
        self._ota.submit(desired)

    # -- MQTT side (network thread) ----------------------------------------

    def _on_connect(self) -> None:
        self.mqtt.subscribe(
            [
                (self.topics.request_filter(), 1),
                (self.topics.cloud, 1),
                (self.topics.config, 1),
                (self.topics.model, 1),
            ]
        )
        self._publish_status()
        self.escalator.republish()

    def _publish_telemetry(self) -> None:
        outbox = self._outbox
        snapshot = self.telemetry.snapshot(
            provider=self.provider or "unloaded",
            outbox_depth=outbox.depth() if outbox else 0,
            dropped={
                "full": outbox.counter("dropped_full") if outbox else 0,
                "expired": outbox.counter("dropped_expired") if outbox else 0,
                "unwritable": self.escalator.unwritable_drops,
            },
            conditions=self._conditions(),
        )
        self.mqtt.publish(self.topics.telemetry, snapshot.to_wire(), qos=1)

    def _serve_metrics(self, stack: ExitStack) -> None:
        m = self.settings.metrics
        if not is_loopback(m.host):
            log.warning("metrics_not_on_loopback", host=m.host, port=m.port)
        server, _thread = start_http_server(m.port, addr=m.host, registry=self.telemetry.registry)
        stack.callback(server.shutdown)
        log.info("metrics_serving", host=m.host, port=m.port)

    def _conditions(self) -> list[str]:
        escalator = set(self._escalator.conditions) if self._escalator else set()
        update = self._ota.update if self._ota else None
        if update is not None and update.state is ModelUpdateState.FAILED:
            escalator.add("model_update_failed")
        return sorted(self._startup_conditions | escalator)

    def _publish_status(self) -> None:
        self.mqtt.publish(self.topics.status, self._status("online"), qos=1, retain=True)

    def _on_message(self, msg: Inbound) -> None:
        if msg.topic not in (self.topics.cloud, self.topics.config, self.topics.model):
            self.intake.on_message(msg)  # acks each request once it is answered
            return
        try:
            if msg.topic == self.topics.cloud:
                self.escalator.on_cloud(msg)
            elif msg.topic == self.topics.config:
                self._on_config(msg)
            else:
                self._on_desired_model(msg)
        finally:
            # Handled (or refused, and logged): a redelivery would not change that, and
            # unacked messages would use up the broker's in-flight window.
            self.mqtt.ack(msg)

    def _on_config(self, msg: Inbound) -> None:
        """A retained DeviceConfig from the relay: validate, then apply live."""
        if not msg.payload:
            return  # the retained config was cleared; keep the current settings
        try:
            config = decode(DeviceConfig, msg.payload)
        except WireError as exc:
            log.warning("config_rejected", code=exc.code.value, error=str(exc)[:300])
            return
        if config.device_id != self.settings.device_id:
            log.warning("config_rejected", error="device_id mismatch", device_id=config.device_id)
            return
        changes = self.router.update(thresholds=config.thresholds, shadow_rate=config.shadow_rate)
        if config.skills is not None:  # kept prefixes of changed skills go on first use
            changes["skills"] = self.skills.set_pushed(config.skills)
        log.info(
            "config_applied",
            changes=changes,
            issued_by=config.issued_by,
            issued_at=config.issued_at,
        )

    def _publish_escalation(
        self, topic: str, payload: bytes, correlation: bytes, expiry_s: int
    ) -> None:
        self.mqtt.publish(
            topic,
            payload,
            qos=1,
            correlation_data=correlation,
            message_expiry_s=expiry_s,
            user_properties=[("device_id", self.settings.device_id)],
        )

    def _budget_left(self) -> bool:
        limit = self.settings.cloud.max_escalations_per_day
        outbox = self._outbox
        return limit == 0 or outbox is None or outbox.escalations_on(time.time()) < limit

    def _submit(self, job: Job, topic: str) -> bool:
        """Route before generation, escalate early if so decided, then queue."""
        decision = self.router.before(job.request, topic)
        reason = decision.reason if decision.escalate else None
        if reason is not None:
            if self.escalator.escalate(job, reason, decision.text, None):
                self.telemetry.escalated(reason)
            else:
                decision = dataclasses.replace(decision, escalate=False)  # outbox full
        if self.worker.submit(dataclasses.replace(job, decision=decision)):
            return True
        if decision.escalate:
            self.escalator.forget(job.request.id)  # the app gets `busy`; the row stays
        return False

    def _status(self, state: Literal["online", "offline"]) -> bytes:
        status = Status(
            device_id=self.settings.device_id,
            state=state,
            model=self._models.name if self._models else self.settings.model.name,
            provider=self.provider,
            version=__version__,
            conditions=self._conditions() or None,
            model_state=self._models.state() if self._models else None,
            model_update=self._ota.update if self._ota else None,
            ts=time.time(),
        )
        return status.to_wire()

    def send_reply(self, route: ReplyRoute, response: Response) -> None:
        """Publish the reply of an admitted request; a final one settles its deliveries.

        The request's PUBACKs wait for the broker's PUBACK of the reply, so a crash
        before the reply is safe leaves the request unacked, and the broker
        redelivers it to the next run.
        """
        if response.id is None or response.supersedes:
            self._publish_reply(route, response)
            return
        key = (route.topic, response.id)
        payload = response.to_wire()  # one serialization: the kept copy is the sent bytes
        deliveries = self.recent.finish(key, response, payload)
        if deliveries is None:
            log.info("duplicate_reply_dropped", request_id=response.id, reply_topic=route.topic)
            return

        def settle() -> None:
            self.recent.delivered(key)
            for delivery in deliveries:
                self.mqtt.ack(delivery)

        self._publish_reply(route, response, payload, on_delivered=settle)

    def _publish_reply(
        self,
        route: ReplyRoute,
        response: Response,
        payload: bytes | None = None,
        on_delivered: Callable[[], None] | None = None,
    ) -> None:
        self.telemetry.reply(response)
        self.mqtt.publish(
            route.topic,
            response.to_wire() if payload is None else payload,
            qos=1,
            correlation_data=route.correlation_data,
            on_delivered=on_delivered,
        )

    # -- worker side -----------------------------------------------------

    def _answer(self, job: Job) -> Response:
        stop = StopWhen(deadline=job.deadline, cancel=self.worker.cancelled)
        engine = self.engine  # loads the model first when it was unloaded
        try:
            response = answer(
                engine,
                job.request,
                max_tokens=job.max_tokens,
                stop=stop,
                skill=job.skill,
                embedder=self._embedder,
            )
        finally:
            self.models.touch()
        if response.ok and job.request.task is not Task.CLASSIFY:
            self.telemetry.decoded(engine.last_decode_tok_s)
        return response

    def _worker_idle(self) -> None:
        if self._models is not None:
            self._models.unload_if_idle()

    def _finish(self, job: Job, edge: Response) -> None:
        """The edge answer is ready (worker thread): reply, or escalate."""
        edge = with_latency(edge, job.received_at)
        before = job.decision
        if before is not None and before.escalate:
            self.escalator.edge_ready(job.request.id, edge)
            return
        if before is not None:
            after = self.router.after(job.request, edge, before)
            reason = after.text
            if after.escalate and after.reason is not None:
                if self.escalator.escalate(job, after.reason, after.text, edge):
                    self.telemetry.escalated(after.reason)
                    return
                reason = f"{after.text}; not escalated: the outbox refused it"
            elif (
                after.allowed
                and edge.ok
                and self.router.sample_shadow()
                and self.escalator.shadow(job, edge)
            ):
                self.telemetry.escalated(EscalationReason.SHADOW)
            if edge.ok:
                # A rule's basis ("by the skill's bands: ...") stays in front of the router's.
                basis = None if edge.reason == EDGE_REASON else edge.reason
                edge = edge.model_copy(update={"reason": f"{basis}; {reason}" if basis else reason})
        self._reply_job(job, edge)

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
