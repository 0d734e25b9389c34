"""One thread owns the engine; requests wait in a bounded line for it.

The model is single-threaded and inference is CPU-bound, so running it on the
event loop would stall every connection, and running it from a thread pool
would interleave requests. A dedicated worker thread drains a queue instead;
each request gets a :class:`Ticket` through which the worker hands back engine
events on the event loop. Admission is bounded: one running request plus
``queue_size`` waiting ones, and beyond that :class:`Busy` (HTTP 429), because a
request that would wait minutes is better retried elsewhere (the cloud relay).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agent.engine.engine import StopWhen, StreamEvent, Structured
from agent.engine.prompts import Message
from agent.engine.sampling import GREEDY, Sampling
from edge_slm.logs import get_logger

log = get_logger("agent.serve.runner")


class StreamingEngine(Protocol):
    """What the server needs of :class:`agent.engine.engine.Engine`."""

    name: str
    provider: str

    def stream(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        stop: StopWhen = ...,
        logprobs: bool = ...,
        top_logprobs: int = ...,
        sampling: Sampling = ...,
    ) -> Iterator[StreamEvent]: ...

    def generate_structured(
        self,
        schema: dict[str, Any],
        *,
        messages: Sequence[Message] | None = ...,
        max_tokens: int,
        stop: StopWhen = ...,
        sampling: Sampling = ...,
    ) -> Structured: ...


class Busy(Exception):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"engine busy; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class Closed(Exception):
    """The server is shutting down and takes no new work."""


class Ticket:
    """One request's view of its job: engine events arrive in order, then end."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.cancel = threading.Event()  # set by the request: stop generating
        self.submitted = time.monotonic()
        self.started: float | None = None  # when the worker picked it up
        self._loop = loop
        self._events: asyncio.Queue[StreamEvent | Structured | BaseException] = asyncio.Queue()

    def put(self, item: StreamEvent | Structured | BaseException) -> None:
        """Called from the worker thread."""
        # The loop is closed when the server stopped under a running job: nobody listens.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._events.put_nowait, item)

    async def next(self) -> StreamEvent:
        """The next event; an engine exception is raised here, on the request's side."""
        item = await self._events.get()
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, Structured):
            raise TypeError("a structured job has no stream events")
        return item

    async def result(self) -> Structured:
        """The one result of a structured job (``submit(..., schema=...)``)."""
        item = await self._events.get()
        if isinstance(item, BaseException):
            raise item
        if not isinstance(item, Structured):
            raise TypeError("a streaming job has no structured result")
        return item


@dataclass(eq=False)  # hashed by identity: admitted jobs live in a set
class _Job:
    ticket: Ticket
    messages: list[Message]
    max_tokens: int
    logprobs: bool
    top_logprobs: int
    schema: dict[str, Any] | None = None  # decode under it, one Structured result
    sampling: Sampling = GREEDY


class EngineRunner:
    def __init__(self, engine: StreamingEngine, *, queue_size: int) -> None:
        if queue_size < 0:
            raise ValueError("queue_size must be >= 0")
        self.engine = engine
        self.capacity = 1 + queue_size  # the running job plus the waiting ones
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._admitted: set[_Job] = set()
        self._closed = False
        self._mean_job_s = 1.0  # moving average, for Retry-After
        self._thread = threading.Thread(target=self._run, name="serve-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._admitted)

    def submit(
        self,
        messages: list[Message],
        *,
        max_tokens: int,
        logprobs: bool,
        top_logprobs: int,
        schema: dict[str, Any] | None = None,
        sampling: Sampling = GREEDY,
    ) -> Ticket:
        """Admit a job or raise :class:`Busy` / :class:`Closed`; call on the event loop."""
        ticket = Ticket(asyncio.get_running_loop())
        job = _Job(ticket, messages, max_tokens, logprobs, top_logprobs, schema, sampling)
        with self._lock:
            if self._closed:
                raise Closed("the server is shutting down")
            if len(self._admitted) >= self.capacity:
                waits = len(self._admitted) * self._mean_job_s
                raise Busy(retry_after_s=min(60, max(1, math.ceil(waits))))
            self._admitted.add(job)
        self._jobs.put(job)
        return ticket

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new work, cancel admitted jobs, and wait for the worker to exit."""
        with self._lock:
            self._closed = True
            for job in self._admitted:
                job.ticket.cancel.set()
        self._jobs.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            job.ticket.started = time.monotonic()
            try:
                self._execute(job)
            finally:
                elapsed = time.monotonic() - job.ticket.started
                with self._lock:
                    self._admitted.discard(job)
                    self._mean_job_s = 0.8 * self._mean_job_s + 0.2 * elapsed

    def _execute(self, job: _Job) -> None:
        stop = StopWhen(cancel=job.ticket.cancel)
        try:
            if job.schema is not None:
                job.ticket.put(
                    self.engine.generate_structured(
                        job.schema,
                        messages=job.messages,
                        max_tokens=job.max_tokens,
                        stop=stop,
                        sampling=job.sampling,
                    )
                )
                return
            events = self.engine.stream(
                job.messages,
                max_tokens=job.max_tokens,
                stop=stop,
                logprobs=job.logprobs,
                top_logprobs=job.top_logprobs,
                sampling=job.sampling,
            )
            for event in events:
                job.ticket.put(event)
        except Exception as exc:  # noqa: BLE001 - delivered to the request, which maps it
            job.ticket.put(exc)
