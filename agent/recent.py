"""Recent requests by (reply topic, id): one inference per request, however often
it is delivered.

MQTT QoS 1 is at-least-once, and apps re-send what went unanswered. A copy of
an answered request gets the cached reply again, byte for byte; a copy of one
still in progress is absorbed (the first will answer). Retryable refusals
(``busy``, ``shutting_down``) are not cached, so a retry is served afresh.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from edge_slm.contract import ErrorCode, Response

Key = tuple[str, str]  # (reply topic, request id)

RETRYABLE = frozenset({ErrorCode.BUSY, ErrorCode.SHUTTING_DOWN})


class RecentRequests:
    def __init__(self, *, size: int = 4096, ttl_s: float = 600.0) -> None:
        self._size = size
        self._ttl = ttl_s
        self._lock = threading.Lock()
        self._done: OrderedDict[Key, tuple[float, Response]] = OrderedDict()
        self._in_flight: set[Key] = set()

    def begin(self, key: Key) -> Response | bool:
        """The cached reply, True if a copy is in flight, or False: go ahead (now in flight)."""
        now = time.monotonic()
        with self._lock:
            cached = self._done.get(key)
            if cached is not None and now - cached[0] < self._ttl:
                return cached[1]
            if key in self._in_flight:
                return True
            self._in_flight.add(key)
            return False

    def finish(self, key: Key, response: Response) -> None:
        """Record the final reply of an admitted request (or forget a retryable refusal).

        Replies to requests that were never admitted (validation errors) are not
        cached: the app may fix the request and send it again under the same id.
        """
        with self._lock:
            if key not in self._in_flight:
                return
            self._in_flight.discard(key)
            if response.error is not None and response.error.code in RETRYABLE:
                return
            self._done[key] = (time.monotonic(), response)
            self._done.move_to_end(key)
            while len(self._done) > self._size:
                self._done.popitem(last=False)

    def forget(self, key: Key) -> None:
        with self._lock:
            self._in_flight.discard(key)
