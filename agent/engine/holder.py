"""The model holder: owns the loaded engine, loads it on demand, unloads it when idle.

The inference worker is the only thread that runs the engine, and it reaches
it through :meth:`ModelHolder.get`, which (re)loads the model when it is not in
memory and measures how long that took. :meth:`unload_if_idle` and
:meth:`swap` are also called on the worker thread, between two requests (see
``InferenceWorker.call_soon`` and its idle hook), so no request ever sees a
half-swapped or half-unloaded engine. Other threads only read the snapshot
(:meth:`state`, :attr:`name`, :attr:`provider`), under the lock.

Idle unload gives a device its memory back when nobody asks anything for a
while (``model.idle_unload_s``); the next request pays the load time, which is
logged (``model_reloaded``) and reported in the status (``model_state``). A pinned
model is never unloaded.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from edge_slm.contract import ModelState
from edge_slm.logs import get_logger

log = get_logger("agent.engine.holder")


class LoadedModel(Protocol):
    """What the holder needs of an engine (the real one is ``Engine``)."""

    @property
    def provider(self) -> str: ...


E = TypeVar("E", bound=LoadedModel)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Which model to load, and how to report it."""

    name: str  # reported in replies, status and telemetry
    path: Path  # the onnxruntime-genai folder
    version: str | None = None  # sha256 prefix of the OTA archive; None for configured models
    cache_key: str | None = None  # the model cache entry, for OTA-installed models


class ModelHolder(Generic[E]):
    """The current model: lazily loaded, idle-unloaded unless pinned, swapped atomically."""

    def __init__(
        self,
        spec: ModelSpec,
        loader: Callable[[ModelSpec], E],
        *,
        idle_unload_s: float | None = None,
        pinned: bool = False,
        engine: E | None = None,
        load_s: float | None = None,
        on_change: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._spec = spec
        self._loader = loader
        self._idle_unload_s = idle_unload_s or None  # 0 means never
        self._pinned = pinned
        self._engine = engine
        self._provider = engine.provider if engine is not None else None
        self._loads = 1 if engine is not None else 0
        self._last_load_s = load_s
        self._on_change = on_change
        self._clock = clock
        self._last_used = clock()
        self._lock = threading.Lock()

    # -- snapshot (any thread) ---------------------------------------------

    @property
    def spec(self) -> ModelSpec:
        with self._lock:
            return self._spec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def provider(self) -> str | None:
        """Provider of the latest load (kept while the model is unloaded)."""
        with self._lock:
            return self._provider

    @property
    def loaded(self) -> bool:
        with self._lock:
            return self._engine is not None

    @property
    def pinned(self) -> bool:
        with self._lock:
            return self._pinned

    @property
    def loads(self) -> int:
        with self._lock:
            return self._loads

    @property
    def last_load_s(self) -> float | None:
        with self._lock:
            return self._last_load_s

    def state(self) -> ModelState:
        with self._lock:
            return ModelState(
                version=self._spec.version,
                loaded=self._engine is not None,
                pinned=self._pinned,
                idle_unload_s=self._idle_unload_s,
                loads=self._loads,
                last_load_ms=round(self._last_load_s * 1000, 1)
                if self._last_load_s is not None
                else None,
            )

    def set_pinned(self, pinned: bool) -> None:
        with self._lock:
            changed = pinned != self._pinned
            self._pinned = pinned
        if changed:
            log.info("model_pin_changed", model=self.name, pinned=pinned)
            self._changed()

    # -- worker thread -------------------------------------------------------

    def get(self) -> E:
        """The engine, loaded first if it is not in memory (worker thread only)."""
        with self._lock:
            engine = self._engine
            spec = self._spec
            self._last_used = self._clock()
        if engine is not None:
            return engine
        started = time.perf_counter()
        engine = self._loader(spec)
        load_s = time.perf_counter() - started
        with self._lock:
            self._engine = engine
            self._provider = engine.provider
            self._loads += 1
            self._last_load_s = load_s
            self._last_used = self._clock()
        log.info("model_reloaded", model=spec.name, load_ms=round(load_s * 1000, 1))
        self._changed()
        return engine

    def touch(self) -> None:
        """A request finished: idle time counts from now."""
        with self._lock:
            self._last_used = self._clock()

    def unload_if_idle(self) -> bool:
        """Drop the engine when unpinned and idle long enough (worker thread only)."""
        with self._lock:
            if self._engine is None or self._pinned or self._idle_unload_s is None:
                return False
            idle = self._clock() - self._last_used
            if idle < self._idle_unload_s:
                return False
            self._engine = None
            name = self._spec.name
        gc.collect()  # the runtime's buffers go with the last reference
        log.info("model_unloaded", model=name, idle_s=round(idle, 1))
        self._changed()
        return True

    def swap(self, spec: ModelSpec, engine: E, *, load_s: float) -> tuple[ModelSpec, E | None]:
        """Make ``engine`` current (worker thread only, between requests).

        Returns the previous spec and engine (None if it was unloaded) so that a
        caller can swap back when a later step fails.
        """
        with self._lock:
            previous = (self._spec, self._engine)
            self._spec = spec
            self._engine = engine
            self._provider = engine.provider
            self._loads += 1
            self._last_load_s = load_s
            self._last_used = self._clock()
        log.info(
            "model_swapped",
            model=spec.name,
            version=spec.version,
            previous=previous[0].name,
            previous_version=previous[0].version,
        )
        self._changed()
        return previous

    def restore(self, spec: ModelSpec, engine: E | None) -> None:
        """Put back what :meth:`swap` returned (worker thread only)."""
        with self._lock:
            self._spec = spec
            self._engine = engine
            if engine is not None:
                self._provider = engine.provider
            self._last_used = self._clock()
        gc.collect()
        log.info("model_restored", model=spec.name, version=spec.version)
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            try:
                self._on_change()
            except Exception:
                log.exception("model_change_callback_failed")
