"""A bounded pool of worker threads: paho's thread enqueues, workers do the slow part.

``submit`` never blocks the network thread: when the queue is full it returns
False and the caller sheds the escalation. ``drain`` stops intake, lets queued
and running work finish up to a timeout, and hands back what did not finish.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from edge_slm.logs import get_logger

log = get_logger("cloud_relay.pool")

T = TypeVar("T")
_STOP = object()


class WorkerPool(Generic[T]):
    def __init__(
        self, work: Callable[[T], None], *, workers: int, queue_size: int, name: str = "relay"
    ) -> None:
        self._work = work
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._threads = [
            threading.Thread(target=self._loop, name=f"{name}-worker-{i}", daemon=True)
            for i in range(workers)
        ]
        self._running: dict[int, T] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._accepting = True
        self._pending = 0  # submitted and not yet finished (queued or running)

    @property
    def depth(self) -> int:
        with self._lock:
            return self._pending

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    @property
    def alive(self) -> bool:
        """Whether every worker thread still runs (a dead one means lost capacity)."""
        return all(thread.is_alive() for thread in self._threads)

    def submit(self, item: T) -> bool:
        """Queue ``item``; False when intake is closed or the queue is full."""
        if not self._accepting:
            return False
        with self._lock:
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                return False
            self._pending += 1
        return True

    def _loop(self) -> None:
        ident = threading.get_ident()
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            with self._lock:
                self._running[ident] = item  # type: ignore[assignment]
            try:
                self._work(item)  # type: ignore[arg-type]
            except Exception:  # a failing handler is logged and never kills the worker
                log.exception("worker_item_failed")
            finally:
                with self._lock:
                    self._running.pop(ident, None)
                    self._pending -= 1
                    self._idle.notify_all()

    def drain(self, timeout_s: float) -> tuple[list[T], list[T]]:
        """Stop intake; wait for the work to finish. Returns (never started, still running)."""
        self._accepting = False
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._idle.wait(min(remaining, 0.1))
        queued: list[T] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                queued.append(item)  # type: ignore[arg-type]
        with self._lock:
            running = list(self._running.values())
        return queued, running

    def stop(self) -> None:
        """Ask the workers to exit (after ``drain``); threads still busy are daemons."""
        self._accepting = False
        for _ in self._threads:
            try:
                self._queue.put_nowait(_STOP)
            except queue.Full:
                break
        for thread in self._threads:
            thread.join(timeout=0.5)
