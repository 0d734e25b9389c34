"""Small helpers for the stdlib queues the daemons' worker threads read."""

from __future__ import annotations

import queue
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
