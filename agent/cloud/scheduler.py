"""A single timer thread for many short-lived deadlines.

One thread and a heap instead of a ``threading.Timer`` (a thread) per waiting
request; callbacks run on the timer thread and must be quick.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable

from edge_slm.logs import get_logger

log = get_logger("agent.scheduler")


class Scheduler:
    def __init__(self, name: str = "timers") -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(5)

    def at(self, when: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` at ``when`` (time.monotonic clock)."""
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), callback))
            self._cond.notify()

    def every(self, interval_s: float, callback: Callable[[], object]) -> None:
        """Run ``callback`` every ``interval_s`` until stopped, whatever it raises.

        One failed run (a transient SQLite error in the outbox sweep) must not end
        the schedule: it is logged and the next run comes as planned.
        """
        name = getattr(callback, "__qualname__", repr(callback))

        def tick() -> None:
            try:
                callback()
            except Exception:
                log.exception("periodic_job_failed", job=name)
            finally:
                self.at(time.monotonic() + interval_s, tick)

        self.at(time.monotonic() + interval_s, tick)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                _when, _seq, callback = heapq.heappop(self._heap)
            try:
                callback()
            except Exception:
                log.exception("timer_callback_failed")
