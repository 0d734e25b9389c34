"""Small helpers for the stdlib queues the daemons' worker threads read."""

from __future__ import annotations

import queue
import threading
from typing import TypeVar

T = TypeVar("T")


def drain(q: queue.Queue[T] | queue.SimpleQueue[T]) -> list[T]:
    """Everything ``q`` holds now, oldest first, without waiting for more.

    For a stopped consumer: what was put behind its stop marker must still be
    answered, or its senders would wait forever.
    """
    items: list[T] = []
    while True:
        try:
            items.append(q.get_nowait())
        except queue.Empty:
            return items


def stop_consumer(q: queue.Queue[T], marker: T, thread: threading.Thread, timeout_s: float) -> bool:
    """Queue ``marker`` behind the work already queued, so ``thread`` finishes that work
    and then ends, and wait up to ``timeout_s`` for it. False when the queue stayed full
    that long (the consumer is stuck): the marker is not queued, nothing is joined."""
    if not thread.is_alive():
        return True
    try:
        q.put(marker, timeout=timeout_s)
    except queue.Full:
        return False
    thread.join(timeout_s)
    return True
