"""The inference worker: one thread owns the model, fed by a bounded queue.

A request takes its place in the queue on the MQTT network thread
(:meth:`InferenceWorker.reserve`); a full queue turns into a ``busy`` reply
there, which is the backpressure. The job itself arrives a moment later from
the dispatch thread (:meth:`InferenceWorker.put`, see ``agent/handler.py``),
once it is routed. Deadlines are checked when a job is taken off the queue and
between tokens during generation.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable

import structlog

from agent.jobs import Job
from edge_slm.contract import ErrorCode, Response
from edge_slm.logs import get_logger
from edge_slm.queues import drain

log = get_logger("agent.worker")

Answerer = Callable[[Job], Response]
Replier = Callable[[Job, Response], None]


class InferenceWorker:
    """Runs ``answerer`` for each job on a dedicated thread and hands the result to ``reply``."""

    def __init__(
        self,
        answerer: Answerer,
        reply: Replier,
        *,
        queue_size: int,
        on_idle: Callable[[], None] | None = None,
        idle_tick_s: float = 0.25,
    ) -> None:
        self._answerer = answerer
        self._reply = reply
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        #: Work that must run on this thread between two jobs (a model swap).
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._on_idle = on_idle  # called every idle_tick_s without a job (idle unload)
        self._idle_tick_s = idle_tick_s
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)
        self._outstanding = 0  # reserved + queued + running; guarded by _lock
        self._reserved = 0  # places held for jobs not yet put; guarded by _lock
        self._lock = threading.Lock()
        #: Set when draining runs out of time: the running generation stops at its
        #: next token instead of replying after MQTT is gone.
        self.cancelled = threading.Event()
        self._job_started: float | None = None  # monotonic start of the running job
        self.completed = 0

    @property
    def depth(self) -> int:
        with self._lock:
            return self._outstanding

    def start(self) -> None:
        self._thread.start()

    def busy_for(self) -> float:
        """Seconds the running job has taken: 0 when idle, infinite if the thread died."""
        if not self._thread.is_alive():
            return math.inf
        started = self._job_started
        return 0.0 if started is None else time.monotonic() - started

    def submit(self, job: Job) -> bool:
        """Enqueue without blocking; False when the queue is full."""
        if not self.reserve():
            return False
        self.put(job)
        return True

    def reserve(self) -> bool:
        """Hold a place in the queue for a job :meth:`put` later; False when full."""
        with self._lock:
            if self._queue.qsize() + self._reserved >= self._queue.maxsize:
                return False
            self._reserved += 1
            self._outstanding += 1
        return True

    def put(self, job: Job) -> None:
        """Queue ``job`` in the place :meth:`reserve` held (never blocks, never full)."""
        with self._lock:
            self._reserved -= 1
            self._queue.put_nowait(job)

    def release(self) -> None:
        """Give back a place :meth:`reserve` held for a job that will not come."""
        with self._lock:
            self._reserved -= 1
            self._outstanding -= 1

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the worker thread before the next job (at once when idle).

        It never runs in the middle of a job, so a model swapped by ``fn`` is
        seen whole by every request.
        """
        self._calls.put(fn)

    def _run_calls(self) -> None:
        while True:
            try:
                fn = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                fn()
            except Exception:
                log.exception("worker_call_failed")

    def _wait_idle(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.depth and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self.depth

    def drain(self, timeout_s: float, cancel_grace_s: float = 5.0) -> list[Job]:
        """Finish queued work for up to ``timeout_s``; return the queued jobs left undone.

        The caller must have stopped intake first, so nothing new arrives. On
        timeout the running job is cancelled (it replies ``shutting_down`` itself).
        """
        if self._wait_idle(timeout_s):
            return []
        leftover = [job for job in drain(self._queue) if job is not None]
        with self._lock:
            self._outstanding -= len(leftover)
        self.cancelled.set()
        if not self._wait_idle(cancel_grace_s):
            log.warning("worker_did_not_cancel", grace_s=cancel_grace_s)
        return leftover

    def stop(self, join_timeout_s: float = 5.0) -> None:
        # The sentinel may wait behind a running job; a full queue was drained first.
        try:
            self._queue.put(None, timeout=join_timeout_s)
        except queue.Full:
            log.warning("worker_stop_queue_full")
        self._thread.join(join_timeout_s)
        if self._thread.is_alive():
            log.warning("worker_still_running", hint="a generation outlived the drain timeout")

    def _run(self) -> None:
        while True:
            self._run_calls()
            try:
                job = self._queue.get(timeout=self._idle_tick_s)
            except queue.Empty:
                self._idle()
                continue
            if job is None:
                return
            self._run_calls()  # a swap asked for while we waited goes before the job
            self._job_started = time.monotonic()
            try:
                self._handle(job)
            finally:
                self._job_started = None
                with self._lock:
                    self._outstanding -= 1
                self.completed += 1

    def _idle(self) -> None:
        if self._on_idle is None:
            return
        try:
            self._on_idle()
        except Exception:
            log.exception("worker_idle_hook_failed")

    def _handle(self, job: Job) -> None:
        with structlog.contextvars.bound_contextvars(request_id=job.request.id):
            try:
                if job.deadline is not None and time.monotonic() > job.deadline:
                    response = Response.failure(
                        job.request.id,
                        ErrorCode.DEADLINE_EXCEEDED,
                        "deadline passed while the request was queued",
                    )
                else:
                    response = self._answerer(job)
            except Exception as exc:
                # A bug in answering must cost one request, never the worker.
                log.exception("answer_failed")
                response = Response.failure(job.request.id, ErrorCode.INTERNAL, str(exc))
            try:
                self._reply(job, response)
            except Exception:
                log.exception("reply_failed")
