"""The relay's event loop thread, and a bounded pool of handler tasks on it.

paho's network thread parses an escalation and calls :meth:`TaskPool.submit`,
which never blocks: when ``workers`` escalations run and ``queue_size`` wait, it
returns False and the caller sheds the escalation. Accepted ones run as tasks
on one asyncio loop, at most ``workers`` at a time, the rest waiting in order.
The work may hand back a tail (a coroutine): it runs in the same task but gives
its slot to the next item first (the relay's tail waits for a commit, then
publishes), and it still counts as pending for ``depth`` and ``drain``.

Why one loop and not a thread per worker: each escalation's own work is a few
hundred microseconds of Python (HTTP, JSON, the log line); with 16 worker
threads most of a core went to handing the GIL around (futex waits, lock
convoys on the shared HTTP pool and store connection). Tasks switch at their
``await``s instead, and the writes go to one store-writer thread.

``drain`` stops intake, lets queued and running work finish up to a timeout,
then cancels what still runs and hands back (never started, was running).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

from edge_slm.logs import get_logger

log = get_logger("cloud_relay.pool")

T = TypeVar("T")
R = TypeVar("R")
#: The work's result: the rest of the item's work, to run without holding a slot.
Tail = Awaitable[None] | None


class LoopThread:
    """An asyncio event loop running on its own (daemon) thread."""

    def __init__(self, name: str = "relay-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._started = threading.Event()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        self.loop.run_forever()

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the event loop thread did not start")

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.loop.is_running()

    def run(self, coro: Coroutine[Any, Any, R], timeout_s: float | None = None) -> R:
        """Run ``coro`` on the loop from another thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the loop (tasks still pending are dropped), join, close."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout_s)
        if not self._thread.is_alive() and not self.loop.is_closed():
            self.loop.close()


class TaskPool(Generic[T]):
    """At most ``workers`` items handled at once on ``loop``; ``queue_size`` more wait."""

    def __init__(
        self,
        work: Callable[[T], Awaitable[Tail]],
        *,
        loop: asyncio.AbstractEventLoop,
        workers: int,
        queue_size: int,
    ) -> None:
        self._work = work
        self._loop = loop
        self._workers = workers
        self._capacity = workers + queue_size
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._accepting = True
        self._pending = 0  # submitted and not yet finished (handed over, waiting or running)
        self._inbox: list[T] = []  # submitted, not yet seen by the loop
        self._wake_scheduled = False
        # Loop thread only:
        self._waiting: deque[T] = deque()
        self._running: dict[asyncio.Task[None], T] = {}  # holding a slot
        self._tails: dict[asyncio.Task[None], T] = {}  # slot given back, tail running

    @property
    def depth(self) -> int:
        with self._lock:
            return self._pending

    def submit(self, item: T) -> bool:
        """Hand ``item`` to the loop (any thread); False when intake is closed or full."""
        with self._lock:
            if not self._accepting or self._pending >= self._capacity:
                return False
            self._pending += 1
            self._inbox.append(item)
            wake = not self._wake_scheduled
            self._wake_scheduled = True
        if wake:  # one wake-up of the loop per burst, not one per message
            self._loop.call_soon_threadsafe(self._pump)
        return True

    # -- loop thread -------------------------------------------------------

    def _pump(self) -> None:
        self._take_inbox()
        self._fill()

    def _take_inbox(self) -> None:
        with self._lock:
            items, self._inbox = self._inbox, []
            self._wake_scheduled = False
        self._waiting.extend(items)

    def _fill(self) -> None:
        while self._waiting and len(self._running) < self._workers:
            item = self._waiting.popleft()
            me: list[asyncio.Task[None]] = []  # the task, for the coroutine to find itself
            task = self._loop.create_task(self._guarded(item, me))
            me.append(task)
            self._running[task] = item
            task.add_done_callback(self._finished)

    async def _guarded(self, item: T, me: list[asyncio.Task[None]]) -> None:
        try:
            tail = await self._work(item)
            if tail is None:
                return
            if self._running.pop(me[0], None) is not None:
                self._tails[me[0]] = item  # the slot goes to the next item now
                self._fill()
            await tail
        except Exception:  # a failing handler is logged and never stops the pool
            log.exception("worker_item_failed")

    def _finished(self, task: asyncio.Task[None]) -> None:
        if self._running.pop(task, None) is None and self._tails.pop(task, None) is None:
            return  # already handed back by drain
        with self._lock:
            self._pending -= 1
            self._idle.notify_all()
        self._fill()

    # -- shutdown (any other thread) -----------------------------------------

    def drain(self, timeout_s: float) -> tuple[list[T], list[T]]:
        """Stop intake; wait for the work to finish. Returns (never started, still running).

        What still runs at the timeout is cancelled (at its next ``await``) and handed
        back, so its caller can release its claim and answer it.
        """
        with self._lock:
            self._accepting = False
            deadline = time.monotonic() + timeout_s
            while self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._idle.wait(min(remaining, 0.1))
        if self._loop.is_closed() or not self._loop.is_running():
            with self._lock:
                return list(self._inbox), []
        return asyncio.run_coroutine_threadsafe(self._collect(), self._loop).result(10)

    async def _collect(self) -> tuple[list[T], list[T]]:
        self._take_inbox()  # anything still in the inbox is queued, not started
        queued = list(self._waiting)
        self._waiting.clear()
        running = {**self._running, **self._tails}
        self._running.clear()
        self._tails.clear()
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=2.0)
        with self._lock:
            self._pending -= len(queued) + len(running)
            self._idle.notify_all()
        return queued, list(running.values())

    def stop(self) -> None:
        """Close intake (after ``drain``, nothing is left to stop)."""
        with self._lock:
            self._accepting = False
