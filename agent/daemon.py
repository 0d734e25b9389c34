"""The edge agent's supervised lifecycle, and the composition root.

Start-up, in order: load the model, open the outbox, start the timer thread
and the request pipeline (its dispatch thread and the inference worker, see
``agent/handler.py``), connect to MQTT (subscribe, publish the retained birth
and re-send pending escalations on every connect). SIGTERM or SIGINT: stop
intake, drain in-flight work up to ``drain_timeout_s``, answer what is left
with ``shutting_down``, publish ``offline``, then undo start-up in reverse
order (ExitStack).

The retained config and desired model are taken in here, on the network
thread: both are cheap (a validation, a hand-over to the OTA thread). So are
the skill heads the relays push (``agent/heads.py``: decoded here, applied on
their own thread); the status names the head version of every skill.
"""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Literal

from prometheus_client import start_http_server

from agent.actions import TOOL_SETS
from agent.cloud.escalator import Escalator
from agent.cloud.outbox import Outbox
from agent.cloud.scheduler import Scheduler
from agent.config import AgentSettings
from agent.engine.engine import Engine
from agent.engine.holder import ModelHolder, ModelSpec
from agent.engine.selftest import run_self_test
from agent.handler import ModelAnswerer, RequestHandler
from agent.heads import HeadIntake
from agent.inbound import decode_or_log
from agent.models.ota import OtaUpdater
from agent.policy.redact import Redactor
from agent.policy.router import Router
from agent.recent import RecentRequests
from agent.routing import ReplyRoute
from agent.skills import SkillRegistry, head_stage
from agent.skills.embedding import Embedder
from agent.skills.label_heads import LabelHeads
from agent.telemetry import TelemetryRecorder
from agent.worker import InferenceWorker
from edge_slm import __version__
from edge_slm.contract import (
    DesiredModel,
    DeviceConfig,
    ModelUpdate,
    ModelUpdateState,
    Response,
    Status,
)
from edge_slm.lifecycle import Lifecycle
from edge_slm.logs import get_logger
from edge_slm.mqtt import Inbound, Will
from edge_slm.settings import is_loopback
from edge_slm.topics import relay_status_filter

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
    run on the SLM alone, with their ``slm_only`` fit).

    A configured encoder that is not installed falls back to the default one when that
    is (``embedder_fallback``): a profile may name a larger encoder the device did not
    get, and the default's head beats no head (the relay learns for every encoder of
    ``learn.encoders``, and the status names the one loaded)."""
    from agent.models import ModelCache, default_cache_dir
    from agent.models.embedders import DEFAULT_EMBEDDER, installed

    name = settings.model.embedder
    if not name:
        return None
    cache = ModelCache(settings.model.cache_dir or default_cache_dir())
    folder = installed(cache, name)
    if folder is None and name != DEFAULT_EMBEDDER:
        folder = installed(cache, DEFAULT_EMBEDDER)
        if folder is not None:
            log.warning(
                "embedder_fallback",
                embedder=name,
                using=DEFAULT_EMBEDDER,
                hint=f"`edge-agent models build {name} --install-source`, or a bundle with it",
            )
            name = DEFAULT_EMBEDDER
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
        self._handler: RequestHandler | None = None
        self._startup_conditions: set[str] = set()
        self._outbox: Outbox | None = None
        self._heads: HeadIntake | None = None
        self._embedder_name: str | None = None  # the loaded encoder's, once loaded
        s = settings
        self.scheduler = Scheduler()
        self.telemetry = TelemetryRecorder(
            device_id=s.device_id, model=s.model.name, settings=s.telemetry
        )
        self.router = Router(s.policy, s.cloud, budget_left=self._budget_left)
        self.recent = RecentRequests()
        # Before the will: a status names the skills' head versions.
        self.skills = SkillRegistry(s.skills, builtin=s.builtin_skills)
        self.label_heads = LabelHeads()
        TOOL_SETS.set_configured(s.tool_sets)
        # Requests are PUBACKed only once answered (see agent/recent.py), so the
        # broker redelivers what a killed agent was holding.
        self.mqtt = s.mqtt.connection(
            client_id=s.client_id,
            on_connect=self._on_connect,
            on_message=self._on_message,
            will=Will(self.topics.status, self._status("offline")),
            manual_ack=True,
        )

    @property
    def models(self) -> ModelHolder[Engine]:
        if self._models is None:
            raise RuntimeError("the model is not loaded yet")
        return self._models

    @property
    def provider(self) -> str | None:
        return self._models.provider if self._models else None

    @property
    def escalator(self) -> Escalator:
        if self._escalator is None:
            raise RuntimeError("the outbox is not open yet")
        return self._escalator

    @property
    def handler(self) -> RequestHandler:
        if self._handler is None:
            raise RuntimeError("the request pipeline is not started yet")
        return self._handler

    @property
    def worker(self) -> InferenceWorker:
        return self.handler.worker

    # -- lifecycle -------------------------------------------------------

    def healthy(self) -> bool | str:
        if self._handler is not None:
            busy = self._handler.worker.busy_for()
            if busy > self.settings.limits.worker_stall_s:
                return f"inference worker made no progress for {busy:.1f} s"
            if not self._handler.dispatch_alive:
                return "the dispatch thread is dead"
        if not self.mqtt.loop_alive:
            return "the MQTT network thread is dead"
        return True

    def status_line(self) -> str:
        provider = self.provider or "loading"
        outbox = self._outbox.depth() if self._outbox else 0
        name = self._models.name if self._models else self.settings.model.name
        depth = self._handler.worker.depth if self._handler else 0
        return (
            f"{name} on {provider}; queue {depth}; "
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
        embedder = load_embedder(s)
        self._embedder_name = embedder.name if embedder is not None else None
        if embedder is not None and embedder.name != s.model.embedder:
            self._startup_conditions.add("embedder_fallback")
        if embedder is not None:
            self._warm_heads(embedder, stack)
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
            send_reply=self._send_reply,
            on_conditions=self._publish_status,
        )
        self._handler = handler = RequestHandler(
            s,
            link=self.mqtt,
            escalator=self.escalator,
            router=self.router,
            telemetry=self.telemetry,
            recent=self.recent,
            skills=self.skills,
            answerer=ModelAnswerer(
                self.models,
                embedder=embedder,
                telemetry=self.telemetry,
                heads=self.skills.head,
                label_heads=self.label_heads.for_labels,
            ),
            on_idle=self._worker_idle,
        )
        self.scheduler.start()
        stack.callback(self.scheduler.stop)
        self.scheduler.every(s.outbox.sweep_interval_s, self.escalator.sweep)
        self.scheduler.every(s.telemetry.interval_s, self._publish_telemetry)
        if s.metrics.port:
            self._serve_metrics(stack)
        handler.start()
        stack.callback(handler.stop)
        # Skill heads the relays push: decoded on the network thread, applied on its own.
        self._heads = heads = HeadIntake(
            self.skills,
            self.label_heads,
            prefix=s.topic_prefix,
            embedder=self._embedder_name,
            on_applied=self._publish_status,
        )
        heads.start()
        stack.callback(heads.stop)
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

    def _warm_heads(self, embedder: Embedder, stack: ExitStack) -> None:
        """Fit the skill-text heads now, on a thread of their own: otherwise the first
        request of a skill pays for scikit-learn's import and the fit (1-4 s).

        Shutdown stops it at its next batch of texts and joins it: a thread still
        inside onnxruntime or scikit-learn when the interpreter exits aborts the
        process (SIGABRT), so a SIGTERM soon after start would not exit cleanly."""
        stop = threading.Event()

        def warm() -> None:
            try:
                fitted = head_stage.warm(self.skills.all(), embedder, stop=stop)
                log.info("heads_fitted", count=fitted)
            except Exception:  # the heads are then fitted on first use instead
                log.exception("heads_fit_failed")

        thread = threading.Thread(target=warm, name="heads-warm", daemon=True)
        thread.start()

        def join() -> None:
            stop.set()
            thread.join()

        stack.callback(join)

    def _drain(self) -> None:
        self.handler.drain(self.settings.limits.drain_timeout_s)
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
        desired = decode_or_log(
            DesiredModel,
            msg.payload,
            rejected="model_update_rejected",
            device_id=self.settings.device_id,
        )
        if desired is not None:
            self._ota.submit(desired)

    # -- MQTT side (network thread) ----------------------------------------

    def _on_connect(self) -> None:
        heads = self._heads.subscription if self._heads is not None else None
        self.mqtt.subscribe(
            [
                (self.topics.request_filter(), 1),
                (self.topics.cloud, 1),
                (self.topics.config, 1),
                (self.topics.model, 1),
                (relay_status_filter(self.settings.topic_prefix), 1),
                *([(heads, 1)] if heads is not None else []),
            ]
        )
        self._publish_status()
        self.handler.resend_pending()  # on the dispatch thread: the outbox is written

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
        heads = self._heads
        if heads is not None and heads.takes(msg.topic):
            try:
                heads.on_message(msg)
            finally:
                self.mqtt.ack(msg)
            return
        if msg.topic not in (self.topics.config, self.topics.model):
            self.handler.on_message(msg)  # requests, cloud replies, relays: acked when handled
            return
        try:
            if msg.topic == self.topics.config:
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
        config = decode_or_log(
            DeviceConfig, msg.payload, rejected="config_rejected", device_id=self.settings.device_id
        )
        if config is None:
            return
        changes = self.router.update(
            thresholds=config.thresholds,
            shadow_rate=config.shadow_rate,
            learning_shadow_rate=config.learning_shadow_rate,
        )
        if config.skills is not None:  # kept prefixes of changed skills go on first use
            changes["skills"] = self.skills.set_pushed(config.skills)
        if config.tool_sets is not None:  # a changed set's prompt key changes with it
            changes["tool_sets"] = TOOL_SETS.set_pushed(config.tool_sets)
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

    def _status(self, state: Literal["online", "offline"]) -> bytes:
        status = Status(
            device_id=self.settings.device_id,
            state=state,
            model=self._models.name if self._models else self.settings.model.name,
            provider=self.provider,
            version=__version__,
            arch=platform.machine() or None,
            conditions=self._conditions() or None,
            model_state=self._models.state() if self._models else None,
            model_update=self._ota.update if self._ota else None,
            heads=(self.skills.head_versions() | self.label_heads.versions()) or None,
            embedder=self._embedder_name,
            ts=time.time(),
        )
        return status.to_wire()

    def _send_reply(self, route: ReplyRoute, response: Response) -> None:
        """The escalator's replies: through the pipeline, built just after the escalator
        and before anything runs that could reply."""
        self.handler.send_reply(route, response)

    # -- worker side -----------------------------------------------------

    def _worker_idle(self) -> None:
        if self._models is not None:
            self._models.unload_if_idle()
