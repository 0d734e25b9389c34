"""The fleet view: device telemetry and status, written to the shared store.

paho's network thread only checks the size and hands the raw message to one
writer thread through a bounded queue (full: the message is dropped and
counted; telemetry counters are cumulative, so the next sample makes up for
it). The writer parses, checks identity and writes.

Identity rule, as for escalations: the device id in the topic (which the
broker's ACL ties to the publishing certificate) must equal the payload's
``device_id``, else the message is rejected and logged.

Restarts: ``Telemetry`` counters are cumulative since the agent's
``started_at``. When a device's ``started_at`` changes, the store adds the
previous run's last totals to the device's prior totals, so ``devices`` and
``stats`` show totals over every run the relay has seen. Increments the old
run made after its last telemetry was delivered are lost (at most one
``telemetry.interval_s`` worth).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel

from cloud_relay.store import RelayStore, StatusUpdate, TelemetrySample
from edge_slm.contract import Status, Telemetry, WireError, decode
from edge_slm.logs import get_logger
from edge_slm.mqtt import Inbound
from edge_slm.queues import stop_consumer
from edge_slm.topics import device_of

log = get_logger("cloud_relay.fleet")

TELEMETRY = "telemetry"
STATUS = "status"
_STOP = object()
M = TypeVar("M", bound=BaseModel)
#: How often the writer refreshes its cached count of online devices when idle.
REFRESH_S = 30.0


class FleetRejected(WireError):
    """A well-formed telemetry or status message that speaks for another device."""


@dataclass(frozen=True, slots=True)
class FleetMessage:
    topic: str
    leaf: str  # telemetry | status
    device_id: str
    payload: bytes
    retain: bool
    received_at: float


def leaf_of(topic: str) -> str:
    return topic.rsplit("/", 1)[-1]


def _inbound_model(model: type[M], payload: bytes, device_id: str) -> M:
    """Decode ``payload`` as ``model`` and check that it speaks for ``device_id``."""
    parsed = decode(model, payload)
    claimed = getattr(parsed, "device_id", None)
    if claimed != device_id:
        raise FleetRejected(f"device id mismatch: topic {device_id!r}, payload {claimed!r}")
    return parsed


def parse_telemetry(msg: FleetMessage) -> TelemetrySample:
    t = _inbound_model(Telemetry, msg.payload, msg.device_id)
    return TelemetrySample(
        device_id=msg.device_id,
        ts=t.ts,
        received_at=msg.received_at,
        started_at=t.started_at,
        model=t.model,
        provider=t.provider,
        requests=dict(t.requests),
        escalations=t.escalations,
        cost_avoided_usd=t.cost_avoided_usd,
        latency_ms={src: (s.p50_ms, s.p95_ms) for src, s in t.latency.items()},
        conditions=list(t.conditions) if t.conditions is not None else None,
        raw=t.to_wire().decode(),
    )


def parse_status(msg: FleetMessage) -> StatusUpdate:
    s = _inbound_model(Status, msg.payload, msg.device_id)
    return StatusUpdate(
        device_id=msg.device_id,
        state=s.state,
        received_at=msg.received_at,
        ts=s.ts,
        live=not msg.retain,
        model=s.model,
        provider=s.provider,
        version=s.version,
        conditions=list(s.conditions) if s.conditions is not None else None,
        model_version=s.model_state.version if s.model_state is not None else None,
        heads=dict(s.heads) if s.heads is not None else None,
        embedder=s.embedder,
    )


class FleetWriter:
    """One thread that turns telemetry and status messages into store rows."""

    def __init__(
        self,
        store: RelayStore,
        *,
        prefix: str,
        queue_size: int,
        max_payload_bytes: int,
        on_written: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._prefix = prefix
        self._max_payload = max_payload_bytes
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._loop, name="relay-fleet", daemon=True)
        self._on_written = on_written
        self.dropped = 0
        self.rejected = 0
        self.online = 0  # cached count of online devices (fleet-wide), for the gauge

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._refresh()
        self._thread.start()

    # -- network thread: cheap only ------------------------------------------

    def submit(self, msg: Inbound) -> None:
        device = device_of(msg.topic, self._prefix)
        leaf = leaf_of(msg.topic)
        if device is None or leaf not in (TELEMETRY, STATUS):
            log.warning("fleet_topic_unusable", topic=msg.topic)
            return
        if len(msg.payload) > self._max_payload:
            self.rejected += 1
            log.warning("fleet_message_rejected", device_id=device, kind=leaf, error="too large")
            return
        if not msg.payload:
            return  # a cleared retained status: nothing to record
        item = FleetMessage(msg.topic, leaf, device, msg.payload, msg.retain, time.time())
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            log.warning("fleet_message_dropped", device_id=device, kind=leaf, reason="queue full")

    # -- writer thread ---------------------------------------------------------

    def _loop(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=REFRESH_S)
            except queue.Empty:
                self._refresh()
                continue
            if item is _STOP:
                return
            assert isinstance(item, FleetMessage)  # noqa: S101 - only we put items here
            try:
                self.handle(item)
            except Exception:  # a store hiccup must not kill the writer
                log.exception("fleet_write_failed", device_id=item.device_id, kind=item.leaf)

    def handle(self, msg: FleetMessage) -> None:
        try:
            if msg.leaf == TELEMETRY:
                latest = self._store.record_telemetry(parse_telemetry(msg))
                log.debug("telemetry_recorded", device_id=msg.device_id, latest=latest)
            else:
                update = parse_status(msg)
                self._store.record_status(update)
                self._refresh()
                log.info(
                    "device_status",
                    device_id=msg.device_id,
                    state=update.state,
                    retained=not update.live,
                )
        except WireError as exc:
            self.rejected += 1
            log.warning(
                "fleet_message_rejected",
                device_id=msg.device_id,
                kind=msg.leaf,
                code=exc.code.value,
                error=str(exc),
            )
            return
        if self._on_written is not None:
            self._on_written(msg.leaf)

    def _refresh(self) -> None:
        try:
            self.online = self._store.count_online()
        except Exception:  # best effort: the gauge keeps its last value
            log.warning("fleet_count_failed", exc_info=True)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (up to ``timeout_s``), then end the thread."""
        if not stop_consumer(self._queue, _STOP, self._thread, timeout_s):
            log.warning("fleet_stop_queue_full")
