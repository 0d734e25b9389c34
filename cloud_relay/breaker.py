"""A circuit breaker around the LLM: stop hammering a provider that is down.

closed --(N consecutive failures)--> open --(cool-down elapsed)--> half-open:
one probe call goes through; success closes the circuit, failure re-opens it.
While open (or while the probe is out) calls fail fast with :class:`CircuitOpen`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import StrEnum

from edge_slm.logs import get_logger

log = get_logger("cloud_relay.breaker")


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpen(Exception):
    """The breaker refused the call; ``retry_after_s`` until the next probe."""

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(f"LLM circuit open; next probe in {retry_after_s:.1f}s")


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int,
        open_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = failure_threshold
        self._open_s = open_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state()

    def _state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self._open_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def before_call(self) -> None:
        """Raise :class:`CircuitOpen` unless a call may go out now."""
        with self._lock:
            state = self._state()
            if state is BreakerState.CLOSED:
                return
            if state is BreakerState.HALF_OPEN and not self._probing:
                self._probing = True
                log.info("llm_breaker_probe")
                return
            opened = self._opened_at if self._opened_at is not None else self._clock()
            wait = opened + self._open_s - self._clock()
            raise CircuitOpen(max(wait, 0.0))

    def cancel(self) -> None:
        """The permitted call was never made: free the half-open probe slot."""
        with self._lock:
            self._probing = False

    def success(self) -> None:
        with self._lock:
            if self._opened_at is not None:
                log.info("llm_breaker_closed")
            self._failures = 0
            self._opened_at = None
            self._probing = False

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._probing or (self._opened_at is None and self._failures >= self._threshold):
                self._opened_at = self._clock()
                log.warning("llm_breaker_opened", failures=self._failures, open_s=self._open_s)
            self._probing = False
